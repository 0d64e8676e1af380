"""Power and sensor backends built from rig files (``hil.rig.wiring``), for the test
session and the bench alike, with fakes at the boundary: the I2C bus and uhubctl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import hil.rig.wiring as rb
from hil.bme280.compensation import Environment
from hil.rig.backends import GpioExpanderPower, SmbusReferenceSensor, UhubctlPower, VirtualPower
from hil.rig.rigfile import load_rigs
from hil.session import RigSession, SessionError, SessionOptions
from hil.sim.bme280 import BME280, SimulatedSMBus

RIG = """name = "bench-1"
kind = "serial"
chip = "esp32c3"
port = "/dev/ttyUSB7"
reset = "classic"
capabilities = {caps}
network = {{ ssid = "lab", broker_host = "10.0.0.2" }}
{power}
{sensor}
"""
EXPANDER = 'power = { kind = "gpio-expander", bus = 1, address = 0x20, pin = 3, chip = "pcf8574" }'
UHUBCTL = 'power = { kind = "uhubctl", hub = "1-1.4", port = 2 }'
REFERENCE = 'sensor = { kind = "reference-bme280", bus = 1, address = 0x76 }'


class FakeI2c(SimulatedSMBus):
    """The host's I2C bus: a reference BME280 at 0x76 and a PCF8574 whose writes are kept."""

    def __init__(self) -> None:
        super().__init__(devices=[BME280(environment=Environment(21.0, 45.0, 1005.0))])
        self.expander: list[tuple[int, int]] = []
        self.closed = False

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self.expander.append((i2c_addr, value))

    def close(self) -> None:
        self.closed = True


def rig_dir(tmp_path: Path, power: str = "", sensor: str = "") -> Path:
    (tmp_path / "rigs").mkdir()
    caps = '["power_control"]' if power else "[]"
    (tmp_path / "rigs" / "bench-1.toml").write_text(RIG.format(power=power, sensor=sensor, caps=caps))
    return tmp_path / "rigs"


def test_an_expander_and_a_reference_sensor_share_one_bus(tmp_path: Path) -> None:
    [rig] = load_rigs(rig_dir(tmp_path, EXPANDER, REFERENCE))
    opened: list[int] = []
    bus = FakeI2c()
    backends = rb.RigBackends(rig, open_bus=lambda n: opened.append(n) or bus)
    power = backends.power()
    assert isinstance(power, GpioExpanderPower) and (power.address, power.pin) == (0x20, 3)
    power.off()
    power.on()
    assert bus.expander == [(0x20, 0xF7), (0x20, 0xFF)]
    assert backends.power() is power  # kept: the PCF8574's other pins keep their levels
    sensor = backends.sensor()
    assert isinstance(sensor, SmbusReferenceSensor)
    env = sensor.get()
    assert abs(env.temperature_c - 21.0) < 0.05 and abs(env.pressure_hpa - 1005.0) < 0.05
    assert opened == [1]  # bus 1 opened once for both
    backends.close()
    assert bus.closed


def test_uhubctl_power_runs_the_tool_for_the_rigs_hub_and_port(tmp_path: Path) -> None:
    [rig] = load_rigs(rig_dir(tmp_path, UHUBCTL))
    calls: list[list[str]] = []

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    power = rb.RigBackends(rig, run=run).power()
    assert isinstance(power, UhubctlPower)
    power.cycle(2.0)
    assert calls == [["uhubctl", "-l", "1-1.4", "-p", "2", "-a", "cycle", "-d", "2.0"]]


def test_a_rig_without_a_backend_says_which_file_and_what_to_add(tmp_path: Path) -> None:
    [rig] = load_rigs(rig_dir(tmp_path))
    with pytest.raises(rb.NoBackend, match=r"bench-1.*power = 'none' in .*bench-1.toml.*\[power\] table"):
        rb.RigBackends(rig).power()
    with pytest.raises(rb.NoBackend, match=r"sensor = 'none'.*reference-bme280"):
        rb.RigBackends(rig).sensor()


def test_a_virtual_spec_needs_the_boards_control_endpoint(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text('name = "v"\nkind = "virtual"\n')
    [rig] = load_rigs(tmp_path)
    with pytest.raises(rb.NoBackend, match="not running"):
        rb.RigBackends(rig).power()
    assert isinstance(rb.RigBackends(rig, control=object()).power(), VirtualPower)  # type: ignore[arg-type]


def test_an_i2c_bus_that_cannot_be_opened_names_the_device_node() -> None:
    with pytest.raises(rb.BackendUnavailable, match=r"/dev/i2c-250.*i2c-dev"):
        rb.open_smbus(250)


def test_the_session_gives_a_real_rigs_power_and_sensor_from_its_rig_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path / "cache"))
    bus = FakeI2c()
    monkeypatch.setattr(rb, "open_smbus", lambda n: bus)
    session = RigSession(SessionOptions(rigs_dir=rig_dir(tmp_path, EXPANDER, REFERENCE), log_dir=tmp_path / "logs", rig_name="bench-1"))
    try:
        session.power().cycle(0.0)
        assert bus.expander == [(0x20, 0xF7), (0x20, 0xFF)]
        assert abs(session.sensor().get().humidity_pct - 45.0) < 0.5
    finally:
        session.close()
    assert bus.closed  # the session's close closes the bus


def test_the_session_reports_a_missing_backend_as_a_session_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    session = RigSession(SessionOptions(rigs_dir=rig_dir(tmp_path), log_dir=tmp_path / "logs", rig_name="bench-1"))
    try:
        with pytest.raises(SessionError, match="no power backend"):
            session.power()
        with pytest.raises(SessionError, match="no sensor backend"):
            session.sensor()
    finally:
        session.close()
