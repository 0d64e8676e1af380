"""A rig's reset method and flash baud, from its rig file to what reaches the serial line.

The boundary is the port: a loop:// port that records every DTR/RTS write and baud change
stands in for the board's, and esptool runs for real up to its sync (its own choice of
reset strategy for ``--before``, that strategy's line writes, its CHANGE_BAUDRATE's switch
of the port), with only the exchange with a ROM loader taken out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import serial
from esptool.loader import ESPLoader
from esptool.reset import ClassicReset, UnixTightReset, USBJTAGSerialReset
from serial.urlhandler import protocol_loop

import hil.link.flasher
from hil.link.console import Console, ConsoleError
from hil.rig.attached import attach
from hil.rig.errors import RigConfigError
from hil.rig.model import FlashMethod, GpioExpanderSpec
from hil.rig.rigfile import load_rigs
from hil.rig.wiring import download_mode
from hil.session import RigSession, SessionOptions

SERIAL = """\
name = "bench-1"
kind = "serial"
chip = "esp32c3"
port = "/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit-if00"
network = { ssid = "hil-lab", broker_host = "192.168.50.2" }
"""
ROM_BAUD = ESPLoader.ESP_ROM_BAUD


def rig_from_file(tmp_path: Path, extra: str) -> Any:
    (tmp_path / "rigs").mkdir(parents=True)
    (tmp_path / "rigs" / "bench-1.toml").write_text(SERIAL + extra)
    (rig,) = load_rigs(tmp_path / "rigs")
    return rig


class SpyPort(protocol_loop.Serial):  # type: ignore[misc]
    """loop:// that records what reaches the line: each DTR/RTS write, each baud change."""

    def __init__(self, url: str | None = "loop://", **kwargs: Any) -> None:
        self.wire: list[tuple[str, object]] = []
        self.fail_rts_after: int | None = None  # RTS writes that succeed before the port "goes"
        super().__init__(url, **kwargs)

    def _update_dtr_state(self) -> None:
        self.wire.append(("dtr", self._dtr_state))

    def _update_rts_state(self) -> None:
        if self.fail_rts_after is not None:
            if self.fail_rts_after == 0:
                raise serial.SerialException("device disconnected")
            self.fail_rts_after -= 1
        self.wire.append(("rts", self._rts_state))

    def _reconfigure_port(self) -> None:
        super()._reconfigure_port()
        bauds = [value for what, value in self.wire if what == "baud"]
        if not bauds or bauds[-1] != self._baudrate:
            self.wire.append(("baud", self._baudrate))

    def lines(self, since: int = 0) -> list[tuple[str, object]]:
        return [event for event in self.wire[since:] if event[0] != "baud"]


class Stop(Exception):
    """Ends the flasher's job where the stub would be uploaded: what we watch is done."""


@pytest.fixture
def esptool_spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """esptool's connect keeps its own reset-strategy choice and runs that strategy on the
    port; only the sync with a ROM loader (there is none) is skipped."""
    seen: dict[str, Any] = {"modes": [], "strategies": [], "bauds": []}

    def connect(self: Any, mode: str = "default-reset", *args: Any, **kwargs: Any) -> None:
        strategies = self._construct_reset_strategy_sequence(mode)
        seen["modes"].append(mode)
        seen["strategies"].append(tuple(type(s) for s in strategies))
        first = strategies[0]
        if not isinstance(first, UnixTightReset):  # that one needs a real tty's ioctl
            first()

    def change_baud(self: Any, baud: int) -> None:
        seen["bauds"].append(baud)
        self._set_port_baudrate(baud)  # esptool's own switch of the host side

    def run_stub(esp: Any) -> Any:
        raise Stop

    monkeypatch.setattr(ESPLoader, "connect", connect)
    monkeypatch.setattr(ESPLoader, "change_baud", change_baud)
    monkeypatch.setattr(hil.link.flasher, "run_stub", run_stub)
    return seen


def states(events: list[tuple[str, object]], start: tuple[bool, bool]) -> list[tuple[bool, bool]]:
    """The (DTR, RTS) line state after each write, repeats dropped: what a USB-Serial-JTAG
    peripheral decodes (it sees states, not wires)."""
    dtr, rts = start
    out = [start]
    for what, value in events:
        if what == "dtr":
            dtr = bool(value)
        elif what == "rts":
            rts = bool(value)
        if (dtr, rts) != out[-1]:
            out.append((dtr, rts))
    return out


# -- the rig file ------------------------------------------------------------------------------
def test_flash_method_from_the_rig_file(tmp_path: Path) -> None:
    rig = rig_from_file(tmp_path, 'reset = "usb-jtag"\nflash_baud = 460800\n')
    assert rig.flash_baud == 460800
    # A USB-Serial-JTAG port leaves with the power: the flasher waits 3 x its 1 s re-enumeration.
    assert rig.flash_method() == FlashMethod("usb-reset", 460800, port_return_s=3.0)
    slow_hub = rig_from_file(tmp_path / "slow", 'reset = "usb-jtag"\nreenumeration_s = 2.5\n')
    assert slow_hub.reenumeration_s == 2.5 and slow_hub.flash_method().port_return_s == 7.5


def test_a_classic_rig_without_flash_baud_keeps_default_reset_at_the_rom_baud(tmp_path: Path) -> None:
    rig = rig_from_file(tmp_path, "")
    assert rig.flash_method() == FlashMethod("default-reset", None)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('flash_baud = "460800"', "without quotes: flash_baud = 460800"),
        ("flash_baud = 9600", "9600 is out of range; use 115200 to 5000000"),
        ("flash_baud = 460800.0", "must be an integer"),
        ("flash_bad = 460800", "did you mean 'flash_baud'?"),
    ],
)
def test_a_bad_flash_baud_is_refused_with_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    with pytest.raises(RigConfigError) as caught:
        rig_from_file(tmp_path, line + "\n")
    (problem,) = caught.value.problems
    assert problem.line == 6 and fragment in str(problem), str(problem)


@pytest.mark.parametrize(
    "power",
    [
        "",
        'power = { kind = "uhubctl", hub = "1-1.4", port = 2 }\n',
        'power = { kind = "gpio-expander", bus = 1, address = 0x20, pin = 3, chip = "pcf8574" }\n',
    ],
    ids=["no-power", "uhubctl", "expander-without-boot-pin"],
)
def test_a_gpio_rig_whose_power_cannot_hold_gpio9_is_refused_at_load(tmp_path: Path, power: str) -> None:
    with pytest.raises(RigConfigError) as caught:
        rig_from_file(tmp_path, 'reset = "gpio"\n' + power)
    (problem,) = caught.value.problems
    assert problem.key == "reset" and problem.line == 6
    assert "cannot hold GPIO9" in str(problem) and "boot_pin" in str(problem)


def test_a_gpio_rig_with_an_expander_boot_pin_loads(tmp_path: Path) -> None:
    rig = rig_from_file(
        tmp_path,
        'reset = "gpio"\nflash_baud = 921600\n'
        'power = { kind = "gpio-expander", bus = 1, address = 0x20, pin = 3, chip = "pcf8574", boot_pin = 4 }\n',
    )
    assert rig.power == GpioExpanderSpec(bus=1, address=0x20, pin=3, chip="pcf8574", boot_pin=4)
    assert rig.flash_method() == FlashMethod("no-reset", 921600, boot_by_power=True)


def test_the_boot_pin_cannot_be_the_power_pin(tmp_path: Path) -> None:
    with pytest.raises(RigConfigError, match="GPIO9 needs a pin of its own"):
        rig_from_file(
            tmp_path,
            'power = { kind = "gpio-expander", bus = 1, address = 0x20, pin = 3, chip = "pcf8574", boot_pin = 3 }\n',
        )


# -- the flasher, through the session's flash path ----------------------------------------------
class LendingConsole:
    """The part of `Console` the session's flash jobs use: a mark and a lent port."""

    def __init__(self, port: SpyPort) -> None:
        self.port = port

    def mark(self) -> None:
        return None

    @contextlib.contextmanager
    def borrow(self) -> Iterator[SpyPort]:
        yield self.port


def session_on(tmp_path: Path, rig: Any, port: SpyPort, *, open_bus: Any = None) -> RigSession:
    session = RigSession(SessionOptions(rigs_dir=tmp_path / "rigs", log_dir=tmp_path / "logs"))
    session.reserved = attach(SimpleNamespace(rig=rig, release=lambda: None), open_bus=open_bus)
    session.console = LendingConsole(port)  # type: ignore[assignment]
    return session


def test_usb_jtag_at_460800_reaches_esptool_as_usb_reset_at_460800(
    tmp_path: Path, esptool_spy: dict[str, Any]
) -> None:
    rig = rig_from_file(tmp_path, 'reset = "usb-jtag"\nflash_baud = 460800\n')
    port = SpyPort()
    port.dtr = port.rts = False  # as the console leaves them
    start = len(port.wire)
    with pytest.raises(Stop):
        session_on(tmp_path, rig, port).erase_flash()
    assert esptool_spy["modes"] == ["usb-reset"]  # esptool --before usb-reset
    assert esptool_spy["strategies"] == [(USBJTAGSerialReset,)]
    assert esptool_spy["bauds"] == [460800]
    # On the line: esptool opened at the ROM's rate, ran the USB-Serial-JTAG sequence, then
    # switched the port to 460800.
    wire = port.wire[start:]
    assert [value for what, value in wire if what == "baud"] == [ROM_BAUD, 460800]
    first_line = next(i for i, (what, _) in enumerate(wire) if what != "baud")
    assert wire.index(("baud", ROM_BAUD)) < first_line and wire[-1] == ("baud", 460800)
    seq = states(port.lines(start), (False, False))
    # The download flag is set (DTR alone), then the chip is reset (RTS alone) without
    # passing through (0, 0), which would clear the flag; both released at the end.
    assert (True, False) in seq and (False, True) in seq
    between = seq[seq.index((True, False)) : seq.index((False, True))]
    assert (False, False) not in between
    assert seq[-1] == (False, False)


def test_classic_without_flash_baud_reaches_esptool_as_default_reset_at_the_rom_baud(
    tmp_path: Path, esptool_spy: dict[str, Any]
) -> None:
    rig = rig_from_file(tmp_path, 'reset = "classic"\n')
    port = SpyPort()
    with pytest.raises(Stop):
        session_on(tmp_path, rig, port).erase_flash()
    assert esptool_spy["modes"] == ["default-reset"]
    (chosen,) = esptool_spy["strategies"]
    assert USBJTAGSerialReset not in chosen and set(chosen) <= {UnixTightReset, ClassicReset}
    assert esptool_spy["bauds"] == []  # no CHANGE_BAUDRATE: the ROM's 115200 throughout
    assert [value for what, value in port.wire if what == "baud"][-1] == ROM_BAUD


def test_a_gpio_rig_is_power_cycled_into_download_mode_and_flashed_with_no_reset(
    tmp_path: Path, esptool_spy: dict[str, Any]
) -> None:
    rig = rig_from_file(
        tmp_path,
        'reset = "gpio"\n'
        'power = { kind = "gpio-expander", bus = 1, address = 0x20, pin = 3, chip = "pcf8574", boot_pin = 4 }\n',
    )
    bus = ExpanderBus()
    port = SpyPort()
    session = session_on(tmp_path, rig, port, open_bus=lambda number: bus)
    session.start_board().boot_power().sleep = lambda seconds: None  # type: ignore[attr-defined]
    start = len(port.wire)
    with pytest.raises(Stop):
        session.erase_flash()
    assert esptool_spy["modes"] == ["no-reset"]
    assert port.lines(start) == []  # no DTR/RTS: this board has no auto-reset circuit
    # GPIO9 low (bit 4), power off and on (bit 3), GPIO9 released; then, the job over (here:
    # failed), a plain power cycle boots whatever is in flash.
    assert bus.writes == [0xEF, 0xE7, 0xEF, 0xFF, 0xF7, 0xFF]


class ExpanderBus:
    """A PCF8574's bus: the bytes written to it."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self.writes.append(value)


def test_download_mode_leaves_other_rigs_to_esptool(tmp_path: Path) -> None:
    rig = rig_from_file(tmp_path, 'reset = "usb-jtag"\n')

    def no_power() -> Any:
        raise AssertionError("a usb-jtag rig is not power-cycled")

    with download_mode(rig, no_power, "hard-reset") as after:
        assert after == "hard-reset"


# -- the console's reset ------------------------------------------------------------------------
@pytest.fixture
def spy_console(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    made: list[SpyPort] = []

    def serial_for_url(url: str, **kwargs: Any) -> SpyPort:
        port = SpyPort(None)
        port.port = "loop://"
        made.append(port)
        return port

    monkeypatch.setattr(serial, "serial_for_url", serial_for_url)
    consoles: list[Console] = []

    def open_console(reset: Any) -> tuple[Console, SpyPort]:
        console = Console("spy://board", tmp_path / f"{reset}.log", reset=reset)
        consoles.append(console)
        return console, made[-1]

    yield open_console
    for console in consoles:
        console.close()


def test_classic_console_reset_pulses_en_through_rts(spy_console: Any) -> None:
    console, port = spy_console("classic")
    start = len(port.wire)
    console.hard_reset()
    assert port.lines(start) == [("dtr", False), ("rts", True), ("rts", False)]


def test_usb_jtag_console_reset_clears_the_download_flag_then_requests_a_reset(spy_console: Any) -> None:
    console, port = spy_console("usb-jtag")
    port.dtr = True  # as if something left DTR asserted: reset now, it would boot the ROM loader
    start = len(port.wire)
    began = time.monotonic()
    console.hard_reset()
    assert time.monotonic() - began >= 0.2  # esptool's hold for a chip on its own USB
    assert port.lines(start) == [("dtr", False), ("rts", False), ("rts", True), ("rts", False)]
    seq = states(port.lines(start), (True, False))
    assert seq == [(True, False), (False, False), (False, True), (False, False)]
    assert seq[-1] == (False, False)  # released: the chip runs its app, not the ROM loader


def test_usb_jtag_console_reset_survives_the_port_leaving_the_bus(spy_console: Any) -> None:
    console, port = spy_console("usb-jtag")
    port.fail_rts_after = 2  # the release write finds the board gone (it reset at once)
    console.hard_reset()
    assert "port gone with the reset" in console.log_path.read_text()


def test_classic_console_reset_still_fails_loudly_when_rts_cannot_be_driven(spy_console: Any) -> None:
    console, port = spy_console("classic")
    port.fail_rts_after = 1
    with pytest.raises(ConsoleError, match="cannot drive RTS/DTR"):
        console.hard_reset()


def test_the_session_opens_a_usb_jtag_rigs_console_with_its_reset(
    tmp_path: Path, spy_console: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rig_from_file(tmp_path, 'reset = "usb-jtag"\n')
    session = RigSession(SessionOptions(rigs_dir=tmp_path / "rigs", log_dir=tmp_path / "logs"))
    session.reserved = attach(SimpleNamespace(rig=rig, release=lambda: None))
    try:
        assert session.open_console().reset == "usb-jtag"
    finally:
        session.close()

