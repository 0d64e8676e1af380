"""``pytest -n 2`` over virtual rigs (issue 4's acceptance): with two rigs each xdist
worker holds its own and both pass; with one, the second worker's rig tests skip with
'no rig available', naming who holds it, and the rig is never shared.

Both runs are real pytest processes on the smoke suite, each with its own lock dir and
inventory; they share one firmware cache (built once) so the pair stays under a minute.
What each worker held is read from its session record (``<log dir>/<worker>/session-*.json``),
what it ran from pytest's verbose lines (``[gw0] PASSED ...``)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SMOKE = "tests/hil/test_smoke.py"
ONLINE = f"{SMOKE}::test_the_device_is_online_and_says_which_firmware_it_runs"
READING = f"{SMOKE}::test_a_reading_matches_the_sensor_environment"
OUTCOME = re.compile(r"^\[(gw\d+)\] \[\s*\d+%\] (PASSED|FAILED|SKIPPED|ERROR) (\S+)", re.M)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_workers(
    tmp_path: Path, cache: Path, pool: str, count: int, *args: str, rigs: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    rigs = rigs or tmp_path / "rigs"
    rigs.mkdir(exist_ok=True)
    (rigs / "pool.toml").write_text(f'name = "{pool}"\nkind = "virtual"\ncount = {count}\ntags = ["virtual"]\n')
    logs = tmp_path / "logs"
    env = {**os.environ, "HIL_CACHE_DIR": str(cache), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    env.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run under xdist
    cmd = [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-v", "-rs",
           "--rigs-dir", str(rigs), "--hil-log-dir", str(logs), *args]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    print(f"pytest -n 2 on a pool of {count}: {time.monotonic() - started:.1f} s")
    return result, logs


def outcomes(stdout: str) -> dict[str, list[tuple[str, str]]]:
    """Per worker: (outcome, test id) of every test it ran."""
    by_worker: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for worker, outcome, test in OUTCOME.findall(stdout):
        by_worker[worker].append((outcome, test))
    return dict(by_worker)


def records(logs: Path) -> dict[str, dict[str, str]]:
    """Per worker: its session record (what it ran on)."""
    found = {}
    for worker in sorted(p for p in logs.iterdir() if p.is_dir()):
        files = list(worker.glob("session-*.json"))
        assert len(files) == 1, f"{worker}: {files}"
        found[worker.name] = json.loads(files[0].read_text())
    return found


def test_two_rigs_two_workers_each_on_its_own_rig_both_pass(tmp_path: Path, cache_dir: Path) -> None:
    # The whole smoke suite, load-balanced as `pytest -n 2` does; each worker gets tests.
    result, logs = run_workers(tmp_path, cache_dir, "duo", 2, SMOKE)
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    ran = outcomes(result.stdout)
    assert set(ran) == {"gw0", "gw1"}, output  # both workers ran smoke tests ...
    assert all(outcome == "PASSED" for tests in ran.values() for outcome, _ in tests), ran  # ... and passed
    held = records(logs)
    assert set(held) == {"gw0", "gw1"}, held
    assert {record["rig"] for record in held.values()} == {"duo-0", "duo-1"}, held  # a rig each, different
    assert {record["device_id"] for record in held.values()} == {"hil-duo-0", "hil-duo-1"}, held
    # which broker, as `hil gate` names it ("mosquitto 2.0.11, embedded")
    assert all(r["broker_name"] in ("mosquitto", "amqtt") and r["broker_version"] != "unknown" for r in held.values()), held


def test_one_rig_two_workers_the_second_skips_saying_no_rig_is_available(tmp_path: Path, cache_dir: Path) -> None:
    # --dist each: both workers run both tests, so both need the rig at the same time.
    result, logs = run_workers(tmp_path, cache_dir, "solo", 1, "--dist", "each", ONLINE, READING)
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    ran = outcomes(result.stdout)
    assert set(ran) == {"gw0", "gw1"}, output
    verdicts = {worker: {outcome for outcome, _ in tests} for worker, tests in ran.items()}
    holder = next(worker for worker, seen in verdicts.items() if seen == {"PASSED"})
    other = next(worker for worker in verdicts if worker != holder)
    assert verdicts[other] == {"SKIPPED"}, verdicts  # never both on one rig: the other skipped all
    assert len(ran[holder]) == len(ran[other]) == 2, ran
    # The reason is clear: no rig available, which rig and which worker holds it.
    reasons = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(reasons) == 2 and all("no rig available" in line for line in reasons), output
    assert re.search(rf"solo-0 held by pid \d+ on .*xdist worker {holder}", result.stdout), output
    held = records(logs)
    assert held[holder]["rig"] == "solo-0", held
    assert "rig" not in held[other], held  # the skipping worker reserved nothing
    # One board was started and flashed (only the holder's console log exists).
    assert [p.parent.parent.name for p in logs.rglob("console.log")] == [holder], list(logs.rglob("console.log"))


def test_a_rig_whose_port_is_dead_is_taken_out_and_the_other_rig_goes_on(tmp_path: Path, cache_dir: Path) -> None:
    """Issue 7: a rig whose infrastructure fails leaves the run with one clear report;
    the other worker's rig runs its tests to the end."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there: a lab host whose ser2net is down
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "dead.toml").write_text(
        f'name = "dead"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://127.0.0.1:{dead_port}"\n'
        'reset = "classic"\nnetwork = { ssid = "lab-iot", broker_host = "127.0.0.1" }\ntags = ["virtual"]\n'
    )
    result, logs = run_workers(tmp_path, cache_dir, "good", 1, "--dist", "each", "--rig-tag", "virtual", ONLINE,
                               rigs=rigs)  # fmt: skip
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 1, output  # errors: the run is not green, and says why
    ran = outcomes(result.stdout)
    assert sorted(outcome for tests in ran.values() for outcome, _ in tests) == ["ERROR", "PASSED"], output
    held = records(logs)
    passed = next(worker for worker, tests in ran.items() if tests[0][0] == "PASSED")
    assert held[passed]["rig"] == "good-0", held
    section = result.stdout.split("rigs taken out of this run (infrastructure)", 1)
    assert len(section) == 2, output
    assert re.search(r"rig dead taken out of this run: \w+", section[1]), section[1][:2000]
    assert f"127.0.0.1:{dead_port}" in section[1], section[1][:2000]
