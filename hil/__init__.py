"""Hardware-in-the-loop test framework for ESP32-C3 IoT firmware."""

__version__ = "0.1.0"
