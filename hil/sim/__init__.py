"""The virtual ESP32-C3 rig: one OS process per board, reached only through its ports."""
