"""Rig files: loading, pools, every validation error (file, line, field, fix)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.rig.errors import RigConfigError
from hil.rig.model import (
    KNOWN_CAPABILITIES,
    GpioExpanderSpec,
    LabgridSpec,
    Network,
    NoPowerSpec,
    NoSensorSpec,
    ReferenceBme280Spec,
    Rig,
    UhubctlSpec,
    VirtualPowerSpec,
    VirtualSensorSpec,
)
from hil.rig.rigfile import load_rig_file, load_rigs, with_profile

REPO = Path(__file__).resolve().parents[3]

SERIAL = """\
name = "bench-1"
kind = "serial"
chip = "esp32c3"
port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0"
"""
NETWORK = """
[network]
ssid = "hil-lab"
broker_host = "192.168.50.2"
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# -- valid inventories ----------------------------------------------------------------
def test_the_shipped_virtual_pool_loads_with_every_capability() -> None:
    rigs = load_rigs(REPO / "rigs")
    virtual = [rig for rig in rigs if rig.pool == "virtual"]
    assert [rig.name for rig in virtual] == [f"virtual-{i}" for i in range(len(virtual))]
    assert len(virtual) >= 2
    for rig in virtual:
        assert rig.is_virtual and rig.chip == "esp32c3" and rig.port is None
        assert rig.capabilities == KNOWN_CAPABILITIES
        assert rig.power == VirtualPowerSpec() and rig.sensor == VirtualSensorSpec()
        assert rig.network == Network(ssid="hil-lab", broker_host="127.0.0.1")


def test_a_minimal_virtual_rig_is_a_single_rig_with_defaults(tmp_path: Path) -> None:
    (rig,) = load_rig_file(write(tmp_path, "sim.toml", 'name = "sim"\nkind = "virtual"\n'))
    assert rig.name == "sim" and rig.pool is None and rig.reset == "classic"
    assert rig.has("sensor_emulation", "power_control", "network_faults")


def test_a_virtual_rig_without_power_has_no_power_control(tmp_path: Path) -> None:
    (rig,) = load_rig_file(
        write(tmp_path, "sim.toml", 'name = "sim"\nkind = "virtual"\npower = "none"\n')
    )
    assert rig.missing(["sensor_emulation", "power_control"]) == ("power_control",)


def test_a_pool_expands_to_numbered_rigs(tmp_path: Path) -> None:
    rigs = load_rig_file(
        write(tmp_path, "farm.toml", 'name = "farm"\nkind = "virtual"\ncount = 3\n')
    )
    assert [(rig.name, rig.pool) for rig in rigs] == [
        ("farm-0", "farm"),
        ("farm-1", "farm"),
        ("farm-2", "farm"),
    ]


def test_a_full_serial_rig(tmp_path: Path) -> None:
    text = (
        SERIAL
        + 'reset = "usb-jtag"\ncapabilities = ["power_control", "ota", "ota"]\ntags = ["bench", "cp2102n"]\n'
        + '[power]\nkind = "gpio-expander"\nbus = 1\naddress = 0x20\npin = 3\nchip = "pcf8574"\n'
        + '[sensor]\nkind = "reference-bme280"\nbus = 1\naddress = 0x77\n'
        + NETWORK
    )
    (rig,) = load_rig_file(write(tmp_path, "bench-1.toml", text))
    assert rig == Rig(
        name="bench-1",
        kind="serial",
        chip="esp32c3",
        port="/dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0",
        reset="usb-jtag",
        power=GpioExpanderSpec(bus=1, address=0x20, pin=3, chip="pcf8574"),
        sensor=ReferenceBme280Spec(bus=1, address=0x77),
        network=Network(ssid="hil-lab", broker_host="192.168.50.2"),
        capabilities=frozenset({"power_control", "ota"}),
        tags=("bench", "cp2102n"),
        reenumeration_s=1.0,  # a USB-Serial-JTAG port's default
    )
    assert rig.source == tmp_path / "bench-1.toml"


def test_an_rfc2217_rig_with_uhubctl_power_and_a_labgrid_rig(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a-lab.toml",
        (
            'name = "lab-1"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://lab-host:4000?ign_set_control"\n'
            'power = { kind = "uhubctl", hub = "1-1.4", port = 2 }\ncapabilities = ["power_control"]\n'
            + NETWORK
        ),
    )
    write(
        tmp_path,
        "b-grid.toml",
        'name = "grid"\nkind = "labgrid"\nchip = "esp32c3"\ntags = ["c3-uart"]\n'
        + NETWORK
        + '[labgrid]\ntags = { board = "c3-uart" }\ncoordinator = "lab-coord:20408"\n',
    )
    lab, grid = load_rigs(tmp_path)
    assert lab.power == UhubctlSpec(hub="1-1.4", port=2) and lab.sensor == NoSensorSpec()
    assert grid.port is None and grid.power == NoPowerSpec() and grid.capabilities == frozenset()
    assert grid.labgrid == LabgridSpec(tags=(("board", "c3-uart"),), coordinator="lab-coord:20408")


# -- validation errors: each names the file, the line when known, the field and the fix -------
@dataclass(frozen=True)
class Bad:
    text: str
    key: str | None
    line: int | None
    fragments: tuple[str, ...]
    table: str | None = None
    problems: int = 1


BAD_FILES = {
    "toml-syntax": Bad(
        'name = "bench-1"\nkind = "serial\n', None, 2, ("TOML syntax error", "fix the syntax")
    ),
    "missing-name": Bad('kind = "virtual"\n', "name", None, ('missing; add name = "bench-1"',)),
    "bad-name": Bad('name = "bench 1"\nkind = "virtual"\n', "name", 1, ("not a valid rig name",)),
    "missing-kind": Bad('name = "x"\n', "kind", None, ('add kind = one of "virtual", "serial"',)),
    "kind-typo": Bad(
        'name = "x"\nkind = "serail"\n',
        "kind",
        2,
        ("'serail' is not a known rig kind", "did you mean 'serial'?"),
    ),
    "unknown-top-key": Bad(
        'name = "x"\nkind = "virtual"\ncapabilites = ["ota"]\n',
        "capabilites",
        3,
        ("unknown field", "did you mean 'capabilities'?"),
    ),
    "chip-spelling": Bad(
        'name = "x"\nkind = "serial"\nchip = "ESP32-C3"\nport = "/dev/ttyUSB0"\n' + NETWORK,
        "chip",
        3,
        ('write chip = "esp32c3"',),
    ),
    "chip-other": Bad(
        'name = "x"\nkind = "serial"\nchip = "esp32s3"\nport = "/dev/ttyUSB0"\n' + NETWORK,
        "chip",
        3,
        ('drives "esp32c3" boards only',),
    ),
    "chip-missing": Bad(
        'name = "x"\nkind = "serial"\nport = "/dev/ttyUSB0"\n' + NETWORK,
        "chip",
        None,
        ('add chip = "esp32c3"',),
    ),
    "serial-without-port": Bad(
        'name = "x"\nkind = "serial"\nchip = "esp32c3"\n' + NETWORK,
        "port",
        None,
        ('missing; add port = "/dev/serial/by-id/usb-..."',),
    ),
    "serial-port-not-a-device": Bad(
        'name = "x"\nkind = "serial"\nchip = "esp32c3"\nport = "COM3"\n' + NETWORK,
        "port",
        4,
        ("not a local serial device", "/dev/serial/by-id/"),
    ),
    "serial-with-network-url": Bad(
        'name = "x"\nkind = "serial"\nchip = "esp32c3"\nport = "rfc2217://lab:4000"\n' + NETWORK,
        "port",
        4,
        ('set kind = "rfc2217"',),
    ),
    "rfc2217-without-port-number": Bad(
        'name = "x"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://lab-host"\n' + NETWORK,
        "port",
        4,
        ("not an RFC 2217 URL", "rfc2217://host:port"),
    ),
    "virtual-with-port": Bad(
        'name = "x"\nkind = "virtual"\nport = "/dev/ttyUSB0"\n', "port", 3, ("remove port",)
    ),
    "labgrid-with-port-and-no-tags": Bad(
        'name = "x"\nkind = "labgrid"\nchip = "esp32c3"\n' + NETWORK,
        "labgrid",
        None,
        ("found by its place tags",),
    ),
    "reset-typo": Bad(
        SERIAL + 'reset = "clasic"\n' + NETWORK, "reset", 5, ("did you mean 'classic'?",)
    ),
    "usb-jtag-over-rfc2217": Bad(
        'name = "x"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://lab:4000"\nreset = "usb-jtag"\n'
        + NETWORK,
        "reset",
        5,
        ("USB-Serial-JTAG cannot be reset over a remote RFC 2217 port",),
    ),
    "virtual-gpio": Bad(
        'name = "x"\nkind = "virtual"\nreset = "gpio"\n', "reset", 3, ("DTR/RTS", "USB-Serial-JTAG")
    ),
    "reenumeration-not-a-duration": Bad(
        SERIAL + 'reset = "usb-jtag"\nreenumeration_s = 0\n' + NETWORK,
        "reenumeration_s",
        6,
        ("more than 0", "reenumeration_s = 1.5"),
    ),
    "reenumeration-on-a-lab-port": Bad(
        'name = "x"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://lab:4000"\nreenumeration_s = 1\n'
        + NETWORK,
        "reenumeration_s",
        5,
        ("ser2net keeps listening",),
    ),
    "power-kind-needs-a-table": Bad(
        SERIAL + 'power = "gpio-expander"\n' + NETWORK,
        "power",
        5,
        ("write a [power] table", "bus, address, pin, chip"),
    ),
    "power-kind-typo": Bad(
        SERIAL + '[power]\nkind = "uhubctrl"\nhub = "1-1"\nport = 2\n' + NETWORK,
        "kind",
        6,
        ("did you mean 'uhubctl'?",),
        table="power",
    ),
    "expander-missing-pin": Bad(
        SERIAL
        + '[power]\nkind = "gpio-expander"\nbus = 1\naddress = 0x20\nchip = "pcf8574"\n'
        + NETWORK,
        "pin",
        5,
        ("missing; add pin = 0", "to [power]"),
        table="power",
    ),
    "expander-chip-typo": Bad(
        SERIAL
        + '[power]\nkind = "gpio-expander"\nbus = 1\naddress = 0x20\npin = 1\nchip = "pcf8575"\n'
        + NETWORK,
        "chip",
        10,
        ("'pcf8575' is not a known GPIO expander", "did you mean 'pcf8574'?"),
        table="power",
    ),
    "expander-pin-out-of-range": Bad(
        SERIAL
        + '[power]\nkind = "gpio-expander"\nbus = 1\naddress = 0x20\npin = 9\nchip = "pcf8574"\n'
        + NETWORK,
        "pin",
        9,
        ("9 is out of range; use 0 to 7",),
        table="power",
    ),
    "expander-address-gap": Bad(
        SERIAL
        + '[power]\nkind = "gpio-expander"\nbus = 1\naddress = 0x30\npin = 1\nchip = "pcf8574"\n'
        + NETWORK,
        "address",
        8,
        ("0x30 is no PCF8574 address", "0x38-0x3f (PCF8574A)"),
        table="power",
    ),
    "address-as-string": Bad(
        SERIAL
        + '[power]\nkind = "gpio-expander"\nbus = 1\naddress = "0x20"\npin = 1\nchip = "mcp23017"\n'
        + NETWORK,
        "address",
        8,
        ("without quotes: address = 0x20",),
        table="power",
    ),
    "power-unknown-key": Bad(
        SERIAL + '[power]\nkind = "uhubctl"\nhub = "1-1"\nprot = 2\n' + NETWORK,
        "prot",
        8,
        ("unknown field in [power]", "did you mean 'port'?"),
        table="power",
        problems=2,  # and: port missing
    ),
    "inline-table-out-of-range": Bad(
        SERIAL + 'power = { kind = "uhubctl", hub = "1-1.4", port = 0 }\n' + NETWORK,
        "port",
        5,
        ("0 is out of range; use 1 to 255",),
        table="power",
    ),
    "virtual-power-on-real-rig": Bad(
        SERIAL + 'power = "virtual"\n' + NETWORK, "power", 5, ("only on virtual rigs",)
    ),
    "bme280-address": Bad(
        SERIAL + '[sensor]\nkind = "reference-bme280"\nbus = 1\naddress = 0x75\n' + NETWORK,
        "address",
        8,
        ("0x75 is out of range; use 0x76 to 0x77",),
        table="sensor",
    ),
    "virtual-sensor-on-real-rig": Bad(
        SERIAL + 'sensor = "virtual"\n' + NETWORK, "sensor", 5, ("only on virtual rigs",)
    ),
    "network-missing": Bad(SERIAL, "network", None, ("add a [network] table with ssid",)),
    "ssid-too-long": Bad(
        SERIAL + '[network]\nssid = "' + "s" * 33 + '"\nbroker_host = "10.0.0.2"\n',
        "ssid",
        6,
        ("33 bytes; an 802.11 SSID has at most 32",),
        table="network",
    ),
    "broker-as-url": Bad(
        SERIAL + '[network]\nssid = "lab"\nbroker_host = "mqtt://10.0.0.2:1883"\n',
        "broker_host",
        7,
        ("not a host name or address",),
        table="network",
    ),
    "capability-typo": Bad(
        'name = "x"\nkind = "virtual"\ncapabilities = ["sensor_emulaton"]\n',
        "capabilities",
        3,
        ("not a known capability", "did you mean 'sensor_emulation'?"),
    ),
    "power-control-without-power": Bad(
        SERIAL + 'capabilities = ["power_control"]\n' + NETWORK,
        "capabilities",
        5,
        ("needs a power backend",),
    ),
    "sensor-emulation-on-real-rig": Bad(
        SERIAL + 'capabilities = ["sensor_emulation"]\n' + NETWORK,
        "capabilities",
        5,
        ("needs the virtual sensor",),
    ),
    "tags-as-string": Bad(
        'name = "x"\nkind = "virtual"\ntags = "bench"\n', "tags", 3, ('write tags = ["bench"]',)
    ),
    "count-on-real-rig": Bad(
        SERIAL + "count = 2\n" + NETWORK, "count", 5, ("a real board needs a file of its own",)
    ),
    "count-zero": Bad(
        'name = "x"\nkind = "virtual"\ncount = 0\n', "count", 3, ("from 1 to 256, not 0",)
    ),
    "profile-typo": Bad(
        'name = "x"\nkind = "virtual"\nprofile = "real_board"\n',
        "profile",
        3,
        ("'real_board' is not a known board profile", "did you mean 'real-board'?"),
    ),
    "profile-on-real-rig": Bad(
        SERIAL + 'profile = "real-board"\n' + NETWORK,
        "profile",
        5,
        ("profile is for virtual boards", '[twin] with profile = "real-board"'),
    ),
    "twin-profile-typo": Bad(
        SERIAL + NETWORK + '[twin]\nprofile = "realboard"\n',
        "profile",
        10,
        ("'realboard' is not a known board profile", "did you mean 'real-board'?"),
        table="twin",
    ),
    "bool-for-int": Bad(
        SERIAL + '[sensor]\nkind = "reference-bme280"\nbus = true\naddress = 0x76\n' + NETWORK,
        "bus",
        7,
        ("must be an integer from 0 to 255, not true",),
        table="sensor",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_refused_with_where_and_how_to_fix(tmp_path: Path, case: Bad) -> None:
    path = write(tmp_path, "rig.toml", case.text)
    with pytest.raises(RigConfigError) as caught:
        load_rigs(tmp_path)
    assert len(caught.value.problems) == case.problems
    problem = caught.value.problems[0]
    assert (problem.path, problem.table, problem.key, problem.line) == (
        path,
        case.table,
        case.key,
        case.line,
    )
    message = str(problem)
    assert message.startswith(f"{path}:{case.line}:" if case.line else f"{path}:")
    assert message in str(caught.value)
    if case.key:
        assert (f"[{case.table}] {case.key}:" if case.table else f"{case.key}:") in message
    for fragment in case.fragments:
        assert fragment in message


def test_a_virtual_rig_and_a_twin_choose_their_board_profile(tmp_path: Path) -> None:
    write(tmp_path, "pool.toml", 'name = "slow"\nkind = "virtual"\ncount = 2\nprofile = "real-board"\n')
    write(tmp_path, "fast.toml", 'name = "fast"\nkind = "virtual"\n')
    write(tmp_path, "bench.toml", SERIAL + NETWORK + '[twin]\nprofile = "real-board"\n')
    write(tmp_path, "lab.toml", SERIAL.replace("bench-1", "lab-1") + NETWORK + "[twin]\n")
    rigs = {rig.name: rig for rig in load_rigs(tmp_path)}
    assert rigs["slow-0"].profile == rigs["slow-1"].profile == "real-board"
    assert rigs["fast"].profile == "default"
    assert rigs["bench-1-twin"].profile == "real-board" and rigs["bench-1-twin"].is_virtual
    assert rigs["lab-1-twin"].profile == "default"
    assert rigs["bench-1"].profile == "default"  # a real board: the field means nothing for it


def test_the_run_s_profile_overrides_every_virtual_rig_and_leaves_real_ones(tmp_path: Path) -> None:
    write(tmp_path, "fast.toml", 'name = "fast"\nkind = "virtual"\n')
    write(tmp_path, "bench.toml", SERIAL + NETWORK + "[twin]\n")
    rigs = load_rigs(tmp_path)
    assert with_profile(rigs, None) == rigs
    chosen = {rig.name: rig.profile for rig in with_profile(rigs, "real-board")}
    assert chosen == {"fast": "real-board", "bench-1": "default", "bench-1-twin": "real-board"}
    with pytest.raises(ValueError, match="unknown board profile 'fast'"):
        with_profile(rigs, "fast")


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'name = "a"\nkind = "virtual"\ncount = -1\ntags = "x"\n')
    write(tmp_path, "b.toml", 'name = "b"\nkind = "serail"\n')
    with pytest.raises(RigConfigError) as caught:
        load_rigs(tmp_path)
    assert [(p.path.name, p.key) for p in caught.value.problems] == [
        ("a.toml", "tags"),
        ("a.toml", "count"),
        ("b.toml", "kind"),
    ]
    assert str(caught.value).startswith("3 problems in the rig inventory:\n  ")


def test_a_name_used_twice_names_both_files(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'name = "farm"\nkind = "virtual"\ncount = 2\n')
    second = write(tmp_path, "b.toml", 'name = "farm-1"\nkind = "virtual"\n')
    with pytest.raises(RigConfigError, match=r"also defined in .*a\.toml") as caught:
        load_rigs(tmp_path)
    assert caught.value.problems[0].path == second


def test_a_missing_inventory_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(RigConfigError, match="no rig inventory here"):
        load_rigs(tmp_path / "nope")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(RigConfigError, match="not UTF-8"):
        load_rigs(tmp_path)
