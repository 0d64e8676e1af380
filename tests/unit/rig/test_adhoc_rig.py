"""``--port`` / ``--target`` without a rig file (pytest-embedded's convention): the rig the
port makes, what a wrong one is told, and the session header's plan, read without
reserving anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.errors import UsageError
from hil.rig.reservation import reserve, who_holds
from hil.rig.selection import ADHOC_TAG, adhoc_name, adhoc_rig, check_target, select_rigs
from hil.session import SessionOptions, planned

ENV = {"HIL_WIFI_SSID": "lab-iot"}


def test_a_local_device_and_a_lab_port_make_rigs_named_after_them() -> None:
    local = adhoc_rig("/dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0", "esp32c3", ENV)
    assert (local.kind, local.chip, local.reset, local.power.kind, local.sensor.kind) == (
        "serial", "esp32c3", "classic", "none", "none",
    )  # fmt: skip
    assert local.name == "port-serial-by-id-usb-Silicon_Labs_CP2102N-if00-port0"
    assert local.network.ssid == "lab-iot" and local.tags == (ADHOC_TAG,) and not local.capabilities
    lab = adhoc_rig("rfc2217://lab-a.example:4003", None, ENV)
    assert (lab.kind, lab.name, lab.port) == ("rfc2217", "port-lab-a.example-4003", "rfc2217://lab-a.example:4003")
    assert adhoc_name("/dev/ttyUSB0") == "port-ttyUSB0"
    assert select_rigs([lab], name=lab.name) == [lab]


@pytest.mark.parametrize(
    ("port", "target", "env", "said"),
    [
        ("/dev/ttyUSB0", "esp32", ENV, "--target esp32: this framework tests esp32c3 boards only"),
        ("/dev/ttyUSB0", "esp32s3", ENV, "use --target esp32c3"),
        ("COM3", None, ENV, "--port COM3: give a local serial device"),
        ("socket://127.0.0.1:4000", None, ENV, "or a lab host's rfc2217://HOST:PORT"),
        ("rfc2217://lab-a.example", None, ENV, "--port rfc2217://lab-a.example: give"),
        ("/dev/ttyUSB0", None, {}, "set $HIL_WIFI_SSID"),
    ],
)
def test_what_no_board_can_be_is_a_usage_error(port: str, target: str | None, env: dict[str, str], said: str) -> None:
    with pytest.raises(UsageError, match=said.replace("$", r"\$").replace("(", r"\(")):
        adhoc_rig(port, target, env)


def test_the_target_is_the_c3_however_written() -> None:
    for target in ("esp32c3", "ESP32C3", "esp32-c3", None):
        check_target(target)


def test_two_sessions_on_one_port_exclude_each_other(lock_dir: Path) -> None:
    rig = adhoc_rig("/dev/ttyUSB0", "esp32c3", ENV)
    with reserve([rig], name=rig.name, lock_dir=lock_dir):
        holder = who_holds(rig, lock_dir=lock_dir)
        assert holder is not None
        with pytest.raises(Exception, match="every rig matching name 'port-ttyUSB0' is taken"):
            reserve([rig], name=rig.name, lock_dir=lock_dir)


def test_the_header_plans_rig_port_firmware_and_broker_without_reserving(
    inventory: Path, lock_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = SessionOptions(rigs_dir=inventory, log_dir=tmp_path / "logs", rig_name="bench-1")
    lines = planned(options)
    assert lines[0] == "rig: bench-1 (serial, esp32c3), port /dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0"
    assert lines[1].startswith("firmware: baseline ") and " (recipe), app sha256 " in lines[1]
    assert len(lines[1].rsplit(" ", 1)[1]) == 64
    assert lines[2].startswith("broker: embedded (") and "started by the session" in lines[2]
    assert not lock_dir.exists() or not any(lock_dir.iterdir())  # nothing reserved, nothing locked
    default = planned(SessionOptions(rigs_dir=inventory, log_dir=tmp_path / "logs"))
    assert default[0] == "rig: the first free of virtual-0, virtual-1 (virtual, esp32c3), port rfc2217://127.0.0.1:<of the board the session starts>"
    monkeypatch.setenv("HIL_WIFI_SSID", "lab-iot")
    adhoc = planned(SessionOptions(rigs_dir=inventory, log_dir=tmp_path / "logs", port="rfc2217://lab:4003",
                                   broker="mqtts://user:hunter2@staging:8883"))  # fmt: skip
    assert adhoc[0] == "rig: port-lab-4003 (rfc2217, esp32c3), port rfc2217://lab:4003"
    assert adhoc[2] == "broker: mqtts://staging:8883"  # a password in the URI is never printed
