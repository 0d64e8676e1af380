"""Build a rig's power and sensor backends, and its flasher, from its rig file: the one
place that maps ``power = {...}`` / ``sensor = {...}`` onto ``hil.rig.backends`` classes and
``reset`` / ``flash_baud`` onto ``hil.link.flasher.Flasher``, used by the test session (the
``power`` / ``sensor`` fixtures, every flash) and by the bench CLI (``--rig``).

The host-side buses are opened here, through injectable openers (``smbus2.SMBus`` and
``subprocess.run`` for uhubctl by default), so tests put fakes at exactly that boundary.
What is opened is returned with the backend for the caller to close with its session.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hil.bme280.driver import BME280Driver
from hil.errors import InfrastructureError, UsageError
from hil.rig.backends import (
    MCP23017,
    PCF8574,
    BootStrapPower,
    Control,
    GpioExpanderPower,
    Power,
    ReferenceSensor,
    SensorEmulator,
    SmbusReferenceSensor,
    UhubctlPower,
    VirtualPower,
    VirtualSensor,
)
from hil.rig.model import (
    GpioExpanderSpec,
    ReferenceBme280Spec,
    Rig,
    UhubctlSpec,
    VirtualPowerSpec,
    VirtualSensorSpec,
)

if TYPE_CHECKING:  # esptool is imported only by what flashes
    from hil.link.flasher import AfterReset, Flasher

BusOpener = Callable[[int], Any]  # bus number -> an smbus2.SMBus (or a fake with its methods)
Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


class BackendUnavailable(InfrastructureError):
    """A backend's bus or tool cannot be reached on this host; the message says what to do."""


class NoBackend(BackendUnavailable, UsageError):
    """The rig file gives no such backend; the message names the file, the field and the fix."""


def rig_flasher(rig: Rig) -> Flasher:
    """A flasher that resets the rig's board and talks to it as its rig file says: esptool's
    ``--before`` and baud from `Rig.flash_method` (a gpio rig's board is put into download
    mode around the job by `download_mode`)."""
    from hil.link.flasher import Flasher

    method = rig.flash_method()
    return Flasher(before=method.before, flash_baud=method.flash_baud, port_return_s=method.port_return_s)


@contextlib.contextmanager
def download_mode(
    rig: Rig, boot_power: Callable[[], BootStrapPower], after: AfterReset
) -> Iterator[AfterReset]:
    """Around one flasher job on ``rig``; yields the ``after`` to give the flasher.

    A gpio rig's board has no auto-reset circuit: it is power-cycled with GPIO9 held low
    first (the flasher connects with ``no-reset``), and, unless ``after`` is "no-reset",
    power-cycled again with GPIO9 released to boot what is in flash, even when the job
    failed (a board left in its ROM loader fails every later test for a reason not its
    own). Other rigs: nothing to do, ``after`` as given (esptool resets with the lines)."""
    if not rig.flash_method().boot_by_power:
        yield after
        return
    power = boot_power()
    power.cycle_into_download()
    try:
        yield "no-reset"
    except BaseException:
        if after != "no-reset":
            with contextlib.suppress(Exception):  # the job's error is the one to report
                power.cycle()
        raise
    if after != "no-reset":
        power.cycle()


def open_smbus(bus: int) -> Any:
    """``smbus2.SMBus(bus)``, with an error that says which device node and why."""
    from smbus2 import SMBus

    try:
        return SMBus(bus)
    except OSError as exc:
        raise BackendUnavailable(
            f"cannot open I2C bus {bus} (/dev/i2c-{bus}): {exc.strerror or exc}; "
            "is the i2c-dev module loaded and the user in the i2c group?"
        ) from None


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a host tool (uhubctl), its output captured, bounded in time."""
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


@dataclass
class RigBackends:
    """A rig's power and sensor backends, built on first use and kept (an expander
    remembers the pin levels it wrote), and the buses they opened, closed by ``close``."""

    rig: Rig
    control: Control | None = None  # the virtual board's control endpoint, for virtual specs
    open_bus: BusOpener | None = None  # None: ``open_smbus`` (looked up when used)
    run: Runner | None = None  # None: ``run_tool``
    _buses: dict[int, Any] = field(default_factory=dict)
    _power: Power | None = None
    _sensor: SensorEmulator | ReferenceSensor | None = None

    def _bus(self, number: int) -> Any:
        if number not in self._buses:
            self._buses[number] = (self.open_bus or open_smbus)(number)
        return self._buses[number]

    def _where(self, table: str) -> str:
        return f"rig {self.rig.name!r} ({table} = {getattr(self.rig, table).kind!r} in {self.rig.source or 'its rig file'})"

    def _virtual(self, table: str) -> Control:
        if self.control is None:
            raise NoBackend(f"{self._where(table)}: the virtual board is not running (no control endpoint)")
        return self.control

    def power(self) -> Power:
        if self._power is None:
            spec = self.rig.power
            if isinstance(spec, VirtualPowerSpec):
                self._power = VirtualPower(self._virtual("power"))
            elif isinstance(spec, UhubctlSpec):
                self._power = UhubctlPower(spec.hub, spec.port, run=self.run or run_tool)
            elif isinstance(spec, GpioExpanderSpec):
                chip = PCF8574() if spec.chip == "pcf8574" else MCP23017()
                self._power = GpioExpanderPower(
                    self._bus(spec.bus), spec.address, spec.pin, chip, boot_pin=spec.boot_pin
                )
            else:
                raise NoBackend(
                    f"{self._where('power')}: no power backend; give the rig a [power] table "
                    '(kind = "gpio-expander" or "uhubctl") or skip with @pytest.mark.requires("power_control")'
                )
        return self._power

    def boot_power(self) -> BootStrapPower:
        """The power backend of a ``reset = "gpio"`` rig, which can also hold GPIO9 low (the
        rig loader refuses a gpio rig whose backend cannot, so this is a usage error only
        for a rig built by hand)."""
        power = self.power()
        if isinstance(power, GpioExpanderPower) and power.boot_pin is not None:
            return power
        raise NoBackend(
            f"{self._where('power')}: cannot hold GPIO9 for reset = \"gpio\"; give the "
            "[power] gpio-expander a boot_pin, or use reset = \"classic\" or \"usb-jtag\""
        )

    def sensor(self) -> SensorEmulator | ReferenceSensor:
        """The virtual BME280 (settable, with faults), or a reference BME280 next to a real
        board (read-only: what the board's own sensor should agree with)."""
        if self._sensor is None:
            spec = self.rig.sensor
            if isinstance(spec, VirtualSensorSpec):
                self._sensor = VirtualSensor(self._virtual("sensor"))
            elif isinstance(spec, ReferenceBme280Spec):
                self._sensor = SmbusReferenceSensor(BME280Driver(self._bus(spec.bus), spec.address))
            else:
                raise NoBackend(
                    f"{self._where('sensor')}: no sensor backend; give the rig a [sensor] table "
                    '(kind = "reference-bme280", bus, address) or skip with @pytest.mark.requires("sensor_emulation")'
                )
        return self._sensor

    def close(self) -> None:
        """Close the buses opened (idempotent); backends are built afresh after it."""
        buses, self._buses = self._buses, {}
        self._power = self._sensor = None
        for bus in buses.values():
            close = getattr(bus, "close", None)
            if close is not None:
                close()
