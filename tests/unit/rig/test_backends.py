"""Rig backends against fakes at their boundary: the I2C bus, uhubctl, the control endpoint."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from hil.bme280.compensation import Environment
from hil.bme280.driver import BME280Driver
from hil.rig.backends import (
    MCP23017,
    PCF8574,
    GpioExpanderPower,
    SmbusReferenceSensor,
    UhubctlPower,
    VirtualPower,
    VirtualSensor,
    VirtualWifi,
)
from hil.sim.bme280 import BME280, SimulatedSMBus


class FakeBus:
    def __init__(self) -> None:
        self.regs: dict[tuple[int, int], int] = {}
        self.bytes: list[tuple[int, int]] = []

    def write_byte(self, addr: int, value: int, force: bool | None = None) -> None:
        self.bytes.append((addr, value))

    def read_byte_data(self, addr: int, reg: int, force: bool | None = None) -> int:
        return self.regs.get((addr, reg), 0xFF)

    def write_byte_data(self, addr: int, reg: int, value: int, force: bool | None = None) -> None:
        self.regs[(addr, reg)] = value


def test_pcf8574_power_switches_one_pin_and_keeps_the_others() -> None:
    bus = FakeBus()
    naps: list[float] = []
    power = GpioExpanderPower(bus, 0x20, pin=3, chip=PCF8574(), sleep=naps.append)
    power.off()
    power.on()
    power.cycle(0.2)
    assert bus.bytes == [(0x20, 0xF7), (0x20, 0xFF), (0x20, 0xF7), (0x20, 0xFF)]
    assert naps == [0.2]


def test_mcp23017_active_low_relay() -> None:
    bus = FakeBus()
    power = GpioExpanderPower(bus, 0x21, pin=0, chip=MCP23017(), active_high=False)
    power.on()
    assert bus.regs[(0x21, MCP23017.IODIRA)] == 0xFE
    assert bus.regs[(0x21, MCP23017.OLATA)] == 0xFE
    power.off()
    assert bus.regs[(0x21, MCP23017.OLATA)] == 0xFF


def test_uhubctl_commands_and_errors() -> None:
    calls: list[list[str]] = []

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 1 if "off" in args else 0, "", "No compatible devices")

    power = UhubctlPower("1-1", 2, run=run)
    power.cycle(1.5)
    assert calls[-1] == ["uhubctl", "-l", "1-1", "-p", "2", "-a", "cycle", "-d", "1.5"]
    with pytest.raises(RuntimeError, match="No compatible devices"):
        power.off()


class FakeControl:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.sent.append((cmd, fields))
        return {"ok": True, "sensor": {"temperature_c": 1.0, "humidity_pct": 2.0, "pressure_hpa": 300.0}}


def test_virtual_backends_speak_the_control_protocol() -> None:
    control = FakeControl()
    VirtualPower(control).cycle(0.3)
    sensor = VirtualSensor(control)
    sensor.set(Environment(25.0, 40.0, 1000.0))
    sensor.fault("nack")
    sensor.clear_faults()
    VirtualWifi(control).ap(up=False)
    assert control.sent == [
        ("power", {"action": "cycle", "off_s": 0.3}),
        ("sensor.set", {"temperature_c": 25.0, "humidity_pct": 40.0, "pressure_hpa": 1000.0}),
        ("sensor.fault", {"fault": "nack", "active": True}),
        ("sensor.fault", {"fault": "none"}),
        ("ap.set", {"up": False}),
    ]
    assert sensor.get() == Environment(1.0, 2.0, 300.0)


def test_virtual_wifi_changes_the_passphrase_and_restores_the_rigs_own() -> None:
    control = FakeControl()
    wifi = VirtualWifi(control, password="rig-pass")
    wifi.ap(password="not-the-rig-pass")
    wifi.ap(up=False)
    wifi.restore()
    assert control.sent == [
        ("ap.set", {"password": "not-the-rig-pass"}),
        ("ap.set", {"up": False}),
        ("ap.set", {"up": True, "password": "rig-pass"}),
    ]


def test_virtual_wifi_puts_the_aps_own_rssi_back() -> None:
    class ApControl(FakeControl):
        def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
            self.sent.append((cmd, fields))
            return {"ok": True, "ap": {"ssid": "lab", "up": True, "rssi": -55}}

    control = ApControl()
    wifi = VirtualWifi(control, password="rig-pass")
    wifi.ap(rssi=-71)
    wifi.ap(rssi=-80)
    wifi.restore()
    assert control.sent == [
        ("ap.get", {}),
        ("ap.set", {"rssi": -71}),
        ("ap.set", {"rssi": -80}),
        ("ap.set", {"up": True, "password": "rig-pass", "rssi": -55}),
    ]


def test_reference_sensor_through_smbus() -> None:
    bus = SimulatedSMBus(devices=[BME280(environment=Environment(19.5, 55.0, 990.0))])
    driver = BME280Driver(bus, 0x76)
    driver.initialise()
    env = SmbusReferenceSensor(driver).get()
    assert abs(env.temperature_c - 19.5) < 0.05 and abs(env.pressure_hpa - 990.0) < 0.05
