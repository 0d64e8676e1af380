"""The bench library (hil.bench) without boards or brokers: input checks, state records,
secret handling, and the controls against fake backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hil.bench import broker, controls, flash, monitor, sim, state, target
from hil.bench.state import BenchError, BenchInputError, ProcessRecord
from hil.rig.backends import UhubctlPower, VirtualPower, VirtualSensor


# -- flash inputs ------------------------------------------------------------------------------
def test_flash_items_are_file_at_offset(tmp_path: Path) -> None:
    app = tmp_path / "app@v2.bin"  # an @ in the name: the offset is after the last one
    app.write_bytes(b"x")
    item = flash.parse_item(f"{app}@0x10000")
    assert item.offset == 0x10000 and item.path == app
    for bad, needle in [("app.bin", "FILE@OFFSET"), (f"{app}@zz", "not a number"), ("nope.bin@0x0", "does not exist")]:
        with pytest.raises(BenchInputError, match=needle):
            flash.parse_item(bad)


def test_exactly_one_source_of_firmware(tmp_path: Path) -> None:
    with pytest.raises(BenchInputError, match="one way"):
        flash.files_to_flash(None, None, [])
    with pytest.raises(BenchInputError, match="one way"):
        flash.files_to_flash("m.toml", "baseline", [])
    files, version = flash.files_to_flash(None, "baseline", [])
    assert [f.offset for f in files] == [0x0, 0x8000, 0xD000, 0x10000] and version
    assert all(f.path.is_file() for f in files)
    with pytest.raises(BenchInputError, match="no such file"):
        flash.files_to_flash(str(tmp_path / "m.toml"), None, [])


# -- provisioning ------------------------------------------------------------------------------
def test_secrets_come_from_env_or_files_and_are_never_described(tmp_path: Path) -> None:
    key = tmp_path / "wifi"
    key.write_text("from-a-file\n")
    request = flash.ProvisionRequest(
        device_id="d1",
        broker="mqtt://127.0.0.1:1883",
        wifi_ssid="lab",
        wifi_password=flash.SecretSource(None, key),
        mqtt_user="d1",
        mqtt_password=flash.SecretSource("MY_PW"),
    )
    prov, config, described = flash.provisioning(request, {"MY_PW": "from-the-env"})
    assert prov.wifi_pass == "from-a-file" and prov.mqtt_pass == "from-the-env" and config == {}
    text = "\n".join(described) + repr(prov)
    assert "from-a-file" not in text and "from-the-env" not in text
    assert "set from $MY_PW" in text and f"set from {key}" in text
    _, _, unset = flash.provisioning(request, {})
    assert any("mqtt password  not set" in line for line in unset)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"broker": None}, "--broker URI is required"),
        ({"broker": "http://x:1"}, "not mqtt://"),
        ({"broker": "mqtts://x:8883"}, "needs the broker's CA"),
        ({"config": "[1]"}, "JSON object"),
        ({"config": '{"measurement_interval_s": -3}'}, "provisioning"),
        ({"client_cert_file": "c.pem"}, "go together"),
        ({"bench_broker": "plain"}, "give --broker or --bench-broker"),
    ],
)
def test_bad_provisioning_is_refused(changes: dict[str, Any], needle: str) -> None:
    fields: dict[str, Any] = {"device_id": "d1", "broker": "mqtt://127.0.0.1:1883", **changes}
    with pytest.raises(BenchInputError, match=needle):
        flash.provisioning(flash.ProvisionRequest(**fields), {})


def test_provisioning_image_file_is_private(tmp_path: Path) -> None:
    from hil.device.settings import Provisioning

    out = flash.write_image(tmp_path / "nvs.bin", Provisioning("d1", mqtt_pass="pw"), {})
    assert out.stat().st_mode & 0o777 == 0o600 and out.stat().st_size == 0x4000


# -- state records --------------------------------------------------------------------------------
def test_a_process_is_named_by_pid_and_start_time() -> None:
    me = state.start_time(os.getpid())
    assert me is not None
    assert ProcessRecord(os.getpid(), me, "").alive()
    assert not ProcessRecord(os.getpid(), me + 1, "").alive()  # the pid, reused by another
    assert state.start_time(2**22 + 1) is None


def test_stop_terminates_a_detached_process_group(tmp_path: Path) -> None:
    code = "import json, time; print(json.dumps({'pid': 1}), flush=True); time.sleep(60)"
    record, hello = state.spawn_detached([sys.executable, "-c", code], tmp_path, "sleeper")
    assert hello == {"pid": 1} and record.alive()
    record.stop()
    assert not record.alive()
    record.stop()  # already gone: nothing happens


def test_a_process_that_fails_to_start_is_reported_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"exited with 1.*boom"):
        state.spawn_detached([sys.executable, "-c", "import sys; sys.exit('boom')"], tmp_path, "bad")
    with pytest.raises(BenchInputError, match="bad value"):
        state.spawn_detached([sys.executable, "-c", "import sys; print('x: bad value', file=sys.stderr); sys.exit(2)"], tmp_path, "bad2")


def dead_record(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(done.stdout)
    entry = {"process": {"pid": pid, "started": 1, "log": ""}, "name": "board-0", "serial": "rfc2217://127.0.0.1:9",
             "control": "tcp://127.0.0.1:9", "pid": pid, "mac": "58:cf:79:00:00:01", "state_dir": str(tmp_path)}  # fmt: skip
    state.write_record(tmp_path / sim.RECORD, {"kind": "boards", "items": [entry]})


def test_a_stale_record_is_seen_and_cleared(tmp_path: Path) -> None:
    dead_record(tmp_path)
    current = sim.status(tmp_path)
    assert current.kind == "boards" and not current.items[0]["alive"]
    with pytest.raises(BenchError, match="not running any more"):
        sim.find_board(tmp_path)
    sim._clear_stale(tmp_path)
    assert sim.status(tmp_path).kind is None


def test_find_board_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BenchInputError, match="hil sim up"):
        sim.find_board(tmp_path)
    dead_record(tmp_path)
    with pytest.raises(BenchInputError, match=r"board 0\.\.0"):
        sim.find_board(tmp_path, board=3)
    with pytest.raises(BenchInputError, match="--device names a fleet board"):
        sim.find_board(tmp_path, device="fleet-0000")


def test_a_corrupt_record_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / sim.RECORD).write_text("{")
    with pytest.raises(BenchError, match="corrupt"):
        sim.status(tmp_path)


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HIL_STATE_DIR", str(tmp_path / "env"))
    assert state.state_dir(tmp_path / "flag") == tmp_path / "flag"
    assert state.state_dir() == tmp_path / "env"
    monkeypatch.delenv("HIL_STATE_DIR")
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path / "cache"))
    assert state.state_dir() == tmp_path / "cache" / "bench"


def test_attach_hints_name_the_commands() -> None:
    entry = {"name": "board-1", "serial": "rfc2217://127.0.0.1:4000", "control": "tcp://127.0.0.1:4001"}
    hints = "\n".join(sim.attach_hints(entry, Path("/tmp/b")))
    assert "hil monitor --port rfc2217://127.0.0.1:4000" in hints and "esptool --port rfc2217://127.0.0.1:4000" in hints
    assert "hil sensor get --board 1 --state-dir /tmp/b" in hints


def test_broker_accounts() -> None:
    assert broker.accounts(["bench", "bench"], 2) == ["bench", "fleet-0000", "fleet-0001"]
    for bad in ("a/b", "", "x#", "hil-observer"):
        with pytest.raises(BenchInputError):
            broker.accounts([bad], 0)
    with pytest.raises(BenchInputError, match="fleet-accounts"):
        broker.accounts([], -1)


# -- controls against fakes ------------------------------------------------------------------------
class FakeControl:
    def __init__(self) -> None:
        self.sensor: dict[str, Any] = {"temperature_c": 22.0, "humidity_pct": 45.0, "pressure_hpa": 1013.25, "faults": []}
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.requests.append((cmd, fields))
        if cmd == "sensor.set":
            self.sensor.update(fields)
        elif cmd == "sensor.fault":
            self.sensor["faults"] = [] if fields["fault"] == "none" else [fields["fault"]]
        elif cmd == "state":
            return {"state": {"powered": True, "mode": "app"}}
        return {"sensor": dict(self.sensor)}


def test_sensor_set_changes_only_what_is_given() -> None:
    fake = FakeControl()
    values = controls.sensor_set(VirtualSensor(fake), pressure_hpa=990.0)
    assert values["pressure_hpa"] == 990.0 and values["temperature_c"] == 22.0 and values["humidity_pct"] == 45.0
    with pytest.raises(BenchInputError, match=r"300\.\.1100"):
        controls.sensor_set(VirtualSensor(fake), pressure_hpa=20.0)
    with pytest.raises(BenchInputError, match="at least one"):
        controls.sensor_set(VirtualSensor(fake))


def test_sensor_faults() -> None:
    fake = FakeControl()
    assert controls.sensor_fault(VirtualSensor(fake), "stuck")["faults"] == ["stuck"]
    assert controls.sensor_fault(VirtualSensor(fake), "none")["faults"] == []
    with pytest.raises(BenchInputError, match="bus_held_low"):
        controls.sensor_fault(VirtualSensor(fake), "smoke")


def test_a_reference_sensor_is_read_only() -> None:
    from hil.bme280.compensation import Environment

    class Reference:
        def get(self) -> Environment:
            return Environment(20.0, 40.0, 1000.0)

    assert controls.sensor_get(Reference())["temperature_c"] == 20.0
    with pytest.raises(BenchInputError, match="only 'get'"):
        controls.sensor_set(Reference(), temperature_c=25.0)


def test_power_actions() -> None:
    fake = FakeControl()
    assert controls.power(VirtualPower(fake), "cycle", off_s=0.1) == {"action": "cycle", "powered": True, "mode": "app"}
    assert ("power", {"action": "cycle", "off_s": 0.1}) in fake.requests
    with pytest.raises(BenchInputError):
        controls.power(VirtualPower(fake), "reboot")
    failing = UhubctlPower("1-1", 2, run=lambda args: subprocess.CompletedProcess(args, 1, "", "no hub"))
    with pytest.raises(BenchError, match="no hub"):
        controls.power(failing, "on")


# -- targets -----------------------------------------------------------------------------------------
def test_a_real_rig_gives_its_port_and_power_backend(tmp_path: Path) -> None:
    (tmp_path / "bench-1.toml").write_text(
        'name = "bench-1"\nkind = "serial"\nchip = "esp32c3"\nport = "/dev/ttyUSB7"\nreset = "classic"\n'
        'capabilities = ["power_control"]\n[power]\nkind = "uhubctl"\nhub = "1-1"\nport = 2\n'
        '[network]\nssid = "lab"\nbroker_host = "10.0.0.2"\n'
    )
    where = target.Target(state_dir=tmp_path, rig="bench-1", rigs_dir=tmp_path, lock_dir=tmp_path / "locks")
    with target.reserved(where) as rig:
        assert rig is not None and target.serial_port(where, rig) == "/dev/ttyUSB7"
        backend = target.power(where, rig)
        assert isinstance(backend, UhubctlPower) and (backend.hub, backend.port) == ("1-1", 2)
        with pytest.raises(BenchInputError, match="no sensor backend"):
            target.sensor(where, rig)
        with pytest.raises(BenchError, match="bench-1"):  # held: a second command is refused
            subprocess_reserve(where)


def subprocess_reserve(where: target.Target) -> None:
    code = (
        "import sys; from pathlib import Path; from hil.bench import target; "
        f"t = target.Target(state_dir=Path({str(where.state_dir)!r}), rig='bench-1', "
        f"rigs_dir=Path({str(where.rigs_dir)!r}), lock_dir=Path({str(where.lock_dir)!r}))\n"
        "try:\n    target.reserved(t).__enter__()\nexcept Exception as e:\n    sys.exit(str(e))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise BenchError(done.stderr)


def test_unknown_and_virtual_rigs_are_refused() -> None:
    root = Path(__file__).resolve().parents[3] / "rigs"
    with pytest.raises(BenchInputError, match="no such rig"):
        target.find_rig(target.Target(state_dir=Path("."), rig="nope", rigs_dir=root))
    with pytest.raises(BenchInputError, match="hil sim up"):
        target.find_rig(target.Target(state_dir=Path("."), rig="virtual-0", rigs_dir=root))


# -- monitor ------------------------------------------------------------------------------------------
def test_monitor_command_line(tmp_path: Path) -> None:
    elf = tmp_path / "app.elf"
    elf.write_bytes(b"\x7fELF")
    args = monitor.command(monitor.MonitorRequest("rfc2217://127.0.0.1:4000", elf=elf, no_reset=True))
    assert args[1:3] == ["-m", "esp_idf_monitor"] and "--no-reset" in args
    assert args[args.index("--port") + 1] == "rfc2217://127.0.0.1:4000" and args[args.index("--target") + 1] == "esp32c3"
    assert args[-3:] == ["--decode-panic", "backtrace", str(elf)]
    with pytest.raises(BenchInputError, match="no such file"):
        monitor.command(monitor.MonitorRequest("x", elf=tmp_path / "missing.elf"))
    with pytest.raises(BenchInputError, match="> 0"):
        monitor.command(monitor.MonitorRequest("x", timeout=0))


def test_records_round_trip(tmp_path: Path) -> None:
    state.write_record(tmp_path / "r.json", {"items": []})
    assert json.loads((tmp_path / "r.json").read_text()) == {"items": []}
    assert state.read_record(tmp_path / "missing.json") is None
