"""A gate's live progress: the events its pytest run writes (hil.reporting.gate_events) and
what the gate shows of them (hil.reporting.progress): counts, done/total, an ETA from the
previous run's durations; one updating line on a terminal, a line every N tests or 30 s
elsewhere, a line of its own for every failed or broken test."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from hil.reporting.progress import (
    EventTail,
    Progress,
    format_duration,
    load_durations,
    save_durations,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def case(nodeid: str, outcome: str = "passed", duration: float = 1.0, message: str = "") -> dict[str, Any]:
    return {"event": "case", "nodeid": nodeid, "outcome": outcome, "duration_s": duration, "message": message}


IDS = [f"t.py::test_{i}" for i in range(25)]


def test_off_a_terminal_a_line_every_n_tests_and_every_30_s_and_one_per_failure() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=False, every=10, interval_s=30, clock=clock)
    progress.begin("gate staging", {nodeid: 10.0 for nodeid in IDS}, note="ETA from the previous run's durations")
    progress.event({"event": "collected", "nodeids": IDS})
    for i in range(12):
        clock.now += 2
        outcome = {3: "failed", 7: "broken", 9: "skipped"}.get(i, "passed")
        progress.event(case(IDS[i], outcome, 10.0, "AssertionError: 25.6 not within 1.0" if outcome == "failed" else ""))
        progress.tick()
    clock.now += 31
    progress.tick()  # nothing finished for 31 s: a line anyway
    progress.end()
    lines = out.getvalue().splitlines()
    assert lines == [
        "gate staging: ETA from the previous run's durations",
        "  0/25 done: 0 passed, 0 failed, 0 broken, 0 skipped; 0s elapsed, ETA 4m10s",
        "  FAILED t.py::test_3: AssertionError: 25.6 not within 1.0",
        "  BROKEN t.py::test_7",
        "  10/25 done: 7 passed, 1 failed, 1 broken, 1 skipped; 20s elapsed, ETA 2m30s",
        "  12/25 done: 9 passed, 1 failed, 1 broken, 1 skipped; 55s elapsed, ETA 2m10s",
    ]
    assert "\r" not in out.getvalue()


def test_on_a_terminal_one_line_updates_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=True, clock=clock, width=lambda: 200)
    progress.begin("gate staging", {})
    progress.event({"event": "collected", "nodeids": IDS[:3]})
    progress.event({"event": "start", "nodeid": IDS[0]})
    clock.now += 4
    progress.tick()
    progress.event(case(IDS[0], "passed", 4.0))
    progress.event({"event": "start", "nodeid": IDS[1]})
    progress.event(case(IDS[1], "failed", 2.0, "AssertionError"))
    progress.end()
    text = out.getvalue()
    assert text.startswith("gate staging\n")
    frames = text.split("\r\x1b[K")
    assert "  0/3 done: 0 passed, 0 failed, 0 broken, 0 skipped; 4s elapsed, ETA not known yet | t.py::test_0" in frames
    assert "  1/3 done: 1 passed, 0 failed, 0 broken, 0 skipped; 4s elapsed, ETA 8s" in frames  # this run's pace: 4 s a test
    assert "  FAILED t.py::test_1: AssertionError\n" in frames  # a line of its own, the status redrawn under it
    assert text.endswith("  2/3 done: 1 passed, 1 failed, 0 broken, 0 skipped; 4s elapsed, ETA 3s\n")
    assert "\n" not in "".join(f for f in frames if f.startswith("  0/3"))


def test_a_terminal_line_never_wraps() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True, clock=Clock(), width=lambda: 40)
    progress.begin("g", {})
    progress.event({"event": "collected", "nodeids": IDS})
    for frame in out.getvalue().split("\r\x1b[K")[1:]:
        assert len(frame) <= 39 and frame.endswith("…")


def test_the_eta_counts_what_running_tests_spent_and_divides_among_workers() -> None:
    clock = Clock()
    progress = Progress(io.StringIO(), tty=False, clock=clock)
    progress.begin("g", {"a": 60.0, "b": 30.0}, workers=2)
    assert progress.eta_s() is None  # nothing collected yet
    progress.event({"event": "collected", "nodeids": ["a", "b", "new"]})
    assert progress.eta_s() == (60 + 30 + 45) / 2  # a test the last run did not have: its mean
    progress.event({"event": "start", "nodeid": "a"})
    clock.now += 50
    assert progress.eta_s() == (10 + 30 + 45) / 2
    clock.now += 20
    assert progress.eta_s() == (0 + 30 + 45) / 2  # over its time: not negative


def test_durations_are_kept_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "durations.json"
    assert load_durations(path) == {}
    save_durations(path, {"a": 1.23456, "b": 2.0})
    save_durations(path, {"b": 3.0})  # a re-run of b only: a keeps its duration
    assert load_durations(path) == {"a": 1.235, "b": 3.0}
    assert json.loads(path.read_text())["updated_at"].endswith("Z")
    path.write_text("{not json")
    assert load_durations(path) == {}


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (3720, "1h02m")])
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_tail_reads_whole_lines_only_and_ends_the_progress(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    out = io.StringIO()
    progress = Progress(out, tty=False, clock=Clock())
    progress.begin("g", {})
    with EventTail(events, progress, poll_s=0.01):
        line = json.dumps({"event": "collected", "nodeids": ["a"]}) + "\n" + json.dumps(case("a", "failed"))
        with events.open("a") as file:
            file.write(line[:30])
            file.flush()
            file.write(line[30:] + "\nnot json\n")
    assert out.getvalue().splitlines()[-2:] == [
        "  FAILED a",
        "  1/1 done: 0 passed, 1 failed, 0 broken, 0 skipped; 0s elapsed, ETA 0s",
    ]


# -- the events a pytest run writes --------------------------------------------------------------
PLANTED = '''
import pytest

@pytest.fixture
def broken_setup():
    raise RuntimeError("the broker died")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("port lost")

def test_passes(): pass
def test_fails(): assert 25.6 == 23.5
def test_setup(broken_setup): pass
def test_teardown(broken_teardown): pass
def test_skips(): pytest.skip("rig lacks power_control")
def test_infrastructure(record_property):
    record_property("hil_outcome", "broken")  # what hil's plugin adds, judged by type
    raise TimeoutError("no reading")
@pytest.mark.slow
def test_deselected(): pass
'''


def test_the_events_plugin_writes_a_line_per_test_with_the_gates_outcome(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_planted=PLANTED)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    events = pytester.path / "events.jsonl"
    # A subprocess: run in-process, the inner session left this one's asyncio state changed
    # (a later test's FaultProxy thread found no event loop).
    result = pytester.runpytest_subprocess(
        "-p", "no:hil", "-p", "no:cacheprovider", "-p", "hil.reporting.gate_events", "--hil-gate-events", str(events),
        "-m", "not slow",
    )  # fmt: skip
    assert result.ret == 1, result.stdout.str()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[0]["event"] == "collected" and len(lines[0]["nodeids"]) == 6  # after -m
    assert lines[-1] == {"event": "finish", "exitstatus": 1}
    cases = {e["nodeid"].split("::")[1]: e for e in lines if e["event"] == "case"}
    assert {name: e["outcome"] for name, e in cases.items()} == {
        "test_passes": "passed", "test_fails": "failed", "test_setup": "broken", "test_teardown": "broken",
        "test_skips": "skipped", "test_infrastructure": "broken",
    }  # fmt: skip
    assert cases["test_setup"]["message"] == "failed on setup: RuntimeError: the broker died"
    assert cases["test_skips"]["message"] == "rig lacks power_control"
    assert cases["test_fails"]["message"].startswith("assert 25.6 == 23.5")
    assert all(e["duration_s"] >= 0 for e in cases.values())
    starts = [e["nodeid"] for e in lines if e["event"] == "start"]
    assert starts == [e["nodeid"] for e in lines if e["event"] == "case"]


def test_the_events_plugin_under_xdist_writes_from_the_controller(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_planted="def test_a(): pass\ndef test_b(): assert False\n")
    events = pytester.path / "events.jsonl"
    result = pytester.runpytest_subprocess(
        "-p", "no:hil", "-p", "no:cacheprovider", "-p", "hil.reporting.gate_events", "--hil-gate-events", str(events),
        "-n", "2",
    )  # fmt: skip
    assert result.ret == 1, result.stdout.str()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in lines].count("collected") == 1 and len(lines[0]["nodeids"]) == 2
    assert sorted(e["outcome"] for e in lines if e["event"] == "case") == ["failed", "passed"]
