"""Rig interfaces as small protocols, and their backends.

A test asks for power, a sensor or the network through these protocols; which backend
answers is rig data. The virtual rig's backends speak to its control endpoint; real
rigs switch power through a GPIO expander on the lab host's I2C bus (smbus2) or a USB
hub (uhubctl), and read a reference BME280 next to the board through smbus2. A new lab
backend is one class.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hil.bme280.compensation import Environment
from hil.bme280.driver import BME280Driver


class Power(Protocol):
    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self, off_s: float = 0.5) -> None: ...


@runtime_checkable
class Probe(Protocol):
    """A backend that can be reached without switching anything: what ``hil rigs check``
    asks a power backend (a sensor is simply read). ``probe`` says what it found, or raises
    the backend's own error (a bus that does not answer, a tool that failed)."""

    def probe(self) -> str: ...


class BootStrapPower(Power, Protocol):
    """A power switch that can also hold the board's GPIO9 (BOOT) low while it powers up:
    how a board with no auto-reset circuit (``reset = "gpio"``) enters its ROM loader."""

    def cycle_into_download(self, off_s: float = 0.5) -> None: ...


class SensorEmulator(Protocol):
    """Sets what the board's sensor measures (virtual rigs, or a climate chamber)."""

    def set(self, env: Environment) -> None: ...
    def fault(self, name: str, active: bool = True) -> None: ...
    def clear_faults(self) -> None: ...
    def get(self) -> Environment: ...


class ReferenceSensor(Protocol):
    """Reads the true environment next to the board (real rigs)."""

    def get(self) -> Environment: ...


class WifiControl(Protocol):
    """The access point the board joins. ``password`` changes the AP's passphrase (one the
    board was not provisioned with makes its joins fail), ``rssi`` the signal the board
    receives; ``restore`` brings the AP back up with the rig's own credentials (and signal),
    after a test that took it down or changed it."""

    @property
    def rssi_tolerance_db(self) -> int:
        """How far the RSSI the board measures may be from the one ``ap(rssi=...)`` set: 0
        where the setting is the measurement (the virtual AP); an attenuator in an RF box
        declares its calibration's."""
        ...

    def ap(self, *, up: bool | None = None, rssi: int | None = None, password: str | None = None) -> None: ...
    def restore(self) -> None: ...


class Control(Protocol):
    """The part of a virtual board's control client the backends use."""

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]: ...


# -- the virtual rig -------------------------------------------------------------------
@dataclass
class VirtualPower:
    control: Control

    def on(self) -> None:
        self.control.request("power", action="on")

    def off(self) -> None:
        self.control.request("power", action="off")

    def cycle(self, off_s: float = 0.5) -> None:
        self.control.request("power", action="cycle", off_s=off_s)

    def probe(self) -> str:
        powered = self.control.request("state")["state"]["powered"]
        return f"the virtual board's supply is {'on' if powered else 'off'}"


@dataclass
class VirtualSensor:
    control: Control

    def set(self, env: Environment) -> None:
        self.control.request(
            "sensor.set",
            temperature_c=env.temperature_c,
            humidity_pct=env.humidity_pct,
            pressure_hpa=env.pressure_hpa,
        )

    def fault(self, name: str, active: bool = True) -> None:
        self.control.request("sensor.fault", fault=name, active=active)

    def clear_faults(self) -> None:
        self.control.request("sensor.fault", fault="none")

    def get(self) -> Environment:
        sensor = self.control.request("sensor.get")["sensor"]
        return Environment(sensor["temperature_c"], sensor["humidity_pct"], sensor["pressure_hpa"])


@dataclass
class VirtualWifi:
    control: Control
    # The rig's own passphrase, which ``restore`` puts back; kept out of repr (pytest -l).
    password: str | None = field(default=None, repr=False)
    # The AP's own RSSI, read before the first change of it, which ``restore`` puts back.
    _rssi: int | None = field(default=None, init=False, repr=False)

    @property
    def rssi_tolerance_db(self) -> int:
        """0: the simulated station reports exactly the signal its AP is set to."""
        return 0

    def ap(self, *, up: bool | None = None, rssi: int | None = None, password: str | None = None) -> None:
        fields: dict[str, Any] = {}
        if up is not None:
            fields["up"] = up
        if rssi is not None:
            if self._rssi is None:
                self._rssi = int(self.control.request("ap.get")["ap"]["rssi"])
            fields["rssi"] = rssi
        if password is not None:
            fields["password"] = password
        self.control.request("ap.set", **fields)

    def restore(self) -> None:
        self.ap(up=True, password=self.password, rssi=self._rssi)


# -- real rigs -------------------------------------------------------------------------
class ExpanderBus(Protocol):
    """The part of ``smbus2.SMBus`` the expanders use."""

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int: ...
    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None: ...
    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...
    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None: ...


class ExpanderChip(Protocol):
    def write(self, bus: ExpanderBus, address: int, pin: int, level: bool) -> None: ...
    def read(self, bus: ExpanderBus, address: int) -> int:
        """The pins' levels as one byte (a read only: nothing is switched)."""
        ...


class PCF8574:
    """8 quasi-bidirectional pins written as one byte; we keep the byte we last wrote."""

    def __init__(self) -> None:
        self._state = 0xFF

    def write(self, bus: ExpanderBus, address: int, pin: int, level: bool) -> None:
        self._state = (self._state | (1 << pin)) if level else (self._state & ~(1 << pin))
        bus.write_byte(address, self._state)

    def read(self, bus: ExpanderBus, address: int) -> int:
        return bus.read_byte(address)


class MCP23017:
    """Port A pins: IODIRA (0x00) to output, then OLATA (0x14) read-modify-write."""

    IODIRA = 0x00
    OLATA = 0x14

    def write(self, bus: ExpanderBus, address: int, pin: int, level: bool) -> None:
        bus.write_byte_data(address, self.IODIRA, bus.read_byte_data(address, self.IODIRA) & ~(1 << pin))
        latch = bus.read_byte_data(address, self.OLATA)
        bus.write_byte_data(address, self.OLATA, (latch | (1 << pin)) if level else (latch & ~(1 << pin)))

    def read(self, bus: ExpanderBus, address: int) -> int:
        return bus.read_byte_data(address, self.OLATA)


STRAP_LATCH_S = 0.1
"""How long GPIO9 stays held low after the supply is back: the C3 samples its strapping
pins as it leaves reset (its power-on reset takes well under this), and the ROM loader it
then runs does not look at GPIO9 again."""


@dataclass
class GpioExpanderPower:
    """A relay or load switch on one expander pin; ``active_high`` says which level is on.
    ``boot_pin``, another pin of the expander, pulls GPIO9 (BOOT) low when written low and
    lets the board's pull-up have it when written high (a PCF8574's high is a weak pull-up)."""

    bus: ExpanderBus
    address: int
    pin: int
    chip: ExpanderChip
    active_high: bool = True
    sleep: Callable[[float], None] = time.sleep
    boot_pin: int | None = None

    def on(self) -> None:
        self.chip.write(self.bus, self.address, self.pin, self.active_high)

    def off(self) -> None:
        self.chip.write(self.bus, self.address, self.pin, not self.active_high)

    def cycle(self, off_s: float = 0.5) -> None:
        self.off()
        self.sleep(off_s)  # the off time is the point of a power cycle
        self.on()

    def probe(self) -> str:
        """Read the expander (it acknowledges its address, or the bus raises OSError)."""
        levels = self.chip.read(self.bus, self.address)
        level = "high" if levels >> self.pin & 1 else "low"
        on = level == ("high" if self.active_high else "low")
        return (
            f"{type(self.chip).__name__} at 0x{self.address:02x} answers; pin {self.pin} is "
            f"{level} (supply {'on' if on else 'off'})"
        )

    def cycle_into_download(self, off_s: float = 0.5) -> None:
        """Power-cycle with GPIO9 held low, so the chip boots its ROM loader; released after."""
        if self.boot_pin is None:
            raise ValueError("no boot_pin: this expander cannot hold GPIO9")
        self.chip.write(self.bus, self.address, self.boot_pin, False)
        try:
            self.cycle(off_s)
            self.sleep(STRAP_LATCH_S)  # the strap is sampled as the chip leaves reset
        finally:
            self.chip.write(self.bus, self.address, self.boot_pin, True)


@dataclass
class UhubctlPower:
    """Port power on a USB hub that supports per-port switching, through uhubctl."""

    hub: str
    port: int
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] = lambda args: subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=30
    )

    def _action(self, action: str, *extra: str) -> None:
        result = self.run(["uhubctl", "-l", self.hub, "-p", str(self.port), "-a", action, *extra])
        if result.returncode != 0:
            raise RuntimeError(f"uhubctl -l {self.hub} -p {self.port} -a {action} failed: {result.stderr.strip()}")

    def on(self) -> None:
        self._action("on")

    def off(self) -> None:
        self._action("off")

    def cycle(self, off_s: float = 0.5) -> None:
        self._action("cycle", "-d", str(off_s))

    def probe(self) -> str:
        """``uhubctl -l HUB -p PORT`` (no action: it only lists the port's status)."""
        args = ["uhubctl", "-l", self.hub, "-p", str(self.port)]
        result = self.run(args)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
        lines = [line.strip() for line in result.stdout.splitlines()]
        status = next((line for line in lines if line.startswith(f"Port {self.port}:")), None)
        if status is None:
            raise RuntimeError(
                f"{' '.join(args)} lists no port {self.port} of hub {self.hub}: "
                f"{result.stdout.strip() or result.stderr.strip()}"
            )
        return f"uhubctl hub {self.hub}: {status}"


@dataclass
class SmbusReferenceSensor:
    """A BME280 on the lab host's I2C bus, beside the board: the truth readings are held to."""

    driver: BME280Driver

    def get(self) -> Environment:
        reading = self.driver.read()
        return Environment(reading.temperature_c, reading.humidity_pct, reading.pressure_hpa)
