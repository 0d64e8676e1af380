"""The Bosch BME280 as the datasheet defines it: registers, calibration, compensation and its
inverse, faults, and the project's reference driver. The simulated chip and bus live in
``hil.sim.bme280``."""
