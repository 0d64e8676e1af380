"""ESP-IDF flash formats: app and bootloader images, partition table, otadata, NVS."""
