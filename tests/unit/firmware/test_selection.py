"""``--firmware`` resolved once: kind, name, version, the flash set, every file checked."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from hil.firmware.catalog import FirmwareError, build_images, load_recipes
from hil.firmware.selection import firmware_kind, select_firmware
from hil.images.app import AppDescriptor, build_app_image
from hil.images.layout import FlashFile
from hil.images.partitions import FACTORY, PartitionTable, PartitionType
from hil.images.partitions import Partition as P


class Checks:
    """Stands in for ``Flasher().check``: records what it was given."""

    def __init__(self) -> None:
        self.calls: list[list[FlashFile]] = []

    def __call__(self, files: Sequence[FlashFile]) -> None:
        self.calls.append(list(files))


@pytest.mark.parametrize(
    ("choice", "kind"),
    [(None, "recipe"), ("baseline", "recipe"), ("build/app.bin", "image"), ("fw.toml", "manifest"), ("a/b", "manifest")],
)
def test_what_the_option_names(choice: str | None, kind: str) -> None:
    assert firmware_kind(choice) == kind


def test_no_option_is_the_baseline_recipe_checked_once() -> None:
    checks = Checks()
    selection = select_firmware(None, check=checks)
    book = load_recipes()
    baseline = book.get(book.baseline)
    assert (selection.choice, selection.kind, selection.name, selection.version, selection.source) == (
        None, "recipe", baseline.name, baseline.version, None,
    )  # fmt: skip
    assert [f.offset for f in selection.files] == [0x0, 0x8000, 0xD000, 0x10000]
    assert selection.app.name == f"{baseline.name}.bin" and selection.files[-1].path == selection.app
    assert selection.sha256 == hashlib.sha256(selection.app.read_bytes()).hexdigest()
    assert checks.calls == [list(selection.files)]


def test_an_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(FirmwareError, match="no recipe 'baselin'; known recipes"):
        select_firmware("baselin", check=Checks())


def test_an_app_image_goes_with_the_frameworks_support_images(tmp_path: Path) -> None:
    app = tmp_path / "app.bin"
    app.write_bytes(build_app_image(AppDescriptor(version="4.5.6", project_name="mine")))
    checks = Checks()
    selection = select_firmware(str(app), check=checks)
    assert (selection.kind, selection.name, selection.version, selection.source) == ("image", "mine", "4.5.6", app)
    assert selection.app == app and [f.offset for f in selection.files] == [0x0, 0x8000, 0xD000, 0x10000]
    assert checks.calls == [list(selection.files)]


def test_an_image_is_checked_before_its_descriptor_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.bin"
    with pytest.raises(FirmwareError, match=r"nothing\.bin: no such file; build the app first"):
        select_firmware(str(missing), check=Checks())
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xe9" + bytes(64))

    def refuse(files: Sequence[FlashFile]) -> None:
        raise ValueError("refused by the flasher's checks")

    with pytest.raises(ValueError, match="refused by the flasher's checks"):
        select_firmware(str(junk), check=refuse)


def _manifest(tmp_path: Path, table: PartitionTable | None = None) -> Path:
    build_images(load_recipes(), ["baseline"], tmp_path)
    entries = [("0x0", "bootloader.bin"), ("0x8000", "partition-table.bin"), ("0x10000", "baseline.bin")]
    if table is not None:
        (tmp_path / "partition-table.bin").write_bytes(table.to_bytes())
    body = "".join(f'[[flash]]\noffset = "{offset}"\nfile = "{name}"\n' for offset, name in entries)
    manifest = tmp_path / "fw.toml"
    manifest.write_text(f'name = "fw"\nchip = "esp32c3"\nversion = "7.0.0"\ncontract = "c"\n{body}')
    return manifest


def test_a_manifest_is_its_files(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    checks = Checks()
    selection = select_firmware(str(manifest), check=checks)
    assert (selection.kind, selection.name, selection.version, selection.source) == ("manifest", "fw", "7.0.0", manifest)
    assert selection.app == tmp_path / "baseline.bin" and selection.flash_set.layout.nvs.offset == 0x9000
    assert checks.calls == [list(selection.files)]
    with pytest.raises(FirmwareError, match="no such manifest; fix the path"):
        select_firmware(str(tmp_path / "gone.toml"), check=checks)


def test_a_manifest_whose_table_has_no_nvs_is_refused(tmp_path: Path) -> None:
    table = PartitionTable((P("factory", PartitionType.APP, FACTORY, 0x10000, 0x100000),))
    with pytest.raises(FirmwareError, match=r"fw\.toml: the partition table has no nvs partition"):
        select_firmware(str(_manifest(tmp_path, table)), check=Checks())
