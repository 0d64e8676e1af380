"""Firmware under test: manifests for real builds, recipes for the virtual rig's images.

A **manifest** (TOML) describes a firmware build a team wants tested: the chip, what
goes where in flash (files, or an ELF that esptool's elf2image converts), its version
and which device contract it speaks::

    name = "env-monitor"
    chip = "esp32c3"
    version = "1.4.2"
    contract = "env-monitor/1"
    [[flash]]
    offset = "0x0"
    file = "build/bootloader/bootloader.bin"
    [[flash]]
    offset = "0x10000"
    elf = "build/env-monitor.elf"

A **recipe** names an app image the virtual rig can run: a version, a firmware model and
any injected defects, carried inside the image as a behaviour record (a DRAM data
segment). Flashing another image therefore really changes what the board does, and an
OTA really swaps it. Images are rebuilt reproducibly (same recipe → same bytes) into a
cache or an output directory, never committed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from hil.device.defects import ALL as KNOWN_DEFECTS
from hil.errors import UsageError
from hil.images.app import (
    BEHAVIOUR_LOAD_ADDR,
    AppDescriptor,
    BehaviourRecord,
    build_app_image,
)
from hil.images.bootloader import build_bootloader_image
from hil.images.layout import (
    BOOTLOADER_FILE,
    LAYOUT,
    OTADATA_FILE,
    PARTITION_TABLE_FILE,
    FlashFile,
    flash_args,
)
from hil.images.otadata import initial_otadata

CHIP = "esp32c3"
RECIPES_FILE = Path(__file__).resolve().parent / "recipes.toml"
"""The virtual rig's recipes: in this repository a link to firmware/recipes.toml (their
home); in an installed wheel, the copy packaged with hil."""

# Fixed build stamp: the descriptor's date and time would otherwise make builds differ.
BUILD_DATE = "Nov 23 2026"
BUILD_TIME = "12:00:00"


class FirmwareError(UsageError):
    """A manifest or recipe problem; the message names the file, the field and the fix."""


# -- recipes ------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    project: str
    model: str
    contract: str
    defects: tuple[str, ...] = ()
    secure_version: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def behaviour(self) -> BehaviourRecord:
        params = {"contract": self.contract, **self.params}
        return BehaviourRecord(model=self.model, defects=self.defects, params=params)

    def descriptor(self) -> AppDescriptor:
        # The "ELF" hash of a recipe image is the hash of what defines it, so that two
        # recipes with the same version still print different `ELF file SHA256` lines.
        return AppDescriptor(
            version=self.version,
            project_name=self.project,
            secure_version=self.secure_version,
            time=BUILD_TIME,
            date=BUILD_DATE,
            elf_sha256=hashlib.sha256(self.behaviour().to_bytes() + self.version.encode()).digest(),
        )

    def build(self) -> bytes:
        return build_app_image(
            self.descriptor(),
            data_segments=[(BEHAVIOUR_LOAD_ADDR, self.behaviour().to_bytes())],
        )


@dataclass(frozen=True)
class RecipeBook:
    path: Path
    baseline: str
    recipes: Mapping[str, Recipe]

    def get(self, name: str) -> Recipe:
        try:
            return self.recipes[name]
        except KeyError:
            known = ", ".join(sorted(self.recipes))
            raise FirmwareError(f"{self.path}: no recipe {name!r}; known recipes: {known}") from None


_RECIPE_KEYS = {"version", "project", "model", "contract", "defects", "secure_version", "params", "description"}


def load_recipes(path: Path = RECIPES_FILE) -> RecipeBook:
    raw = _read_toml(path)
    defaults = raw.get("defaults", {})
    table = raw.get("recipes")
    if not isinstance(table, dict) or not table:
        raise FirmwareError(f"{path}: [recipes] is missing or empty; add at least [recipes.baseline]")
    recipes: dict[str, Recipe] = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise FirmwareError(f"{path}: recipes.{name} must be a table")
        unknown = set(spec) - _RECIPE_KEYS
        if unknown:
            raise FirmwareError(
                f"{path}: recipes.{name} has unknown field(s) {sorted(unknown)}; allowed: {sorted(_RECIPE_KEYS)}"
            )
        merged = {**defaults, **spec}
        for required in ("version", "project", "model", "contract"):
            if not isinstance(merged.get(required), str):
                raise FirmwareError(
                    f"{path}: recipes.{name}.{required} is missing or not a string "
                    f"(set it in the recipe or in [defaults])"
                )
        defects = merged.get("defects", [])
        if not isinstance(defects, list) or not all(isinstance(d, str) for d in defects):
            raise FirmwareError(f"{path}: recipes.{name}.defects must be a list of strings")
        unknown_defects = sorted(set(defects) - KNOWN_DEFECTS)
        if unknown_defects:
            raise FirmwareError(
                f"{path}: recipes.{name}.defects names unknown defect(s) {unknown_defects}; "
                f"known: {sorted(KNOWN_DEFECTS)}"
            )
        recipes[name] = Recipe(
            name=name,
            version=merged["version"],
            project=merged["project"],
            model=merged["model"],
            contract=merged["contract"],
            defects=tuple(defects),
            secure_version=int(merged.get("secure_version", 0)),
            params=dict(merged.get("params", {})),
            description=str(merged.get("description", "")),
        )
    baseline = raw.get("baseline", "baseline")
    if baseline not in recipes:
        raise FirmwareError(f"{path}: baseline = {baseline!r} names no recipe")
    return RecipeBook(path=path, baseline=baseline, recipes=recipes)


def build_images(book: RecipeBook, names: Iterable[str], out: Path) -> list[Path]:
    """Write the support images, one ``<recipe>.bin`` per name, and ``flash_args``."""
    recipes = [book.get(name) for name in names]
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        BOOTLOADER_FILE: build_bootloader_image(),
        PARTITION_TABLE_FILE: LAYOUT.table.to_bytes(),
        OTADATA_FILE: initial_otadata(),
    }
    for recipe in recipes:
        files[f"{recipe.name}.bin"] = recipe.build()
    baseline = f"{book.baseline}.bin"
    if baseline not in files:
        files[baseline] = book.get(book.baseline).build()
    # Relative to the build dir, as ESP-IDF writes it: `esptool write-flash @flash_args` there.
    files["flash_args"] = flash_args(LAYOUT.flash_set(Path(baseline), Path()).files).encode()
    written = []
    for name, data in files.items():
        path = out / name
        _write_if_changed(path, data)
        written.append(path)
    return written


def cache_root() -> Path:
    """``$HIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/hil`` (``~/.cache/hil``)."""
    base = os.environ.get("HIL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hil"
    )
    return Path(base)


def cache_dir() -> Path:
    return cache_root() / "firmware"


def cached_build(book: RecipeBook | None = None, names: Iterable[str] | None = None) -> Path:
    """Build (once) into a cache dir keyed by the recipes and this code; return the dir."""
    book = book or load_recipes()
    chosen = sorted(names) if names is not None else sorted(book.recipes)
    key = hashlib.sha256(
        json.dumps(
            {
                "recipes": [book.get(n).behaviour().to_bytes().hex() + book.get(n).version for n in chosen],
                "code": _code_fingerprint(),
            }
        ).encode()
    ).hexdigest()[:16]
    out = cache_dir() / key
    if (out / "flash_args").exists():
        return out
    # Concurrent sessions (xdist workers, CI jobs) on a cold cache: one builds, the others
    # wait for it, so no one reads a half-written image.
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f"{key}.lock")):
        if not (out / "flash_args").exists():
            build_images(book, chosen, out)
    return out


def update_image(firmware: str | None, version: str, **params: Any) -> bytes:
    """The firmware under test rebuilt as an OTA update: the recipe ``firmware`` (None:
    the baseline) at ``version``, with ``params`` added to its behaviour record.

    OTA suites update *to* the firmware under test, so a defect in how a new image
    confirms itself (never marking itself valid, skipping its self-test) is carried by
    the image the device updates to, whichever recipe the session runs. ``params`` give
    the update its own trouble: ``wifi_pass`` (built with other Wi-Fi credentials than
    the provisioned ones), ``hang_at_boot="sensor"`` (its sensor task never starts).
    """
    if firmware is not None and (firmware.endswith(".toml") or os.sep in firmware):
        raise FirmwareError(
            f"{firmware}: OTA update images are rebuilt from recipes; a manifest names no newer "
            "build (run the OTA suites with --firmware <recipe>)"
        )
    book = load_recipes()
    recipe = book.get(firmware or book.baseline)
    return replace(recipe, version=version, params={**recipe.params, **params}).build()


def _code_fingerprint() -> str:
    """Hash of the image builders, so a change to them invalidates the cache."""
    digest = hashlib.sha256()
    images = Path(__file__).resolve().parents[1] / "images"
    for source in [*sorted(images.glob("*.py")), Path(__file__).resolve()]:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    # A temporary name of its own, so two writers of the same file never rename each
    # other's half-written file away.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 is for secrets; images are for any tool
    os.replace(tmp, path)


# -- manifests ----------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    chip: str
    version: str
    contract: str
    flash: tuple[FlashFile, ...]


def load_manifest(path: Path, *, convert_dir: Path | None = None) -> Manifest:
    """Load and check a manifest; ELF entries are converted with esptool's elf2image."""
    raw = _read_toml(path)
    base = path.parent
    for key in ("name", "chip", "version", "contract"):
        if not isinstance(raw.get(key), str):
            raise FirmwareError(f"{path}: field {key!r} is missing or not a string")
    if raw["chip"] != CHIP:
        raise FirmwareError(f"{path}: chip = {raw['chip']!r}, but this framework drives {CHIP!r} rigs")
    entries = raw.get("flash")
    if not isinstance(entries, list) or not entries:
        raise FirmwareError(f"{path}: no [[flash]] entries; add one per image with offset and file (or elf)")
    files: list[FlashFile] = []
    for number, entry in enumerate(entries):
        where = f"{path}: flash[{number}]"
        offset = _parse_offset(entry.get("offset"), where)
        if ("file" in entry) == ("elf" in entry):
            raise FirmwareError(f"{where}: give exactly one of 'file' or 'elf'")
        if "file" in entry:
            file = base / str(entry["file"])
            if not file.is_file():
                raise FirmwareError(f"{where}.file: {file} does not exist; build the firmware first or fix the path")
        else:
            elf = base / str(entry["elf"])
            if not elf.is_file():
                raise FirmwareError(f"{where}.elf: {elf} does not exist; build the firmware first or fix the path")
            file = _elf_to_image(elf, convert_dir or cache_dir() / "elf")
        files.append(FlashFile(offset, file))
    files.sort(key=lambda f: f.offset)
    for first, second in itertools.pairwise(files):
        if first.offset + first.path.stat().st_size > second.offset:
            raise FirmwareError(
                f"{path}: {first.path.name} at 0x{first.offset:x} overlaps {second.path.name} at 0x{second.offset:x}"
            )
    return Manifest(path, raw["name"], raw["chip"], raw["version"], raw["contract"], tuple(files))


def _parse_offset(value: object, where: str) -> int:
    if isinstance(value, int):
        offset = value
    elif isinstance(value, str):
        try:
            offset = int(value, 0)
        except ValueError:
            raise FirmwareError(f"{where}.offset: {value!r} is not a number; write e.g. \"0x10000\"") from None
    else:
        raise FirmwareError(f"{where}.offset is missing; write e.g. offset = \"0x10000\"")
    if offset % 0x1000:
        raise FirmwareError(f"{where}.offset: 0x{offset:x} is not a multiple of the 4 KiB flash sector")
    return offset


def _elf_to_image(elf: Path, out_dir: Path) -> Path:
    from esptool.cmds import elf2image

    digest = hashlib.sha256(elf.read_bytes()).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / f"{elf.stem}-{digest}.bin"
    if not image.exists():
        elf2image(str(elf), CHIP, output=str(image), flash_mode="dio", flash_freq="80m", flash_size="4MB")
    return image


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise FirmwareError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise FirmwareError(f"{path}: not valid TOML: {exc}") from None
