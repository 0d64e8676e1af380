"""The error an image check raises; its text is what the ESP-IDF bootloader would log."""

from __future__ import annotations


class ImageError(Exception):
    """An app or bootloader image the 2nd-stage bootloader would refuse.

    `str(err)` is ESP-IDF's own message (e.g. "Checksum failed. Calculated 0x12 read
    0x34"), so the virtual bootloader can print it verbatim and tests can match the
    wording a real board would show.
    """
