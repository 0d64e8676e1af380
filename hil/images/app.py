"""ESP32-C3 app images: the one import for building, parsing, checking and identifying them.

The pieces live in small modules (descriptor, image, verify, build, behaviour); this
module is the public face the rest of the framework and the virtual rig import from.
"""

from __future__ import annotations

from hil.images.behaviour import (
    BEHAVIOUR_LOAD_ADDR,
    BEHAVIOUR_MAGIC,
    BehaviourRecord,
    find_behaviour,
)
from hil.images.build import build_app_image
from hil.images.c3 import CHIP_ID_ESP32C3, IMAGE_MAGIC
from hil.images.descriptor import APP_DESC_MAGIC, AppDescriptor
from hil.images.errors import ImageError
from hil.images.image import AppImage, Segment, parse_image
from hil.images.verify import check_image

__all__ = [
    "APP_DESC_MAGIC",
    "BEHAVIOUR_LOAD_ADDR",
    "BEHAVIOUR_MAGIC",
    "CHIP_ID_ESP32C3",
    "IMAGE_MAGIC",
    "AppDescriptor",
    "AppImage",
    "BehaviourRecord",
    "ImageError",
    "Segment",
    "build_app_image",
    "check_image",
    "find_behaviour",
    "parse_image",
]
