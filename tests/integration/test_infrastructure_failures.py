"""Infrastructure that dies during a test is not a product failure (ARCHITECTURE.md rule 4).

Planted tests on a virtual rig SIGKILL the board process, or mosquitto, and then wait on
MQTT as a suite would: the test is *broken* (an error in JUnit, ERROR on the terminal),
the terminal names the rig taken out and what died, the next test on that rig is broken
at once instead of waiting on a dead rig, the meta-suite's reading says broken (never
caught), and ``hil gate`` re-runs the broken tests (which pass once nothing is killed).
An observer that cannot connect is covered in tests/unit/test_errors.py (no rig needed).

Each run is a real pytest process with its own lock dir and rig inventory; the two share
one firmware cache (built once)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from hil.reporting.gate import GateProfile, Thresholds, run_gate
from tests.meta.outcomes import junit_outcomes, verdict

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 150

# Kills what ``VICTIM`` names once (a marker file beside the test), then waits for three
# fresh readings as a suite would; the next test only needs a live rig.
PLANTED = '''
import os
import signal
import time
from pathlib import Path

from hil.device import contract

KILLED = Path(__file__).with_name("killed")


def test_readings_while_the_rig_dies(dut, mqtt, hil_session, broker):
    topic = contract.sensors_topic(dut.device_id)
    mqtt.wait_for(topic, since=mqtt.mark(), timeout=15)  # alive before
    if not KILLED.exists():
        # An outside kill, as the OOM killer or a crash would do it.
        pid = hil_session.board.endpoints.pid if VICTIM == "board" else broker._proc.pid
        KILLED.write_text(str(time.time()))
        os.kill(pid, signal.SIGKILL)
    mqtt.wait_for(topic, since=mqtt.mark(), count=3, timeout=10)


def test_the_next_one(dut, mqtt):
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), timeout=15)
'''

# When each call's verdict was made, to measure the time from the kill to it.
CONFTEST = '''
import time
from pathlib import Path


def pytest_runtest_logreport(report):
    if report.when == "call" and report.failed:
        with Path(__file__).with_name("verdicts").open("a") as f:
            f.write(f"{report.nodeid} {time.time()}\\n")
'''


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def plant(tmp_path: Path, victim: str) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "test_planted.py").write_text(f"VICTIM = {victim!r}\n{PLANTED}")
    (work / "conftest.py").write_text(CONFTEST)
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "pool.toml").write_text('name = "doomed"\nkind = "virtual"\ncount = 1\ntags = ["virtual"]\n')
    return work


def runner(tmp_path: Path, cache: Path, work: Path, log: list[str]):
    """Runs pytest as ``hil gate`` does, in the planted directory with this repository's
    plugin (the planted tests are outside it, so its conftest.py does not load)."""

    def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
        environ = {**env, "PYTHONPATH": str(ROOT), "HIL_CACHE_DIR": str(cache), "HIL_LOCK_DIR": str(tmp_path / "locks")}
        environ.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run under xdist
        cmd = [sys.executable, "-m", "pytest", f"--rootdir={work}",
               f"--rigs-dir={tmp_path / 'rigs'}", *argv]  # fmt: skip
        result = subprocess.run(
            cmd, cwd=work, env=environ, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
        log.append(result.stdout + result.stderr)
        return result.returncode

    return run


def kill_to_verdict_s(work: Path) -> float:
    killed = float((work / "killed").read_text())
    verdicts = dict(line.split() for line in (work / "verdicts").read_text().splitlines())
    return float(verdicts["test_planted.py::test_readings_while_the_rig_dies"]) - killed


def check_broken_run(junit: Path, output: str, what_died: str) -> None:
    cases = {case.get("name"): case for case in ET.parse(junit).iter("testcase")}
    for name in ("test_readings_while_the_rig_dies", "test_the_next_one"):
        tags = [child.tag for child in cases[name] if child.tag in ("error", "failure")]
        assert tags == ["error"], (name, tags, output[-4000:])
        props = {p.get("name"): p.get("value") for p in cases[name].iter("property")}
        assert props.get("hil_outcome") == "broken", props
        assert "rig doomed-0 taken out of this run" in props.get("hil_rig_taken_out", ""), props
    # the terminal: errors, not failures, and one section naming the rig and what died
    assert "ERROR at call of test_readings_while_the_rig_dies" in output, output[-4000:]
    assert " failed" not in output.splitlines()[-1], output.splitlines()[-1]
    section = output.split("rigs taken out of this run (infrastructure)", 1)
    assert len(section) == 2, output[-4000:]
    assert re.search(f"rig doomed-0 taken out of this run: {what_died} was killed by SIGKILL", section[1]), section[1][:2000]
    assert "the test saw ObserverTimeout" in section[1]
    # the meta-suite: broken, so the defect would not count as caught
    outcomes = junit_outcomes(junit)
    assert set(outcomes.values()) == {"broken"}, outcomes
    assert verdict(outcomes) == "broken"


def test_a_board_killed_during_a_test_is_broken_and_the_gate_reruns_it(tmp_path: Path, cache_dir: Path) -> None:
    work = plant(tmp_path, "board")
    out = tmp_path / "gate"
    profile = GateProfile(
        name="planted", path=tmp_path / "planted.toml", tests=(str(work / "test_planted.py"),), rig_tag="virtual",
        retries=1, thresholds=Thresholds(max_failed=0, max_broken=0, min_passed=2),
    )  # fmt: skip
    log: list[str] = []
    started = time.monotonic()
    result = run_gate(profile, out, runner=runner(tmp_path, cache_dir, work, log), env=dict(os.environ), root=work)
    print(f"gate with one re-run: {time.monotonic() - started:.1f} s; kill -> broken verdict {kill_to_verdict_s(work):.1f} s")
    check_broken_run(out / "junit-0.xml", log[0], r"the virtual board process \(pid \d+\)")
    # the gate re-ran the broken tests alone, on a fresh board: they pass, and it says so
    assert result.retried == ("test_planted.py::test_readings_while_the_rig_dies", "test_planted.py::test_the_next_one")
    assert result.counts["passed"] == 2 and result.counts["broken"] == 0, (result.counts, log[-1][-3000:])
    assert result.verdict == "go", result.reasons


def test_a_broker_killed_during_a_test_is_broken(tmp_path: Path, cache_dir: Path) -> None:
    work = plant(tmp_path, "broker")
    junit = tmp_path / "junit.xml"
    log: list[str] = []
    started = time.monotonic()
    runner(tmp_path, cache_dir, work, log)(["-p", "no:cacheprovider", f"--junitxml={junit}",
                                           f"--hil-log-dir={tmp_path / 'logs'}"], dict(os.environ))  # fmt: skip
    print(f"run: {time.monotonic() - started:.1f} s; kill -> broken verdict {kill_to_verdict_s(work):.1f} s")
    check_broken_run(junit, log[0], r"the test broker \(mosquitto\)")
