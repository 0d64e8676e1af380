"""The example rig files (rigs/*.toml) for the boards C3 teams have, their virtual twins
(a rig file's ``[twin]``), a board pinned by its ``mac``, and what the default selection
takes: the virtual rig, never an example nor a twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.rig.errors import RigConfigError
from hil.rig.model import (
    NoPowerSpec,
    NoSensorSpec,
    Rig,
    VirtualPowerSpec,
    VirtualSensorSpec,
)
from hil.rig.reservation import auto_workers
from hil.rig.rigfile import load_rig_file, load_rigs
from hil.rig.selection import select_rigs

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = {
    "devkitm-1": ("serial", "classic"),
    "usb-jtag": ("serial", "usb-jtag"),
    "lab-port": ("rfc2217", "classic"),
    "labgrid-place": ("labgrid", "classic"),
}
SERIAL = """\
name = "bench-1"
kind = "serial"
chip = "esp32c3"
port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0"
network = { ssid = "lab", broker_host = "10.0.0.2" }
"""


@pytest.fixture(scope="module")
def shipped() -> dict[str, Rig]:
    return {rig.name: rig for rig in load_rigs(REPO / "rigs")}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench-1.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_example_loads_as_data_with_its_backends_baud_and_twin(shipped: dict[str, Rig]) -> None:
    for name, (kind, reset) in EXAMPLES.items():
        rig = shipped[name]
        assert (rig.kind, rig.reset) == (kind, reset), name
        assert rig.flash_baud == 460800 and rig.capabilities and rig.description, name
        assert rig.source == REPO / "rigs" / f"{name}.toml"
        twin = shipped[f"{name}-twin"]
        assert twin.is_virtual and twin.twin_of == name and twin.port is None
        assert twin.capabilities == rig.capabilities and twin.flash_baud == rig.flash_baud
        assert twin.tags == ("twin",) and not set(rig.tags) & set(twin.tags)
        assert twin.network == shipped["virtual-0"].network
        # Virtual power and sensor stand in where the real rig has backends, none where it has none.
        assert isinstance(twin.power, NoPowerSpec) == isinstance(rig.power, NoPowerSpec)
        assert isinstance(twin.sensor, NoSensorSpec) == isinstance(rig.sensor, NoSensorSpec)
    assert shipped["devkitm-1"].power.kind == "gpio-expander" and shipped["usb-jtag"].power.kind == "uhubctl"
    assert shipped["devkitm-1-twin"].power == VirtualPowerSpec() and shipped["devkitm-1-twin"].sensor == VirtualSensorSpec()
    assert shipped["usb-jtag"].mac == "58:cf:79:a1:b2:c3"
    assert shipped["labgrid-place"].labgrid is not None


def test_a_twin_keeps_the_reset_the_virtual_board_has_and_says_when_it_cannot(shipped: dict[str, Rig]) -> None:
    assert shipped["devkitm-1-twin"].flash_method() == shipped["devkitm-1"].flash_method()
    twin = shipped["usb-jtag-twin"]
    assert twin.reset == "usb-jtag" and "USB-Serial-JTAG port" in twin.description
    assert twin.flash_method() == shipped["usb-jtag"].flash_method()
    assert twin.reenumeration_s == shipped["usb-jtag"].reenumeration_s == 1.0


def test_the_default_selection_is_the_virtual_pool_never_an_example_or_a_twin(
    shipped: dict[str, Rig], tmp_path: Path
) -> None:
    rigs = list(shipped.values())
    default = select_rigs(rigs)
    assert default and all(rig.pool == "virtual" for rig in default)
    # -n auto counts the virtual pool only (up to the cores), no example and no twin.
    assert auto_workers(rigs, cpus=64, lock_dir=tmp_path) == len(default)
    # A twin only when named (or by its tag); a real rig's tag never lands on its twin.
    assert [r.name for r in select_rigs(rigs, name="devkitm-1-twin")] == ["devkitm-1-twin"]
    assert [r.name for r in select_rigs(rigs, tag="lab-c3")] == ["labgrid-place"]
    assert {r.name for r in select_rigs(rigs, tag="twin")} == {f"{n}-twin" for n in EXAMPLES}


def test_a_twin_named_by_default_and_one_that_clashes(tmp_path: Path) -> None:
    (rig, twin) = load_rig_file(write(tmp_path, SERIAL + "[twin]\n"))
    assert twin.name == "bench-1-twin" and twin.twin_of == "bench-1" and twin.source == rig.source
    (tmp_path / "other.toml").write_text('name = "bench-1-twin"\nkind = "virtual"\n')
    with pytest.raises(RigConfigError, match="rig 'bench-1-twin' is also defined in"):
        load_rigs(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SERIAL + "twin = true\n", r"twin: must be a table: write \[twin\] with name = \"bench-1-twin\""),
        (SERIAL + '[twin]\nname = "bench-1"\n', r"\[twin\] name: the twin needs a name of its own"),
        (SERIAL + '[twin]\nname = "a b"\n', r"\[twin\] name: \"a b\" is not a valid rig name"),
        (SERIAL + '[twin]\nnmae = "x"\n', r"\[twin\] nmae: unknown field in \[twin\]; did you mean 'name'"),
        ('name = "sim"\nkind = "virtual"\n[twin]\n', r"twin: a virtual rig needs no twin"),
    ],
)
def test_a_bad_twin_table_is_refused_with_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RigConfigError, match=message):
        load_rig_file(write(tmp_path, text))


def test_mac_is_normalized_as_esptool_prints_it(tmp_path: Path) -> None:
    (rig,) = load_rig_file(write(tmp_path, SERIAL + 'mac = "58-CF-79-A1-B2-C3"\n'))
    assert rig.mac == "58:cf:79:a1:b2:c3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SERIAL + 'mac = "58:cf:79:a1:b2"\n', r":6: mac: '58:cf:79:a1:b2' is not a MAC address; write six hex bytes"),
        (SERIAL + "mac = 5\n", r"mac: must be a string, like mac = "),
        ('name = "sim"\nkind = "virtual"\nmac = "58:cf:79:a1:b2:c3"\n', r"a virtual board's MAC is its own"),
        (
            'name = "lab"\nkind = "labgrid"\nchip = "esp32c3"\nmac = "58:cf:79:a1:b2:c3"\n'
            'network = { ssid = "lab", broker_host = "10.0.0.2" }\n[labgrid]\ntags = { board = "c3" }\n',
            r"pin a board by its place's tags and remove mac",
        ),
    ],
)
def test_a_bad_mac_is_refused_with_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RigConfigError, match=message):
        load_rig_file(write(tmp_path, text))
