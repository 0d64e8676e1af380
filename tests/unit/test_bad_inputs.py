"""Bad input gets a clear error before anything is touched (rule 6).

Each case fails in under 2 s with a message naming the problem, and while it does no board
process is started (no subprocess, no fork), no serial port is opened, and no lock is
taken: spies on pyserial's ``open``, on process creation and on filelock record every
attempt, and the lock and cache dirs are the test's own (``HIL_LOCK_DIR``,
``HIL_CACHE_DIR``)."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import pytest
import serial
import serial.serialutil

from hil.firmware.catalog import FirmwareError, build_images, load_manifest, load_recipes
from hil.images.app import AppDescriptor, build_app_image
from hil.link.console import Console, ConsoleError
from hil.link.flash_errors import FlashInputError, FlashPortBusyError
from hil.link.flasher import Flasher
from hil.rig.errors import RigError
from hil.rig.reservation import reserve
from hil.rig.rigfile import load_rigs
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


def busy_port(stack: contextlib.ExitStack, fw: Path) -> Callable[[], object]:
    """A local serial port another program holds (as a serial monitor does: pyserial's
    exclusive lock on a pty), and a flash job for it."""
    controller, device = pty.openpty()
    stack.callback(os.close, controller)
    stack.callback(os.close, device)
    name = os.ttyname(device)
    holder = serial.Serial(name, exclusive=True)
    stack.callback(holder.close)
    return lambda: Flasher().flash(name, [(0x10000, fw / "baseline.bin")])


def image(**kwargs: object) -> bytes:
    return build_app_image(AppDescriptor(version="9.9.9", project_name="x"), **kwargs)  # type: ignore[arg-type]


def flipped(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[0x100] ^= 1
    return bytes(raw)


Make = Callable[[Path, Path, contextlib.ExitStack], Callable[[], object]]
CASES: dict[str, tuple[Make, type[Exception], tuple[str, ...]]] = {
    "rig kind typo": (lambda t, f, s: rig_file(t, 'name="a"\nkind="virtaul"\n'), RigError, ("r.toml", "kind", "virtual")),
    "rig unknown field": (lambda t, f, s: rig_file(t, 'name="a"\nkind="virtual"\ncolour="red"\n'), RigError, ("r.toml", "colour")),
    "rig toml syntax": (lambda t, f, s: rig_file(t, 'name="a"\nkind=\n'), RigError, ("r.toml:2", "syntax")),
    "rig capability typo": (
        lambda t, f, s: rig_file(t, 'name="a"\nkind="virtual"\ncapabilities=["sensor_emulaton"]\n'),
        RigError,
        ("sensor_emulation",),
    ),
    "rig serial without port": (lambda t, f, s: rig_file(t, 'name="a"\nkind="serial"\nchip="esp32c3"\n'), RigError, ("port",)),
    "rig wrong chip": (lambda t, f, s: rig_file(t, 'name="a"\nkind="virtual"\nchip="esp32s3"\n'), RigError, ("chip", "esp32s3")),
    "unknown rig": (
        lambda t, f, s: lambda: reserve(load_rigs(Path(__file__).resolve().parents[2] / "rigs"), name="virtaul-0"),
        RigError,
        ("virtaul-0",),
    ),
    "missing manifest": (lambda t, f, s: lambda: load_manifest(t / "nope.toml"), FirmwareError, ("nope.toml", "no such file")),
    "manifest wrong chip": (
        lambda t, f, s: manifest(t, 'name="x"\nchip="esp32"\nversion="1"\ncontract="c"\n[[flash]]\noffset="0x0"\nfile="app.bin"\n'),
        FirmwareError,
        ("chip", "esp32"),
    ),
    "manifest missing file": (
        lambda t, f, s: manifest(t, 'name="x"\nchip="esp32c3"\nversion="1"\ncontract="c"\n[[flash]]\noffset="0x10000"\nfile="gone.bin"\n'),
        FirmwareError,
        ("gone.bin", "does not exist"),
    ),
    "unknown recipe": (lambda t, f, s: lambda: load_recipes().get("baselin"), FirmwareError, ("baselin", "known recipes")),
    "image for another chip": (lambda t, f, s: flash([(0x10000, image(chip_id=9))]), FlashInputError, ("chip",)),
    "corrupt image": (lambda t, f, s: flash([(0x10000, flipped((f / "baseline.bin").read_bytes()))]), FlashInputError, ("hecksum",)),
    "image too big for its partition": (
        lambda t, f, s: flash([(0x10000, image(rodata=bytes(0x110000)))]),
        FlashInputError,
        ("partition",),
    ),
    "overlapping files": (
        lambda t, f, s: flash([(0x10000, (f / "baseline.bin").read_bytes()), (0x11000, (f / "baseline.bin").read_bytes())]),
        FlashInputError,
        ("overlap",),
    ),
    "misaligned offset": (lambda t, f, s: flash([(0x10010, (f / "baseline.bin").read_bytes())]), FlashInputError, ("0x10010",)),
    "unreachable broker URI": (
        lambda t, f, s: lambda: RigSession(
            SessionOptions(rigs_dir=t, log_dir=t / "logs", broker="mqtt://127.0.0.1:1")
        ).mqtt(),
        SessionError,
        ("127.0.0.1:1", "unreachable"),
    ),
    "broker URI with another scheme": (
        lambda t, f, s: lambda: RigSession(SessionOptions(rigs_dir=t, log_dir=t / "logs", broker="http://x:1")).mqtt(),
        SessionError,
        ("http://x:1", "mqtts://"),
    ),
    "port that does not exist": (
        lambda t, f, s: lambda: Console("/dev/ttyUSB-does-not-exist", t / "c.log"),
        ConsoleError,
        ("/dev/ttyUSB-does-not-exist",),
    ),
    "busy port": (
        lambda t, f, s: busy_port(s, f),
        FlashPortBusyError,
        ("/dev/pts/", "is busy", "held open by pid", "close the program holding it", "fuser -v"),
    ),
}


@dataclass
class Touched:
    """What a case did to the outside world while it ran."""

    ports: list[str] = field(default_factory=list)  # serial ports opened (successfully)
    processes: list[str] = field(default_factory=list)  # subprocesses, forks, boards
    locks: list[str] = field(default_factory=list)  # file locks acquired


def _serial_classes() -> Iterator[type]:
    """Every pyserial port class loaded (posix, rfc2217, socket://, the flasher's own)."""
    todo: list[type] = [serial.serialutil.SerialBase]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


@contextlib.contextmanager
def watching(monkeypatch: pytest.MonkeyPatch) -> Iterator[Touched]:
    """Record every port opened, process started and lock taken inside the block."""
    with monkeypatch.context() as patch:
        yield from _watch(patch)


def _watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Touched]:
    touched = Touched()

    def spy_open(original: Callable[..., Any]) -> Callable[..., Any]:
        def open_(port: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(port, *args, **kwargs)
            touched.ports.append(str(getattr(port, "port", port)))
            return result

        return open_

    for cls in set(_serial_classes()):
        if "open" in vars(cls):
            monkeypatch.setattr(cls, "open", spy_open(vars(cls)["open"]))

    popen_init = subprocess.Popen.__init__

    def spy_popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        touched.processes.append(f"subprocess {args!r}")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy_popen)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            original = getattr(os, name)
            monkeypatch.setattr(
                os, name, lambda *a, _n=name, _o=original, **k: (touched.processes.append(_n), _o(*a, **k))[1]
            )

    from hil.rig.virtual_board import VirtualBoardProcess

    board_start = VirtualBoardProcess.start
    monkeypatch.setattr(
        VirtualBoardProcess, "start", lambda self: (touched.processes.append("board"), board_start(self))[1]
    )

    acquire = filelock.BaseFileLock.acquire

    def spy_acquire(self: filelock.BaseFileLock, *args: Any, **kwargs: Any) -> Any:
        result = acquire(self, *args, **kwargs)
        touched.locks.append(self.lock_file)
        return result

    monkeypatch.setattr(filelock.BaseFileLock, "acquire", spy_acquire)
    yield touched


@pytest.fixture
def own_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Lock and cache dirs of this test alone, so that what lands there is this case's."""
    locks, cache = tmp_path / "locks", tmp_path / "cache"
    monkeypatch.setenv("HIL_LOCK_DIR", str(locks))
    monkeypatch.setenv("HIL_CACHE_DIR", str(cache))
    return locks, cache


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_fast_and_clearly(
    case: str, tmp_path: Path, fw: Path, own_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    make, error, words = CASES[case]
    locks, cache = own_dirs
    with contextlib.ExitStack() as stack:
        action = make(tmp_path, fw, stack)  # the case's own setup (a held port) is not watched
        with watching(monkeypatch) as touched:
            started = time.monotonic()
            with pytest.raises(error) as info:
                action()
            elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 2.0, f"{case}: took {elapsed:.2f} s"
    for word in words:
        assert word.lower() in message.lower(), f"{case}: {word!r} not in: {message}"
    assert not touched.processes, f"{case}: started {touched.processes}"
    assert not touched.ports, f"{case}: opened {touched.ports}"
    assert not touched.locks, f"{case}: took locks {touched.locks}"
    assert not (locks.exists() and any(locks.iterdir())), f"{case}: left {list(locks.iterdir())} in the lock dir"
    assert not (cache / "boards").exists(), f"{case}: made a virtual board's state dir"
    assert not list(tmp_path.rglob("*.lock")), "a rig was reserved"


def test_the_watch_sees_a_port_a_process_and_a_lock(
    tmp_path: Path, own_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spies above are not blind: each kind of touch is recorded."""
    controller, device = pty.openpty()
    name = os.ttyname(device)
    try:
        with watching(monkeypatch) as touched:
            serial.Serial(name).close()
            subprocess.run(["true"], check=True)
            with filelock.FileLock(tmp_path / "x.lock"):
                pass
    finally:
        os.close(controller)
        os.close(device)
    assert touched.ports == [name]
    assert touched.processes and touched.processes[0].startswith("subprocess")
    assert touched.locks == [str(tmp_path / "x.lock")]


def test_there_are_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15
    assert "busy port" in CASES


def test_a_busy_port_is_one_attempt_an_infrastructure_error_naming_its_holder(fw: Path) -> None:
    """Not retried (a retry would find it held again), and reported as the rig's problem."""
    from hil.errors import is_infrastructure
    from hil.link.port_borrow import Link

    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
        action = busy_port(stack, fw)
        opened: list[int] = []
        original = Link.open
        patch.setattr(Link, "open", lambda *a, **k: (opened.append(1), original(*a, **k))[1])
        with pytest.raises(FlashPortBusyError) as info:
            action()
    assert len(opened) == 1 and info.value.attempts == 1
    assert is_infrastructure(info.value)
    assert f"is held open by pid {os.getpid()} (" in str(info.value)
