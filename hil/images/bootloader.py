"""A stand-in for ESP-IDF v5.4's ESP32-C3 2nd-stage bootloader image (flash offset 0x0).

The virtual rig implements the bootloader's behaviour itself; what must be faithful is the
image at 0x0, because esptool (`image-info`, `verify-flash`, `--after hard-reset`) and
the virtual ROM read it: a DIO/80m/4MB header, chip id 5, three RAM segments where IDF's
linker script puts them (dram_seg, iram_seg, iram_loader_seg) with realistic lengths,
an esp_bootloader_desc_t at the start of the DRAM segment, and an appended SHA-256.
"""

from __future__ import annotations

from hil.images.build import filler, save_image
from hil.images.c3 import BOOTLOADER_OFFSET
from hil.images.descriptor import BootloaderDescriptor

# __DATE__ " " __TIME__ of the IDF v5.4.1 build seen in SPEC_FACTS.md §5's boot log.
BOOTLOADER_COMPILE_TIME = "Apr  5 2025 18:11:33"
BOOTLOADER_ENTRY = 0x403C_C710

DRAM_SEGMENT = (0x3FCD_5820, 0x16A0)
IRAM_SEGMENT = (0x403C_C710, 0x968)
IRAM_LOADER_SEGMENT = (0x403C_E710, 0x2E78)


def build_bootloader_image(*, idf_ver: str = "v5.4.1") -> bytes:
    """The bootloader image for `idf_ver`; the same bytes every time for the same version."""
    desc = BootloaderDescriptor(idf_ver=idf_ver, date_time=BOOTLOADER_COMPILE_TIME).to_bytes()
    seed = b"bootloader/" + idf_ver.encode()
    dram_addr, dram_len = DRAM_SEGMENT
    iram_addr, iram_len = IRAM_SEGMENT
    loader_addr, loader_len = IRAM_LOADER_SEGMENT
    segments = [
        (".dram0.bootdesc", dram_addr, desc + filler(seed + b"/dram", dram_len - len(desc))),
        (".iram_seg", iram_addr, filler(seed + b"/iram", iram_len)),
        (".iram_loader_seg", loader_addr, filler(seed + b"/loader", loader_len)),
    ]
    return save_image(segments, entry=BOOTLOADER_ENTRY)


__all__ = [
    "BOOTLOADER_COMPILE_TIME",
    "BOOTLOADER_OFFSET",
    "BootloaderDescriptor",
    "build_bootloader_image",
]
