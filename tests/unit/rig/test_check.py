"""`hil.rig.check`: the checks `hil rigs check` makes, in order, stopping at the first
failure, each saying what it saw and the fix. The rig classes are the real ones; the fakes
sit at the boundaries: the reservation, the port's opening, esptool (`Flasher.identify`),
the I2C bus, uhubctl's runner and a labgrid power driver."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hil.bme280.compensation import Environment
from hil.link.flash_errors import FlashInfrastructureError
from hil.link.flasher import ChipInfo
from hil.rig.attached import AttachedRig, Rfc2217Rig, SerialRig
from hil.rig.backends import (
    PCF8574,
    GpioExpanderPower,
    Probe,
    UhubctlPower,
    VirtualPower,
)
from hil.rig.check import CheckResult, check_rigs, open_port
from hil.rig.errors import NoRigAvailable, UnknownRig
from hil.rig.labgrid import LabgridPower
from hil.rig.model import (
    GpioExpanderSpec,
    Network,
    NoPowerSpec,
    NoSensorSpec,
    PowerSpec,
    ReferenceBme280Spec,
    ResetMethod,
    Rig,
    SensorSpec,
    UhubctlSpec,
)
from hil.sim.bme280 import BME280, SimulatedSMBus

MAC = "58:cf:79:a1:b2:c3"
EXPANDER = GpioExpanderSpec(bus=1, address=0x20, pin=3, chip="pcf8574")
EXPANDER_WITH_BOOT = GpioExpanderSpec(bus=1, address=0x20, pin=3, chip="pcf8574", boot_pin=4)
REFERENCE = ReferenceBme280Spec(bus=1, address=0x76)


def make_rig(
    port: str,
    *,
    kind: Any = "serial",
    reset: ResetMethod = "classic",
    power: PowerSpec | None = None,
    sensor: SensorSpec | None = None,
    mac: str | None = MAC,
    flash_baud: int | None = 460800,
) -> Rig:
    return Rig(
        name="bench-1",
        kind=kind,
        chip="esp32c3",
        port=port,
        reset=reset,
        power=power or NoPowerSpec(),
        sensor=sensor or NoSensorSpec(),
        network=Network(ssid="lab", broker_host="10.0.0.2"),
        capabilities=frozenset(),
        source=Path("rigs/bench-1.toml"),
        mac=mac,
        flash_baud=flash_baud,
    )


class I2c(SimulatedSMBus):
    """The host's I2C bus: a reference BME280 at 0x76 and a PCF8574 at 0x20 (or nothing)."""

    def __init__(self, *, expander: bool = True) -> None:
        super().__init__(devices=[BME280(environment=Environment(21.5, 40.0, 1002.0))])
        self.expander = expander
        self.writes: list[int] = []

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        if not self.expander:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return 0xFF

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self.writes.append(value)


class FakeFlasher:
    """`Flasher.identify` as esptool would answer it, or its failure."""

    def __init__(self, rig: Rig, answer: ChipInfo | Exception | None) -> None:
        self.rig = rig
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    def identify(self, port: str, *, after: str = "hard-reset") -> ChipInfo:
        self.calls.append((port, after))
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is not None:
            return self.answer
        method = self.rig.flash_method()
        return ChipInfo(
            port=port, chip="esp32c3", chip_id=5, description="ESP32-C3 (QFN32) (revision v0.4)",
            mac=MAC, flash_size="4MB", before=method.before, baud=method.flash_baud or 115200,
        )  # fmt: skip


class Bench(SerialRig):
    """A serial rig as the session drives it, its flasher replaced (esptool is the boundary)."""

    def __init__(self, rig: Rig, *, answer: ChipInfo | Exception | None = None, bus: Any = None, run: Any = None) -> None:
        self.reservation = SimpleNamespace(rig=rig, released=0)
        self.reservation.release = lambda: setattr(self.reservation, "released", self.reservation.released + 1)
        super().__init__(self.reservation, open_bus=lambda number: bus or I2c(), run=run)
        self.fake_flasher = FakeFlasher(rig, answer)
        self.stops = 0

    def flasher(self) -> Any:
        return self.fake_flasher

    def stop(self) -> None:
        self.stops += 1
        super().stop()


def run(attached: AttachedRig, *, opener: Any = None) -> list[CheckResult]:
    def reserve(rigs: Sequence[Rig], *, name: str | None, timeout: float, lock_dir: Any) -> AttachedRig:
        assert timeout == 0  # a held rig is a failed check, not a wait
        return attached

    return list(check_rigs([attached.rig], attached.rig.name, reserve=reserve, opener=opener or (lambda port: None)))


def statuses(results: list[CheckResult]) -> list[tuple[str, str]]:
    return [(r.check, r.status) for r in results]


@pytest.fixture
def device(tmp_path: Path) -> str:
    """A device node that exists (a plain file: the opener is faked)."""
    path = tmp_path / "usb-Silicon_Labs_CP2102N-if00-port0"
    path.write_text("")
    return str(path)


# -- the whole run -----------------------------------------------------------------------------
def test_a_healthy_bench_rig_passes_every_check_in_order_and_is_released(device: str) -> None:
    bench = Bench(make_rig(device, power=EXPANDER, sensor=REFERENCE))
    results = run(bench)
    assert statuses(results) == [
        ("reserved", "ok"), ("port present", "ok"), ("port free", "ok"), ("chip answers", "ok"),
        ("chip id", "ok"), ("mac", "ok"), ("power", "ok"), ("sensor", "ok"),
    ]  # fmt: skip
    lines = [r.line() for r in results]
    assert lines[0].startswith("ok    reserved: bench-1 (serial") and "rigs/bench-1.toml" in lines[0]
    assert "--before default-reset, 460800 Bd" in lines[3] and "flash 4MB" in lines[3]
    assert "5 (esp32c3)" in lines[4] and MAC in lines[5]
    assert "PCF8574 at 0x20 answers; pin 3 is high (supply on)" in lines[6]
    assert "reference-bme280 reads 21.5 °C, 40.0 %RH, 1002.0 hPa" in lines[7]
    assert bench.fake_flasher.calls == [(device, "hard-reset")]  # nothing flashed; the app boots after
    assert bench.stops == 1 and bench.reservation.released == 1


def test_a_missing_port_fails_there_names_it_and_nothing_after_it_runs(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyUSB-does-not-exist")
    bench = Bench(make_rig(port, reset="usb-jtag", power=UhubctlSpec(hub="1-1.4", port=2)))
    results = run(bench)
    assert statuses(results) == [("reserved", "ok"), ("port present", "FAIL")]
    line = results[-1].line()
    assert line.startswith(f"FAIL  port present: {port} does not exist. Fix: plug the board in")
    assert "rigs/bench-1.toml" in line and "ls /dev/serial/by-id/ lists" in line
    assert "USB-Serial-JTAG port is gone while the board is unpowered" in line  # its reset says so
    assert "hil power on --rig bench-1" in line  # it has a power switch to try
    assert bench.fake_flasher.calls == [] and bench.reservation.released == 1 and bench.stops == 1


def test_a_port_another_process_holds_open_is_named_with_its_holder(device: str) -> None:
    with open(device):  # this process holds it, as a serial monitor would
        results = run(Bench(make_rig(device)))
    assert statuses(results)[-1] == ("port free", "FAIL")
    assert f"held open by pid {os.getpid()} (" in results[-1].detail
    assert "fuser -v" in results[-1].fix


@pytest.mark.parametrize(
    ("error", "seen", "fix"),
    [
        (OSError(errno.EAGAIN, "Resource temporarily unavailable"), "is busy", "Close the program"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied", "dialout"),
        (OSError(errno.EIO, "Input/output error"), "does not open: [Errno 5]", "unplug"),
    ],
)
def test_a_port_that_does_not_open_says_why(device: str, error: OSError, seen: str, fix: str) -> None:
    def refuse(port: str) -> None:
        raise error

    results = run(Bench(make_rig(device)), opener=refuse)
    assert statuses(results)[-1] == ("port free", "FAIL")
    assert seen in results[-1].line() and fix in results[-1].line()


def test_a_silent_chip_fails_with_the_last_cause_and_the_fix_for_its_reset(device: str) -> None:
    error = FlashInfrastructureError(
        "could not connect to an ESP32-C3 on ... after 2 attempts\n  | esptool log",
        attempts=2,
        causes=["attempt 1: FatalError: x", "attempt 2: FatalError: Failed to connect to ESP32-C3: No serial data received."],
    )
    results = run(Bench(make_rig(device, reset="usb-jtag"), answer=error))
    assert statuses(results)[-1] == ("chip answers", "FAIL")
    line = results[-1].line()
    assert "esptool --before usb-reset, then 460800 Bd" in line
    assert "attempt 2: FatalError: Failed to connect to ESP32-C3: No serial data received." in line
    assert "esptool log" not in line  # the log tail stays out of the one line
    assert "hold BOOT (GPIO9) while plugging it in" in line and "lower flash_baud" in line


def test_a_gpio_rig_is_power_cycled_into_its_loader_for_the_check_and_booted_after(device: str) -> None:
    bus = I2c()
    bench = Bench(make_rig(device, reset="gpio", power=EXPANDER_WITH_BOOT), bus=bus)
    results = run(bench)
    assert statuses(results)[3] == ("chip answers", "ok") and "--before no-reset" in results[3].detail
    assert bench.fake_flasher.calls == [(device, "no-reset")]  # the power cycle boots the app after
    boot_low = [w for w in bus.writes if not w & (1 << 4)]
    assert boot_low and bus.writes[-1] & (1 << 3) and bus.writes[-1] & (1 << 4)  # ends on, GPIO9 released


def test_another_chip_on_the_port_fails_the_chip_id(device: str) -> None:
    other = ChipInfo(device, "esp32s3", 9, "ESP32-S3 (QFN56)", MAC, "8MB", "default-reset", 460800)
    results = run(Bench(make_rig(device), answer=other))
    assert statuses(results)[-1] == ("chip id", "FAIL")
    assert "the board is esp32s3 (chip id 9); the rig file says chip = 'esp32c3'" in results[-1].line()


def test_another_board_fails_the_mac_and_an_unpinned_one_is_told_what_to_pin(device: str) -> None:
    swapped = ChipInfo(device, "esp32c3", 5, "ESP32-C3", "58:cf:79:00:00:01", "4MB", "default-reset", 460800)
    results = run(Bench(make_rig(device), answer=swapped))
    assert statuses(results)[-1] == ("mac", "FAIL")
    assert f"has MAC 58:cf:79:00:00:01; the rig file says {MAC}" in results[-1].line()

    unpinned = run(Bench(make_rig(device, mac=None)))
    mac = next(r for r in unpinned if r.check == "mac")
    assert mac.status == "skip" and f'add mac = "{MAC}" to rigs/bench-1.toml' in mac.detail
    assert not any(r.failed for r in unpinned)


def test_no_power_and_no_sensor_are_skipped_not_failed(device: str) -> None:
    results = run(Bench(make_rig(device)))
    assert statuses(results)[-2:] == [("power", "skip"), ("sensor", "skip")]
    assert results[-2].detail == 'none in the rig file (power = "none"): tests that need power_control are skipped'


def test_an_expander_that_does_not_answer_fails_the_power_check(device: str) -> None:
    results = run(Bench(make_rig(device, power=EXPANDER, sensor=REFERENCE), bus=I2c(expander=False)))
    assert statuses(results)[-1] == ("power", "FAIL")
    line = results[-1].line()
    assert "gpio-expander: [Errno 121] Remote I/O error" in line and "i2cdetect -y 1" in line


def test_a_missing_reference_sensor_fails_the_sensor_check(device: str) -> None:
    spec = ReferenceBme280Spec(bus=1, address=0x77)  # nothing answers there
    results = run(Bench(make_rig(device, sensor=spec)))
    assert statuses(results)[-1] == ("sensor", "FAIL")
    assert "0x77 on I2C bus 1" in results[-1].fix


class WithBoard(Bench):
    """A rig with a local process standing in for its board (what a virtual rig has once started)."""

    @property
    def board(self) -> Any:
        return SimpleNamespace(endpoints=SimpleNamespace(pid=4242, state_dir=Path("/cache/boards/x")))


def test_a_board_process_is_reported_started(device: str) -> None:
    results = run(WithBoard(make_rig(device)))
    assert results[1].check == "board" and "pid 4242, state /cache/boards/x" in results[1].detail


# -- a lab host's port ----------------------------------------------------------------------------
@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_an_rfc2217_port_is_present_when_the_lab_host_accepts(listener: int) -> None:
    rig = make_rig(f"rfc2217://127.0.0.1:{listener}", kind="rfc2217")
    attached = Rfc2217Rig(SimpleNamespace(rig=rig, release=lambda: None))
    attached.flasher = lambda: FakeFlasher(rig, None)  # type: ignore[method-assign]
    results = run(attached)
    assert statuses(results)[1] == ("port present", "ok") and not any(r.failed for r in results)


def test_an_rfc2217_port_nobody_serves_fails_with_the_lab_host_fix() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed again: nothing listens there
    rig = make_rig(f"rfc2217://127.0.0.1:{port}", kind="rfc2217")
    results = run(Rfc2217Rig(SimpleNamespace(rig=rig, release=lambda: None)), opener=open_port)
    assert statuses(results) == [("reserved", "ok"), ("port present", "FAIL")]
    assert f"nothing accepts connections at 127.0.0.1:{port}" in results[-1].line()
    assert "ser2net" in results[-1].fix


def test_an_rfc2217_port_that_accepts_but_does_not_negotiate_is_not_free(listener: int) -> None:
    """A second client of a one-client server (or a raw TCP port): present, not free. The
    bare connection that tells the two apart is made only after the open failed."""
    opened: list[str] = []

    def refuse(port: str) -> None:
        opened.append(port)
        raise OSError("Remote does not seem to support RFC2217 or BINARY mode")

    rig = make_rig(f"rfc2217://127.0.0.1:{listener}", kind="rfc2217")
    results = run(Rfc2217Rig(SimpleNamespace(rig=rig, release=lambda: None)), opener=refuse)
    assert statuses(results)[1:] == [("port present", "ok"), ("port free", "FAIL")]
    assert "one client at a time" in results[-1].fix and len(opened) == 1


# -- the reservation ------------------------------------------------------------------------------
def test_a_held_rig_fails_the_reservation_and_an_unknown_name_is_a_usage_error(device: str) -> None:
    rig = make_rig(device)

    def held(rigs: Sequence[Rig], *, name: str | None, timeout: float, lock_dir: Any) -> AttachedRig:
        raise NoRigAvailable("every rig matching name 'bench-1' is taken (waited 0 s):\n  bench-1 held by pid 7")

    results = list(check_rigs([rig], "bench-1", reserve=held))
    assert statuses(results) == [("reserved", "FAIL")]
    assert "\n" not in results[0].line() and "held by pid 7" in results[0].line()
    with pytest.raises(UnknownRig, match="no rig or pool named 'bench-2'"):
        list(check_rigs([rig], "bench-2"))


# -- the power backends' probes: reached, nothing switched ---------------------------------------
def test_every_power_backend_probes_without_switching() -> None:
    control = SimpleNamespace(requests=[])
    control.request = lambda cmd, **fields: control.requests.append(cmd) or {"state": {"powered": False}}
    assert VirtualPower(control).probe() == "the virtual board's supply is off" and control.requests == ["state"]

    bus = I2c()
    expander = GpioExpanderPower(bus, 0x20, 3, PCF8574(), active_high=False)
    assert expander.probe().endswith("pin 3 is high (supply off)") and bus.writes == []

    ran: list[list[str]] = []

    def uhubctl(args: list[str]) -> subprocess.CompletedProcess[str]:
        ran.append(args)
        out = "Current status for hub 1-1.4 [2109:2817 VIA Labs, ppps]\n  Port 2: 0503 power highspeed enable connect\n"
        return subprocess.CompletedProcess(args, 0, out, "")

    assert UhubctlPower("1-1.4", 2, run=uhubctl).probe() == "uhubctl hub 1-1.4: Port 2: 0503 power highspeed enable connect"
    assert ran == [["uhubctl", "-l", "1-1.4", "-p", "2"]]  # no -a: a listing only
    with pytest.raises(RuntimeError, match="lists no port 5"):
        UhubctlPower("1-1.4", 5, run=uhubctl).probe()

    driver = SimpleNamespace(get=lambda: True)
    assert LabgridPower(driver).probe() == "the place's power outlet is on"
    assert all(isinstance(p, Probe) for p in (VirtualPower(control), expander, UhubctlPower("1", 1), LabgridPower(driver)))
