"""Which firmware a run uses: ``--firmware`` resolved once, into one `FirmwareSelection`.

``--firmware`` names a recipe of the virtual rig's images (default: the recipe book's
baseline), a manifest of a real build (a ``.toml``, or any path), or an app image
(``.bin``: flashed at the app partition with the framework's bootloader, partition table and
otadata). Resolving it reads the recipe book or the manifest, builds (once, into the cache)
the support images, lays the files out (`hil.images.layout`) and runs the flasher's
pre-connect checks on the whole set, so a wrong firmware is a usage error before any rig is
reserved. The session then flashes the selection as it is; nothing asks again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hil.firmware.catalog import (
    FirmwareError,
    RecipeBook,
    cached_build,
    load_manifest,
    load_recipes,
)
from hil.images.image import parse_image
from hil.images.layout import APP_OFFSET, LAYOUT, FlashFile, FlashSet, LayoutError

__all__ = ["FirmwareKind", "FirmwareSelection", "FlashCheck", "app_identity", "firmware_kind", "select_firmware"]

FirmwareKind = Literal["recipe", "manifest", "image"]

FlashCheck = Callable[[Sequence[FlashFile]], object]
"""The flasher's pre-connect checks (``Flasher().check``): chip, corrupt image, fits its
partition, no overlaps. Passed in by the caller: the link layer sits above this one."""


@dataclass(frozen=True)
class FirmwareSelection:
    """What is under test: what ``--firmware`` named, resolved to the files flashed."""

    choice: str | None  # ``--firmware`` as given (None: the recipe book's baseline)
    kind: FirmwareKind
    name: str  # the recipe's, the manifest's, or the image's project name (app descriptor)
    version: str  # what the app prints as ``App version:`` once booted
    flash_set: FlashSet  # every file flashed and where (provisioning aside), with its layout
    sha256: str  # of the app image file
    source: Path | None = None  # the manifest or image given (None for a recipe)

    @property
    def files(self) -> tuple[FlashFile, ...]:
        return self.flash_set.files

    @property
    def app(self) -> Path:
        """The app image, at the app partition."""
        return self.flash_set.app


def firmware_kind(choice: str | None) -> FirmwareKind:
    """What ``--firmware`` names: an app image (``.bin``), a manifest (``.toml`` or a
    path), else a recipe of the virtual rig (default: the baseline)."""
    if choice is None:
        return "recipe"
    if choice.endswith(".bin"):
        return "image"
    if choice.endswith(".toml") or os.sep in choice:
        return "manifest"
    return "recipe"


def app_identity(path: Path) -> tuple[str, str]:
    """The project name and version in an app image's descriptor (the booted version is
    checked against it); FirmwareError when it has none."""
    descriptor = parse_image(path.read_bytes(), flash_offset=APP_OFFSET).descriptor
    if descriptor is None:
        raise FirmwareError(
            f"--firmware {path}: the image has no app descriptor (esp_app_desc_t), so which version "
            "booted cannot be checked; build it with ESP-IDF (it adds one), or give a manifest with its version"
        )
    return descriptor.project_name, descriptor.version


def select_firmware(choice: str | None, *, check: FlashCheck) -> FirmwareSelection:
    """Resolve ``--firmware`` (None: the baseline recipe) and check every file of it with
    ``check`` before any rig is touched. FirmwareError (and whatever ``check`` raises,
    `FlashInputError`) say what is wrong and how to fix it."""
    kind = firmware_kind(choice)
    if kind == "manifest":
        assert choice is not None
        if not Path(choice).is_file():
            raise FirmwareError(f"--firmware {choice}: no such manifest; fix the path")
        manifest = load_manifest(Path(choice))
        flash_set = FlashSet.of(manifest.flash)
        check(flash_set.files)
        try:
            flash_set.layout.nvs  # noqa: B018 - provisioning lands there: a table without one is refused now
        except LayoutError as exc:
            raise FirmwareError(f"--firmware {choice}: {exc} (provisioning goes there)") from None
        name, version, source = manifest.name, manifest.version, manifest.path
    elif kind == "image":
        assert choice is not None
        source = Path(choice)
        if not source.is_file():
            raise FirmwareError(f"--firmware {source}: no such file; build the app first or fix the path")
        flash_set = LAYOUT.flash_set(source, _support_images(load_recipes()))
        check(flash_set.files)  # before the descriptor is read: a corrupt image says so
        name, version = app_identity(source)
    else:
        book = load_recipes()
        recipe = book.get(choice or book.baseline)
        images = _support_images(book)
        flash_set = LAYOUT.flash_set(images / f"{recipe.name}.bin", images)
        check(flash_set.files)
        name, version, source = recipe.name, recipe.version, None
    app_sha256 = hashlib.sha256(flash_set.app.read_bytes()).hexdigest()
    return FirmwareSelection(choice, kind, name, version, flash_set, app_sha256, source)


def _support_images(book: RecipeBook) -> Path:
    """The framework's bootloader, partition table and otadata (and every recipe's app),
    built once into the cache (one cache dir for the whole book, shared by every session)."""
    return cached_build(book, sorted(book.recipes))
