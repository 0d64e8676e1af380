"""``hil sim fleet``: many provisioned boards' firmware in one process, against a real mosquitto.

The fleet runs as a child process in its own process group (as ``hil sim board`` does in
the other suites), reached only through its first stdout line, its control endpoint and
the broker; the test stops the whole group in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.device import contract
from hil.errors import is_infrastructure
from hil.load import fleet as load_fleet
from hil.load.errors import FleetBroken
from hil.rig.virtual_board import ControlClient
from hil.services.broker import OBSERVER_USER, MosquittoBroker
from hil.services.mqtt import MqttObserver, Received

FLEET_CONFIG = {"measurement_interval_s": 1}


class FleetProcess(load_fleet.FleetProcess):
    """``hil.load.fleet``'s fleet process (its own process group, always stopped), with a client
    of the fleet's control endpoint."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        super().__init__(args, log, count=int(args[list(args).index("--count") + 1]))
        self.control: ControlClient | None = None

    def __enter__(self) -> FleetProcess:
        self.start()
        self.control = ControlClient(self.hello["control"])
        return self

    def stop(self) -> int | None:
        if self.control is not None:
            self.control.close()
        return super().stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil", "sim", "fleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )


@contextlib.contextmanager
def fleet_broker(workdir: Path, count: int) -> Iterator[tuple[MosquittoBroker, Path]]:
    """A mosquitto with an account per fleet device, and the fleet's --credentials file."""
    broker = MosquittoBroker(workdir)
    creds = {}
    for index in range(count):
        account = broker.add_device(f"fleet-{index:04d}")
        creds[account.device_id] = {"username": account.username, "password": account.password.reveal()}
    credentials = workdir / "credentials.json"
    workdir.mkdir(parents=True, exist_ok=True)
    credentials.write_text(json.dumps(creds))
    broker.start()
    try:
        yield broker, credentials
    finally:
        broker.kill()


def fleet_args(broker: MosquittoBroker, credentials: Path, state_dir: Path, count: int) -> list[str]:
    return [
        "--count", str(count),
        "--state-dir", str(state_dir),
        "--broker-uri", broker.uri("plain"),
        "--credentials", str(credentials),
        "--config", json.dumps(FLEET_CONFIG),
    ]  # fmt: skip


def reading(message: Received) -> dict[str, Any]:
    data = message.json()
    assert isinstance(data, dict)
    problems = contract.validate_payload("sensors", data)
    assert not problems, f"{message.topic}: {problems}\n{data}"
    return data


# -- fast ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--count", "0"], "--count 0: give 1..10000 boards"),
        (["--broker-uri", "tcp://127.0.0.1:1883"], "is not mqtt://HOST:PORT"),
        (["--config", "{nope"], "--config '{nope': not valid JSON"),
        (["--config", '{"measurement_interval_s": 0}'], "measurement_interval_s"),
        (["--app", "no_such_recipe"], "no recipe 'no_such_recipe'"),
        (["--credentials", "{missing}"], "cannot read it"),
        (["--credentials", "{partial}"], "no entry for fleet-0001"),
        (["--credentials", "{bad_entry}"], 'fleet-0000 must be {"username"'),
        (["--processes", "two"], "--processes 'two': give a number of processes"),
        (["--processes", "2", "--credentials", "{partial}"], "no entry for fleet-0001"),  # checked before any shard
        (["--ota-pubkey", "{missing}"], "--ota-pubkey"),
        (["--ota-pubkey", "{partial}"], "no PEM public key in it"),
    ],
)
def test_bad_input_is_refused_before_anything_is_touched(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "partial.json").write_text(json.dumps({"fleet-0000": {"username": "u", "password": "p"}}))
    (tmp_path / "bad_entry.json").write_text(json.dumps({"fleet-0000": {"username": "u"}, "fleet-0001": {}}))
    files = {"{missing}": "missing.json", "{partial}": "partial.json", "{bad_entry}": "bad_entry.json"}
    args = [str(tmp_path / files[a]) if a in files else a for a in args]
    defaults = {"--count": "2", "--broker-uri": "mqtt://127.0.0.1:1883"}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    state = tmp_path / "fleet"
    result = run_cli("--state-dir", str(state), *args)
    assert result.returncode == 2, result
    assert result.stderr.startswith("hil sim fleet: ") and expected in result.stderr, result.stderr
    assert result.stdout == ""
    assert not state.exists()


def test_fleet_boards_are_separate_devices_behind_one_process(tmp_path: Path) -> None:
    with (
        fleet_broker(tmp_path / "broker", 3) as (broker, credentials),
        MqttObserver(
            "127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password, subscribe="esp32/#"
        ) as observer,
        FleetProcess(fleet_args(broker, credentials, tmp_path / "fleet", 3), tmp_path / "fleet.log") as fleet,
    ):
        ids = ["fleet-0000", "fleet-0001", "fleet-0002"]
        assert fleet.hello == {
            "pid": fleet.proc.pid if fleet.proc else None,
            "count": 3,
            "device_ids": ids,
            "state_dir": str((tmp_path / "fleet").resolve()),
            "control": fleet.hello["control"],
            "shards": [
                {
                    "name": "shard-0",
                    "pid": fleet.proc.pid if fleet.proc else None,
                    "first": "fleet-0000",
                    "last": "fleet-0002",
                    "count": 3,
                    "anon_before_boards": fleet.hello["shards"][0]["anon_before_boards"],
                }
            ],
        }
        assert fleet.hello["control"].startswith("tcp://127.0.0.1:")
        # The images every board shares are one read-only file; each board has its overlay.
        (base,) = (tmp_path / "fleet").glob("flash-base-*.bin")
        assert base.stat().st_size == 4 * 1024 * 1024 and base.stat().st_mode & 0o222 == 0
        for device in ids:
            assert (tmp_path / "fleet" / device / "flash.overlay").is_file()
            assert not (tmp_path / "fleet" / device / "flash.bin").exists()
            first = reading(observer.wait_for(contract.sensors_topic(device), timeout=20)[0])
            assert first["device_id"] == device and first["seq"] == 0 and first["boot_count"] == 1
        assert fleet.control is not None
        state = fleet.control.state()
        assert state == {"count": 3, "modes": {"app": 3}, "boards": state["boards"]}
        assert [(b["device_id"], b["mode"], b["boots"], b["reset_reason"], b["version"]) for b in state["boards"]] == [
            (device, "app", 1, "POWERON", "1.0.0") for device in ids
        ]

        # Each board has its own sensor: a board command goes to the one named by "device".
        fleet.control.request("sensor.set", device="fleet-0001", temperature_c=30.0)
        mark = observer.mark()
        warm = reading(observer.wait_for(contract.sensors_topic("fleet-0001"), since=mark, count=2, timeout=10)[1])
        other = reading(observer.wait_for(contract.sensors_topic("fleet-0000"), since=mark, count=2, timeout=10)[1])
        assert abs(warm["temperature_c"] - 30.0) <= contract.TEMPERATURE_ACCURACY_C
        assert abs(other["temperature_c"] - 22.0) <= contract.TEMPERATURE_ACCURACY_C
        with pytest.raises(Exception, match="no device 'fleet-0009'"):
            fleet.control.request("state", device="fleet-0009")
        with pytest.raises(Exception, match='need "device"'):
            fleet.control.request("power", action="off")

        # The boards' dirs are locked while the fleet runs: a second fleet is refused.
        second = run_cli(*fleet_args(broker, credentials, tmp_path / "fleet", 1))
        assert second.returncode == 2 and "is in use by pid" in second.stderr, second.stderr

        mark = observer.mark()
        assert fleet.stop() == 0
        # Stopped like unplugged boards: the broker announces every one of them offline.
        for device in ids:
            will = observer.wait_for(contract.status_topic(device), since=mark, timeout=40)[0]
            assert will.json() == {"state": "offline"}


SHARDED_SIZE = 20


def test_a_fleet_over_two_processes_has_one_face_and_a_dead_shard_breaks_it(tmp_path: Path) -> None:
    """Two shards behind one first line and one control endpoint; readings from both
    through one broker; a shard killed is named, as infrastructure, and the fleet stops."""
    ids = [f"fleet-{index:04d}" for index in range(SHARDED_SIZE)]
    with (
        fleet_broker(tmp_path / "broker", SHARDED_SIZE) as (broker, credentials),
        MqttObserver(
            "127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password, subscribe="esp32/+/sensors"
        ) as observer,
        FleetProcess(
            [*fleet_args(broker, credentials, tmp_path / "fleet", SHARDED_SIZE), "--processes", "2"], tmp_path / "fleet.log"
        ) as fleet,
    ):
        assert fleet.hello["count"] == SHARDED_SIZE and fleet.hello["device_ids"] == ids
        shards = fleet.shards
        assert [(s["name"], s["first"], s["last"], s["count"]) for s in shards] == [
            ("shard-0", "fleet-0000", "fleet-0009", 10),
            ("shard-1", "fleet-0010", "fleet-0019", 10),
        ]
        pids = fleet.pids()
        assert len(set(pids)) == 3 and pids[0] == fleet.pid  # the fleet process and two shards
        # One observer on the broker sees readings from both shards' devices.
        for device in ("fleet-0000", "fleet-0009", "fleet-0010", "fleet-0019"):
            reading(observer.wait_for(contract.sensors_topic(device), timeout=30)[0])
        assert fleet.control is not None
        state = fleet.control.state()
        assert state["count"] == SHARDED_SIZE and [b["device_id"] for b in state["boards"]] == ids
        assert [(s["name"], s["alive"]) for s in state["shards"]] == [("shard-0", True), ("shard-1", True)]
        # A board command reaches the shard that runs the board.
        fleet.control.request("sensor.set", device="fleet-0015", temperature_c=30.0)
        mark = observer.mark()
        warm = reading(observer.wait_for(contract.sensors_topic("fleet-0015"), since=mark, count=2, timeout=10)[1])
        assert abs(warm["temperature_c"] - 30.0) <= contract.TEMPERATURE_ACCURACY_C
        assert fleet.memory()["FlashPages"] > 0  # the boards' flash mappings are found in smaps

        broken: list[Exception] = []
        arrived = threading.Event()

        def on_broken(exc: FleetBroken) -> None:
            broken.append(exc)
            arrived.set()

        fleet.when_broken(on_broken)
        os.kill(int(shards[1]["pid"]), signal.SIGKILL)
        assert arrived.wait(30), (tmp_path / "fleet.log").read_text()[-3000:]
        assert isinstance(broken[0], FleetBroken) and is_infrastructure(broken[0])
        message = str(broken[0])
        assert "fleet shard shard-1" in message and "fleet-0010..fleet-0019" in message and "exit -9" in message
        assert fleet.proc is not None
        assert fleet.proc.wait(timeout=60) == 3  # the fleet stops itself: its other shard too
        with pytest.raises(ProcessLookupError):
            os.kill(int(shards[0]["pid"]), 0)
        assert "shard-1" in (tmp_path / "fleet.log").read_text()


# -- slow: the acceptance load ------------------------------------------------------------

FLEET_SIZE = 200
WINDOW_READINGS = 60  # at measurement_interval_s = 1: a 60 s window


class ReadingTracker:
    """A plain paho subscriber to ``esp32/+/sensors`` that keeps each board's readings.

    `MqttObserver.wait_for` rescans the whole record on every message, which is right for
    a handful of messages and quadratic for 200 boards at 1 Hz (it would fall behind the
    fleet it measures); this keeps per-board lists and waits on counts instead.
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        self.readings: dict[str, list[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-tracker-{os.getpid()}")
        self.client.username_pw_set(OBSERVER_USER, broker.observer_password.reveal())
        self.client.on_connect = lambda client, *_: client.subscribe("esp32/+/sensors", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.plain_port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError(f"tracker could not subscribe on 127.0.0.1:{broker.plain_port}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(message.payload)
            problems = contract.validate_payload("sensors", data)
            if problems or message.topic != contract.sensors_topic(data["device_id"]):
                raise ValueError(problems or "topic and device_id differ")
        except (ValueError, KeyError, TypeError) as exc:
            self.errors.append(f"{message.topic}: {exc}: {message.payload[:200]!r}")
            return
        with self._cond:
            self.readings.setdefault(data["device_id"], []).append(data)
            self._cond.notify_all()

    def counts(self, devices: Sequence[str]) -> dict[str, int]:
        with self._cond:
            return {device: len(self.readings.get(device, [])) for device in devices}

    def wait_counts(self, wanted: dict[str, int], *, timeout: float, what: str) -> None:
        """Wait until every board in ``wanted`` has at least that many readings."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                short = {d: len(self.readings.get(d, [])) for d, n in wanted.items() if len(self.readings.get(d, [])) < n}
                if not short:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    shown = dict(list(short.items())[:10])
                    raise AssertionError(f"waited {timeout} s for {what}; {len(short)} boards short, e.g. {shown}")
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def cpu_line(label: str, cpu: float, seconds: float) -> str:
    return f"{label}: {cpu:.1f} s CPU over {seconds:.1f} s ({100 * cpu / seconds:.0f} % of one core)"


@pytest.mark.slow
def test_200_boards_in_one_process_publish_for_60_s_without_a_gap(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    ids = [f"fleet-{index:04d}" for index in range(FLEET_SIZE)]
    with fleet_broker(tmp_path / "broker", FLEET_SIZE) as (broker, credentials):
        tracker = ReadingTracker(broker)
        try:
            started = time.monotonic()
            args = fleet_args(broker, credentials, tmp_path / "fleet", FLEET_SIZE)
            with FleetProcess(args, tmp_path / "fleet.log") as fleet:
                first_line = time.monotonic() - started
                tracker.wait_counts({d: 1 for d in ids}, timeout=60, what="a first reading from every board")
                all_up, cpu_up = time.monotonic() - started, fleet.cpu_seconds()

                window_start, cpu_start = time.monotonic(), fleet.cpu_seconds()
                before = tracker.counts(ids)
                tracker.wait_counts(
                    {d: n + WINDOW_READINGS for d, n in before.items()},
                    timeout=WINDOW_READINGS + 15,
                    what=f"{WINDOW_READINGS} more readings from every board",
                )
                window, cpu_window = time.monotonic() - window_start, fleet.cpu_seconds() - cpu_start
                after = tracker.counts(ids)
                cpu_total = fleet.cpu_seconds()
                assert fleet.control is not None
                state = fleet.control.state()
                assert fleet.stop() == 0, (tmp_path / "fleet.log").read_text()[-3000:]
        finally:
            tracker.close()

    assert tracker.errors == []
    assert state["modes"] == {"app": FLEET_SIZE}
    assert all(board["boots"] == 1 for board in state["boards"])
    for device in ids:
        readings = tracker.readings[device]
        seqs = [r["seq"] for r in readings]
        assert seqs == list(range(len(seqs))), f"{device}: seq has a gap or a repeat: {seqs}"
        assert {r["boot_count"] for r in readings} == {1}, f"{device} rebooted"

    counts = [after[d] - before[d] for d in ids]
    total = sum(after.values())
    record_property("measured", (
        f"fleet: {FLEET_SIZE} boards in one process (pid {fleet.hello['pid']}): first line after "
        f"{first_line:.1f} s, every board publishing after {all_up:.1f} s\n"
        + cpu_line("start-up (programming 200 flash files, boot, connect)", cpu_up, all_up)
        + "\n"
        + cpu_line("steady state", cpu_window, window)
        + f"; {sum(counts)} readings = {sum(counts) / window:.0f} msgs/s\n"
        f"fleet CPU in total: {cpu_total:.1f} s\n"
        f"readings per board in the window: min {min(counts)}, median {statistics.median(counts):g}, "
        f"max {max(counts)}; distribution {dict(sorted(Counter(counts).items()))}\n"
        f"all {total} readings: seq contiguous from 0 on every board, no reboot"
    ))  # fmt: skip
    # A reading per second per board: the window is as long as its readings say.
    assert window <= WINDOW_READINGS + 5
    assert max(counts) <= window + 2


# -- OTA at fleet scale (issue #17) -------------------------------------------------------
OTA_FLEET = 6
OTA_RATE = 64 * 1024  # bytes/s per download: ~1.4 s for the 90 KiB image
OTA_CUT = 20_000  # the first download is cut here: that device resumes with a Range request


def fleet_ota(tmp_path: Path, app: str | None = None) -> Any:
    """Every device of a small fleet offered the update at once (`hil.load.ota`)."""
    from hil.load.ota import run_fleet_ota
    from hil.load.target import LoadTarget

    with fleet_broker(tmp_path / "broker", OTA_FLEET) as (broker, _credentials):
        ids = [f"fleet-{index:04d}" for index in range(OTA_FLEET)]
        target = LoadTarget.direct(broker, ids)
        return run_fleet_ota(
            target, OTA_FLEET, workdir=tmp_path / "ota", app=app, bytes_per_s=OTA_RATE, cut_after=OTA_CUT, processes=1
        )


@pytest.mark.slow
def test_an_update_offered_to_a_whole_fleet_installs_and_confirms_on_every_device(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    result = fleet_ota(tmp_path)
    record_property("measured", result.summary())
    assert result.failures == {}, f"{len(result.failures)} devices did not install and confirm: {dict(result.failures)}"
    assert result.succeeded == OTA_FLEET
    # One download was cut: it resumed with Range (C6.4) instead of starting again.
    assert result.resumed >= 1, f"no download resumed with a Range request: {result.summary()}"
    assert result.requests == OTA_FLEET + result.resumed, result.summary()


def test_a_shards_first_line_naming_5000_devices_is_read_whole() -> None:
    """A shard's first line lists every device id it runs: 5000 are ~75 KiB, past asyncio's
    64 KiB line limit (a 10 000-device fleet over two shards failed to start on it)."""
    from hil.sim.fleet import Shard, device_ids
    from hil.sim.fleet_shards import RunningShard, spawn_shard

    ids = device_ids(10_000)
    hello = {
        "control": "tcp://127.0.0.1:9",
        "device_ids": list(ids[5000:]),
        "shards": [{"name": "shard-1", "pid": 0, "first": ids[5000], "last": ids[-1], "count": 5000}],
    }
    printer = [sys.executable, "-c", f"import sys; sys.stdout.write({json.dumps(hello)!r} + '\\n')"]

    async def first_line() -> dict[str, Any]:
        shard = RunningShard(Shard(1, 5000, 10_000), ids, await spawn_shard(printer))
        await shard.up()
        await shard.proc.wait()
        return shard.record

    assert len(json.dumps(hello)) > 64 * 1024
    assert asyncio.run(first_line())["count"] == 5000
