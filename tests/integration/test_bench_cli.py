"""The bench commands as a person runs them: ``python -m hil.cli ...`` in a subprocess, its exit
code and its output. One bench (a virtual board and a broker, started by ``hil sim up`` and
``hil broker up`` in a temp state dir, always brought down) serves the whole flow: flash,
provision for the bench broker, the device comes online, sensor and power change what it
does, the monitor shows its boot and quits on a signal."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil.bench.state import ProcessRecord
from hil.services.mqtt import MqttObserver

ROOT = Path(__file__).resolve().parents[2]
WIFI_PASSWORD = "hil-lab-password"  # the virtual AP's (hil.sim.firmware.rig.AccessPoint)


def hil(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- --help ----------------------------------------------------------------------------------
HELP = {
    ("sim", "up"): "the commands that reach it",
    ("sim", "down"): "--purge",
    ("sim", "status"): "hil sim status --json",
    ("flash",): "skipped",
    ("provision",): "never printed",
    ("monitor",): "--timeout",
    ("sensor",): "hil sensor fault nack",
    ("sensor", "get"): "hil sensor get --json",
    ("sensor", "set"): "hil sensor set --temperature",
    ("sensor", "fault"): "bus_held_low",
    ("power",): "hil power cycle",
    ("power", "on"): "Power the board.",
    ("power", "off"): "Cut the board's supply.",
    ("power", "cycle"): "--off-s",
    ("broker",): "mutual",
    ("broker", "up"): "credentials file",
    ("broker", "down"): "hil broker down",
    ("broker", "status"): "hil broker status --json",
    ("mqtt",): "hil mqtt watch --device bench-1",
    ("mqtt", "watch"): "never printed",
}


@pytest.mark.parametrize("command", list(HELP), ids=" ".join)
def test_help_teaches_with_an_example(command: tuple[str, ...]) -> None:
    result = hil(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "example:" in text and f"hil {' '.join(command)}" in text, text
    assert HELP[command] in text, text


# Every command of ``hil --help``, with what its summary line there says.
TOP_LEVEL = {
    "sim": "the virtual ESP32-C3 rig",
    "firmware": "firmware images for the virtual rig",
    "rigs": "who holds each reservation",
    "gate": "go / no-go",
    "report": "HTML report",
    "clauses": "clause matrix",
    "flash": "skip- unchanged",  # wrapped by argparse; whitespace is folded below
    "provision": "NVS provisioning image",
    "monitor": "esp-idf-monitor",
    "sensor": "BME280",
    "power": "on, off, cycle",
    "broker": "mutual TLS",
    "mqtt": "live and readable",
}


def test_top_level_help_lists_every_command_and_each_has_its_own_help() -> None:
    result = hil("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: hil "), result.stdout
    text = " ".join(result.stdout.split())
    assert "Hardware-in-the-loop testing for ESP32-C3 firmware" in text, text
    listed = result.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    # A command starts at column 4; its wrapped summary lines are indented deeper.
    commands = {line.split()[0] for line in listed.splitlines() if line[:4] == "    " and line[4:5].isalpha()}
    commands.discard("COMMAND")
    assert commands == set(TOP_LEVEL), f"hil --help lists {sorted(commands)}"
    for command, summary in TOP_LEVEL.items():
        assert f"{command} " in text and summary in text, (command, summary, text)
    # The bench groups' --help is pinned in HELP above; gate and rigs in test_gate_and_rigs_cli.
    for command in ("firmware", "report"):
        sub = hil(command, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: hil {command}"), sub.stderr


def test_no_command_is_a_usage_error_naming_what_is_missing() -> None:
    result = hil()
    assert result.returncode == 2 and result.stdout == ""
    assert "usage: hil" in result.stderr and "required: COMMAND" in result.stderr, result.stderr


# -- bad input: one line, exit 2, nothing started ----------------------------------------------
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    try:
        refused_before_anything_starts(tmp_path)
    finally:  # should a check fail by starting something, it is not left running
        hil("sim", "down", "--state-dir", str(tmp_path))
        hil("broker", "down", "--state-dir", str(tmp_path))


def refused_before_anything_starts(tmp_path: Path) -> None:
    sd = ["--state-dir", str(tmp_path)]
    one_line_error(hil("flash", *sd), "--manifest", "--recipe", "FILE@OFFSET")
    one_line_error(hil("flash", str(tmp_path / "app.bin") + "@0x10000", *sd), "does not exist")
    (tmp_path / "app.bin").write_bytes(b"\xe9" * 64)
    one_line_error(hil("flash", str(tmp_path / "app.bin") + "@ten", *sd), "not a number")
    one_line_error(hil("flash", "--recipe", "no_such_recipe", *sd), "no_such_recipe")
    one_line_error(hil("flash", "--recipe", "baseline", *sd), "no virtual board is up", "hil sim up")
    one_line_error(hil("sensor", "get", *sd), "no virtual board is up")
    one_line_error(hil("power", "cycle", *sd), "no virtual board is up")
    one_line_error(hil("monitor", *sd), "no virtual board is up")
    control = ["--control", "tcp://127.0.0.1:9"]  # never contacted: the input is refused first
    one_line_error(hil("sensor", "set", "--temperature", "200", *control), "temperature_c", "-40..85")
    one_line_error(hil("sensor", "set", *control), "--temperature")
    one_line_error(hil("sensor", "fault", "smoke", *control), "smoke", "nack")
    one_line_error(hil("monitor", "--port", "rfc2217://127.0.0.1:9", "--elf", "missing.elf"), "missing.elf")
    one_line_error(hil("sim", "up", "--count", "0", *sd), "--count 0")
    one_line_error(hil("sim", "up", "--fleet", "2", *sd), "hil broker up --fleet-accounts 2")
    one_line_error(hil("sim", "up", "--fleet", "2", "--broker-uri", "http://x", *sd), "http://x")
    one_line_error(hil("broker", "up", "--device", "a/b", *sd), "a/b")
    one_line_error(hil("provision", "--device-id", "d1", "--broker", "tcp://x:1", "--out", "x", *sd), "tcp://x:1")
    one_line_error(hil("provision", "--device-id", "d1", "--bench-broker", *sd), "no broker is up")
    one_line_error(hil("flash", "--recipe", "baseline", "--rig", "virtual-0", *sd), "virtual rig has no fixed port")
    one_line_error(hil("power", "on", "--rig", "bench-9", *sd), "bench-9")
    one_line_error(hil("mqtt", "watch", "--device", "bench-1", *sd), "no login", "hil broker up")
    one_line_error(hil("mqtt", "watch", "--device", "a/b", *sd), "a/b")
    one_line_error(hil("mqtt", "watch", "--credentials", str(tmp_path / "none"), *sd), "none")
    assert not (tmp_path / "sim.json").exists() and not (tmp_path / "broker.json").exists()


def test_status_and_down_with_nothing_up(tmp_path: Path) -> None:
    for group in ("sim", "broker"):
        status = hil(group, "status", "--state-dir", str(tmp_path))
        assert status.returncode == 0 and "no " in status.stdout, status.stdout
        down = hil(group, "down", "--state-dir", str(tmp_path))
        assert down.returncode == 0 and "no" in down.stdout, down.stdout


def test_provision_to_a_file_never_echoes_secrets(tmp_path: Path) -> None:
    from hil.images.nvs_reader import read_nvs

    secret_file = tmp_path / "wifi.txt"
    secret_file.write_text("wifi-s3cret-value\n")
    out = tmp_path / "nvs.bin"
    result = hil(
        "provision", "--device-id", "env-7", "--broker", "mqtt://10.0.0.2:1883", "--mqtt-user", "env-7",
        "--wifi-ssid", "lab", "--wifi-password-file", str(secret_file), "--out", str(out),
        env={"HIL_MQTT_PASSWORD": "mqtt-s3cret-value"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert "s3cret" not in text and "set from $HIL_MQTT_PASSWORD" in text and f"set from {secret_file}" in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    device = read_nvs(out.read_bytes())["device"]
    assert device["device_id"] == "env-7" and device["mqtt_pass"] == "mqtt-s3cret-value"
    assert device["wifi_pass"] == "wifi-s3cret-value"


# -- the bench --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, object]]]:
    """A virtual board (hil sim up) and a broker (hil broker up), always brought down."""
    state = tmp_path_factory.mktemp("bench")
    try:
        up = hil("sim", "up", "--json", "--state-dir", str(state))
        assert up.returncode == 0, up.stderr
        broker = hil("broker", "up", "--device", "bench-1", "--json", "--state-dir", str(state))
        assert broker.returncode == 0, broker.stderr
        yield state, {"sim": json.loads(up.stdout), "broker": json.loads(broker.stdout)}
    finally:
        hil("sim", "down", "--state-dir", str(state))
        hil("broker", "down", "--state-dir", str(state))


def observer(broker: dict[str, object]) -> MqttObserver:
    creds = json.loads(Path(str(broker["credentials_file"])).read_text())
    port = int(str(broker["urls"]["plain"]).rsplit(":", 1)[1])  # type: ignore[index]
    return MqttObserver("127.0.0.1", port, username="hil-observer", password=creds["hil-observer"]["password"])


def test_sim_up_status_and_a_second_up(bench: tuple[Path, dict[str, object]]) -> None:
    state, info = bench
    board = info["sim"]["items"][0]  # type: ignore[index]
    assert board["serial"].startswith("rfc2217://127.0.0.1:") and board["control"].startswith("tcp://127.0.0.1:")
    assert board["alive"] and ProcessRecord(**board["process"]).alive()
    status = hil("sim", "status", "--state-dir", str(state))
    assert status.returncode == 0 and "running" in status.stdout
    assert f"hil monitor --port {board['serial']}" in status.stdout and "esptool --port" in status.stdout
    again = hil("sim", "up", "--state-dir", str(state))
    one_line_error(again, "already runs", "hil sim down")


def test_broker_up_prints_urls_and_files_not_secrets(bench: tuple[Path, dict[str, object]]) -> None:
    state, info = bench
    broker = info["broker"]
    assert broker["running"] and set(broker["urls"]) >= {"plain", "tls"}  # type: ignore[call-overload]
    assert all("127.0.0.1" in url for url in broker["urls"].values())  # type: ignore[attr-defined]
    creds_file = Path(str(broker["credentials_file"]))
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    assert set(creds) == {"hil-observer", "bench-1"}
    shown = hil("broker", "status", "--state-dir", str(state))
    assert shown.returncode == 0 and str(creds_file) in shown.stdout and str(broker["ca_file"]) in shown.stdout
    assert creds["bench-1"]["password"] not in shown.stdout and creds["hil-observer"]["password"] not in shown.stdout


def test_broker_up_keeps_its_secrets_0600_and_logs_connections_not_messages(
    bench: tuple[Path, dict[str, object]],
) -> None:
    from tests.integration.test_secret_files import secret_files

    state, info = bench
    broker = info["broker"]
    creds = json.loads(Path(str(broker["credentials_file"])).read_text())
    passwords = [account["password"] for account in creds.values()]
    found = dict(secret_files(state / "broker", passwords))
    assert {p.name for p in found} >= {"credentials.json", "bench-1.key", "server.key", "passwd"}, found
    assert {str(p): oct(mode) for p, mode in found.items() if mode != 0o600} == {}
    watcher = observer(broker)  # type: ignore[arg-type]
    try:
        for n in range(20):
            watcher.publish(f"hil/bench-log/{n}", b"payload-that-stays-out-of-the-log")
        watcher.sync()
    finally:
        watcher.close()
    log = Path(str(broker["log"])).read_text()
    assert "New client connected" in log  # connections are logged
    assert "PUBLISH" not in log and "payload-that-stays-out" not in log  # messages are not


@pytest.fixture(scope="module")
def online(bench: tuple[Path, dict[str, object]]) -> tuple[Path, dict[str, object]]:
    """The board flashed with the baseline, provisioned for the bench broker, online."""
    state, info = bench
    sd = ["--state-dir", str(state)]
    first = hil("flash", "--recipe", "baseline", *sd)
    assert first.returncode == 0, first.stderr
    assert "written" in first.stdout and "verified by MD5" in first.stdout
    watcher = observer(info["broker"])  # type: ignore[arg-type]
    try:
        mark = watcher.mark()
        prov = hil(
            "provision", "--device-id", "bench-1", "--bench-broker", "--wifi-ssid", "hil-lab",
            "--config", '{"measurement_interval_s": 1}', *sd, env={"HIL_WIFI_PASSWORD": WIFI_PASSWORD},
        )  # fmt: skip
        assert prov.returncode == 0, prov.stderr
        creds = json.loads(Path(str(info["broker"]["credentials_file"])).read_text())  # type: ignore[index]
        for secret in (WIFI_PASSWORD, creds["bench-1"]["password"]):
            assert secret not in prov.stdout + prov.stderr
        watcher.wait_for(
            "esp32/bench-1/status", lambda m: m.json().get("state") == "online", since=mark, timeout=60
        )
    finally:
        watcher.close()
    return bench


def test_flash_again_skips_what_is_unchanged(online: tuple[Path, dict[str, object]]) -> None:
    state, _ = online
    again = hil("flash", "--recipe", "baseline", "--json", "--state-dir", str(state))
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["verified"] and all(f["skipped"] for f in report["files"]), report


def test_sensor_set_fault_and_get(online: tuple[Path, dict[str, object]]) -> None:
    state, info = online
    sd = ["--state-dir", str(state)]
    watcher = observer(info["broker"])  # type: ignore[arg-type]
    try:
        changed = hil("sensor", "set", "--temperature", "31.5", "--humidity", "55", *sd)
        assert changed.returncode == 0 and "31.50 °C" in changed.stdout, changed.stderr
        mark = watcher.mark()
        watcher.wait_for(
            "esp32/bench-1/sensors", lambda m: abs(m.json()["temperature_c"] - 31.5) < 1.0, since=mark, timeout=20
        )
    finally:
        watcher.close()
    faulted = hil("sensor", "fault", "nack", *sd)
    assert faulted.returncode == 0 and "faults: nack" in faulted.stdout
    got = hil("sensor", "get", "--json", *sd)
    values = json.loads(got.stdout)
    assert values["faults"] == ["nack"] and values["humidity_pct"] == 55.0
    cleared = hil("sensor", "fault", "none", *sd)
    assert cleared.returncode == 0 and "faults: none" in cleared.stdout


def test_mqtt_watch_shows_the_next_reading_after_a_sensor_set(online: tuple[Path, dict[str, object]]) -> None:
    """`hil mqtt watch --device bench-1` in a terminal (a pty, as in tmux): readable lines,
    the retained status marked, the login found from the bench state and never printed;
    after `hil sensor set` the new value shows at the next reading (interval 1 s here);
    Ctrl-C (SIGINT) ends it cleanly."""
    import pty
    import re
    import select
    import time

    state, info = online
    sd = ["--state-dir", str(state)]
    reading = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  bench-1\s+sensors\s+.*temperature_c=(?P<t>-?[\d.]+)")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "mqtt", "watch", "--device", "bench-1", *sd],
        cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    lines: list[tuple[float, str]] = []  # (when it arrived, the line)
    pending = b""

    def until(found: Callable[[str], object], timeout: float, since: int = 0) -> float:
        """When the first line since ``since`` for which ``found`` holds arrived."""
        nonlocal pending
        deadline = time.monotonic() + timeout
        while True:
            for at, line in lines[since:]:
                if found(line):
                    return at
            since = len(lines)
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, "\n".join(line for _, line in lines)[-3000:]
            if select.select([master], [], [], min(left, 0.5))[0]:
                pending += os.read(master, 65536)
                *complete, pending = pending.split(b"\n")
                lines.extend((time.monotonic(), raw.decode(errors="replace").rstrip("\r")) for raw in complete)

    try:
        until(lambda line: "hil mqtt watch: esp32/bench-1/# on mqtt://127.0.0.1:" in line, timeout=30)
        until(re.compile(r"  bench-1\s+status\s+\[retained\] state=online").search, timeout=30)
        until(reading.search, timeout=30)

        def new_value(line: str) -> bool:
            match = reading.search(line)
            return match is not None and abs(float(match["t"]) - 33.3) < 1.0

        changed = hil("sensor", "set", "--temperature", "33.3", *sd)
        assert changed.returncode == 0, changed.stderr
        set_at, mark = time.monotonic(), len(lines)
        shown_at = until(new_value, timeout=20, since=mark)
        # At the next reading: within one measurement interval (1 s), with room for a busy host.
        assert shown_at - set_at < 1.0 + 2.0, (shown_at - set_at, [text for _, text in lines[mark:]])
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=15) == 0, "\n".join(text for _, text in lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    creds = json.loads(Path(str(info["broker"]["credentials_file"])).read_text())  # type: ignore[index]
    shown = "\n".join(text for _, text in lines)
    assert creds["hil-observer"]["password"] not in shown and "Traceback" not in shown, shown


def test_power_off_on_and_cycle(online: tuple[Path, dict[str, object]]) -> None:
    state, _ = online
    sd = ["--state-dir", str(state)]
    off = hil("power", "off", "--json", *sd)
    assert off.returncode == 0 and json.loads(off.stdout) == {"action": "off", "powered": False, "mode": "off"}
    on = hil("power", "on", *sd)
    assert on.returncode == 0 and on.stdout.strip() == "power on: the board is powered on", on.stdout
    cycle = hil("power", "cycle", "--off-s", "0.2", *sd)
    assert cycle.returncode == 0 and cycle.stdout.startswith("power cycle"), cycle.stderr


def test_monitor_shows_the_boot_after_its_reset(online: tuple[Path, dict[str, object]]) -> None:
    state, _ = online
    result = hil("monitor", "--timeout", "6", "--state-dir", str(state), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rst:0x1 (POWERON)" in result.stdout, result.stdout[-3000:]
    assert "App version" in result.stdout or "app_init" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_monitor_quits_on_a_signal(online: tuple[Path, dict[str, object]], sig: signal.Signals) -> None:
    state, _ = online
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "monitor", "--no-reset", "--state-dir", str(state)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        started = threading.Event()

        def read() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                seen.append(line)
                if "non-interactive mode" in line:
                    started.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert started.wait(30), "".join(seen)
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_monitor_in_a_terminal_is_esp_idf_monitor(online: tuple[Path, dict[str, object]]) -> None:
    """In a terminal, hil monitor becomes esp-idf-monitor: its keys work (Ctrl+] quits)."""
    import pty
    import select
    import time

    state, _ = online
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "monitor", "--state-dir", str(state)],
        cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the monitor closed the terminal: it has quit
                    break
            if b"rst:0x1 (POWERON)" in seen:
                os.write(master, b"\x1d")  # Ctrl+]; again each turn, in case the first came before raw mode
        assert proc.wait(timeout=10) == 0, seen.decode(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "Quit: Ctrl+]" in text and "rst:0x1 (POWERON)" in text, text[-2000:]


def test_down_stops_everything_and_cleans_up(tmp_path: Path) -> None:
    sd = ["--state-dir", str(tmp_path)]
    try:
        up = hil("sim", "up", "--count", "2", "--json", *sd)
        assert up.returncode == 0, up.stderr
        broker = hil("broker", "up", "--json", *sd)
        assert broker.returncode == 0, broker.stderr
        boards = [ProcessRecord(**item["process"]) for item in json.loads(up.stdout)["items"]]
        assert len(boards) == 2 and all(b.alive() for b in boards)
        status = hil("sim", "status", "--json", *sd)
        assert [i["name"] for i in json.loads(status.stdout)["items"]] == ["board-0", "board-1"]
    finally:
        down = hil("sim", "down", "--purge", *sd)
        broker_down = hil("broker", "down", *sd)
    assert down.returncode == 0 and "board-0" in down.stdout and "board-1" in down.stdout
    assert broker_down.returncode == 0 and "stopped" in broker_down.stdout
    assert not any(b.alive() for b in boards)
    assert not (tmp_path / "sim.json").exists() and not (tmp_path / "boards").exists()
    assert not (tmp_path / "broker").exists()  # keys and passwords of the run: gone
    assert "not running" not in hil("sim", "status", *sd).stdout


def test_monitor_passes_a_panic_through(tmp_path: Path) -> None:
    """No ELF exists for the virtual rig's apps (built from recipes, not compiled), so a
    backtrace cannot be decoded here: the panic and its register dump pass through."""
    sd = ["--state-dir", str(tmp_path)]
    try:
        assert hil("sim", "up", *sd).returncode == 0
        flashed = hil("flash", "--recipe", "crash_on_boot", "--no-reset", *sd)
        assert flashed.returncode == 0, flashed.stderr
        result = hil("monitor", "--timeout", "5", *sd, timeout=60)
    finally:
        hil("sim", "down", "--purge", *sd)
    assert result.returncode == 0, result.stderr
    assert "Guru Meditation Error: Core  0 panic'ed" in result.stdout, result.stdout[-3000:]
    assert "MEPC    : 0x" in result.stdout and "Rebooting..." in result.stdout


def test_a_fleet_on_the_bench_broker(tmp_path: Path) -> None:
    """hil broker up --fleet-accounts N, then hil sim up --fleet N: the fleet is provisioned
    with the bench broker's URI and accounts, and its boards come online there."""
    sd = ["--state-dir", str(tmp_path)]
    try:
        broker = hil("broker", "up", "--fleet-accounts", "2", "--json", *sd)
        assert broker.returncode == 0, broker.stderr
        info = json.loads(broker.stdout)
        watcher = observer(info)
        try:
            up = hil("sim", "up", "--fleet", "2", *sd)
            assert up.returncode == 0, up.stderr
            assert "fleet of 2" in up.stdout and "--device fleet-0000" in up.stdout
            for device in ("fleet-0000", "fleet-0001"):
                watcher.wait_for(f"esp32/{device}/status", lambda m: m.json().get("state") == "online", timeout=60)
        finally:
            watcher.close()
        got = hil("sensor", "get", "--device", "fleet-0001", "--json", *sd)
        assert got.returncode == 0 and json.loads(got.stdout)["faults"] == [], got.stderr
        off = hil("power", "off", "--device", "fleet-0001", "--json", *sd)
        assert off.returncode == 0 and json.loads(off.stdout)["powered"] is False
        one_line_error(hil("sensor", "get", *sd), "--device")
        one_line_error(hil("monitor", "--device", "fleet-0000", *sd), "no serial port")
    finally:
        hil("sim", "down", "--purge", *sd)
        hil("broker", "down", *sd)
