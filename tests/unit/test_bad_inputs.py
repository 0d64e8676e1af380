"""Bad input gets a clear error before anything is touched (rule 6).

Each case fails in under 2 s with a message naming the problem, and no rig is reserved,
no port opened and no board started while it does."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hil.console import Console, ConsoleError
from hil.firmware import FirmwareError, build_images, load_manifest, load_recipes
from hil.flashing import Flasher, FlashInputError
from hil.images.app import AppDescriptor, build_app_image
from hil.rigs import RigError, load_rigs, reserve
from hil.session import RigSession, SessionError, SessionOptions


@pytest.fixture(scope="module")
def fw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw")
    build_images(load_recipes(), ["baseline"], out)
    return out


def rig_file(tmp_path: Path, text: str) -> Callable[[], object]:
    (tmp_path / "r.toml").write_text(text)
    return lambda: load_rigs(tmp_path)


def manifest(tmp_path: Path, text: str) -> Callable[[], object]:
    (tmp_path / "app.bin").write_bytes(b"\xe9" + bytes(64))
    (tmp_path / "fw.toml").write_text(text)
    return lambda: load_manifest(tmp_path / "fw.toml")


def flash(files: list[tuple[int, bytes]]) -> Callable[[], object]:
    return lambda: Flasher().check(files)


def image(**kwargs: object) -> bytes:
    return build_app_image(AppDescriptor(version="9.9.9", project_name="x"), **kwargs)  # type: ignore[arg-type]


def flipped(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[0x100] ^= 1
    return bytes(raw)


CASES: dict[str, tuple[Callable[[Path, Path], Callable[[], object]], type[Exception], tuple[str, ...]]] = {
    "rig kind typo": (lambda t, f: rig_file(t, 'name="a"\nkind="virtaul"\n'), RigError, ("r.toml", "kind", "virtual")),
    "rig unknown field": (lambda t, f: rig_file(t, 'name="a"\nkind="virtual"\ncolour="red"\n'), RigError, ("r.toml", "colour")),
    "rig toml syntax": (lambda t, f: rig_file(t, 'name="a"\nkind=\n'), RigError, ("r.toml:2", "syntax")),
    "rig capability typo": (
        lambda t, f: rig_file(t, 'name="a"\nkind="virtual"\ncapabilities=["sensor_emulaton"]\n'),
        RigError,
        ("sensor_emulation",),
    ),
    "rig serial without port": (lambda t, f: rig_file(t, 'name="a"\nkind="serial"\nchip="esp32c3"\n'), RigError, ("port",)),
    "rig wrong chip": (lambda t, f: rig_file(t, 'name="a"\nkind="virtual"\nchip="esp32s3"\n'), RigError, ("chip", "esp32s3")),
    "unknown rig": (
        lambda t, f: lambda: reserve(load_rigs(Path(__file__).resolve().parents[2] / "rigs"), name="virtaul-0", lock_dir=t),
        RigError,
        ("virtaul-0",),
    ),
    "missing manifest": (lambda t, f: lambda: load_manifest(t / "nope.toml"), FirmwareError, ("nope.toml", "no such file")),
    "manifest wrong chip": (
        lambda t, f: manifest(t, 'name="x"\nchip="esp32"\nversion="1"\ncontract="c"\n[[flash]]\noffset="0x0"\nfile="app.bin"\n'),
        FirmwareError,
        ("chip", "esp32"),
    ),
    "manifest missing file": (
        lambda t, f: manifest(t, 'name="x"\nchip="esp32c3"\nversion="1"\ncontract="c"\n[[flash]]\noffset="0x10000"\nfile="gone.bin"\n'),
        FirmwareError,
        ("gone.bin", "does not exist"),
    ),
    "unknown recipe": (lambda t, f: lambda: load_recipes().get("baselin"), FirmwareError, ("baselin", "known recipes")),
    "image for another chip": (lambda t, f: flash([(0x10000, image(chip_id=9))]), FlashInputError, ("chip",)),
    "corrupt image": (lambda t, f: flash([(0x10000, flipped((f / "baseline.bin").read_bytes()))]), FlashInputError, ("hecksum",)),
    "image too big for its partition": (
        lambda t, f: flash([(0x10000, image(rodata=bytes(0x110000)))]),
        FlashInputError,
        ("partition",),
    ),
    "overlapping files": (
        lambda t, f: flash([(0x10000, (f / "baseline.bin").read_bytes()), (0x11000, (f / "baseline.bin").read_bytes())]),
        FlashInputError,
        ("overlap",),
    ),
    "misaligned offset": (lambda t, f: flash([(0x10010, (f / "baseline.bin").read_bytes())]), FlashInputError, ("0x10010",)),
    "unreachable broker URI": (
        lambda t, f: lambda: RigSession(
            SessionOptions(rigs_dir=t, log_dir=t / "logs", broker="mqtt://127.0.0.1:1")
        ).mqtt(),
        SessionError,
        ("127.0.0.1:1", "unreachable"),
    ),
    "broker URI with another scheme": (
        lambda t, f: lambda: RigSession(SessionOptions(rigs_dir=t, log_dir=t / "logs", broker="http://x:1")).mqtt(),
        SessionError,
        ("http://x:1", "mqtts://"),
    ),
    "port that does not exist": (
        lambda t, f: lambda: Console("/dev/ttyUSB-does-not-exist", t / "c.log"),
        ConsoleError,
        ("/dev/ttyUSB-does-not-exist",),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_fast_and_clearly(case: str, tmp_path: Path, fw: Path) -> None:
    make, error, words = CASES[case]
    action = make(tmp_path, fw)
    started = time.monotonic()
    with pytest.raises(error) as info:
        action()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 2.0, f"{case}: took {elapsed:.2f} s"
    for word in words:
        assert word.lower() in message.lower(), f"{case}: {word!r} not in: {message}"
    assert not list(tmp_path.glob("*.lock")), "a rig was reserved"


def test_there_are_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15
