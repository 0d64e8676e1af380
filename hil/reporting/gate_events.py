"""What a running pytest tells ``hil gate`` as it goes: one JSON line per event in a file.

``hil gate`` loads this plugin into its pytest run (``-p hil.reporting.gate_events
--hil-gate-events FILE``) and tails FILE for its live progress (counts, done/total, an
ETA). Under pytest-xdist only the controller writes (it sees every worker's reports), so
the file has one writer. Lines, each flushed as it is written:

* ``{"event": "collected", "nodeids": [...]}``: what this run will run (after ``-m``);
* ``{"event": "start", "nodeid": ...}``: a test began (its setup);
* ``{"event": "case", "nodeid": ..., "outcome": ..., "duration_s": ..., "message": ...}``:
  a test is done (after its teardown), with the gate's outcome (``passed``, ``failed``,
  ``broken``, ``skipped``; decided as the gate decides from JUnit: a failed call is
  failed unless the plugin marked it broken, a failed setup or teardown is broken);
* ``{"event": "finish", "exitstatus": ...}``: the session ended.

The summary's outcomes still come from the JUnit file; these lines are for watching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytest

from hil.reporting.report import is_broken

OPTION = "--hil-gate-events"
MESSAGE_MAX = 300


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("hil").addoption(
        OPTION, metavar="FILE", default=None, help="hil gate: append one JSON line per test event to FILE"
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption(OPTION)
    if path and not hasattr(config, "workerinput"):  # an xdist worker: its controller writes
        config.pluginmanager.register(EventWriter(Path(path), config), "hil-gate-events-writer")


class EventWriter:
    def __init__(self, path: Path, config: pytest.Config) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._config = config
        self._phases: dict[str, list[pytest.TestReport]] = {}
        self._collected = False

    def _emit(self, **event: Any) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def _collected_once(self, nodeids: list[str]) -> None:
        if not self._collected:
            self._collected = True
            self._emit(event="collected", nodeids=nodeids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self._config.pluginmanager.getplugin("dsession") is None:  # not an xdist controller
            self._collected_once([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self._collected_once(list(ids))  # every worker collects the same tests

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self._emit(event="start", nodeid=nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        phases = self._phases.setdefault(report.nodeid, [])
        phases.append(report)
        if report.when in ("setup", "call"):
            return
        del self._phases[report.nodeid]  # after teardown, or xdist's report of a crashed worker's test
        outcome, message = case_outcome(phases)
        duration = round(sum(r.duration for r in phases), 3)
        self._emit(event="case", nodeid=report.nodeid, outcome=outcome, duration_s=duration, message=message)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._emit(event="finish", exitstatus=int(exitstatus))

    def pytest_unconfigure(self) -> None:
        self._file.close()


def case_outcome(phases: list[pytest.TestReport]) -> tuple[str, str]:
    """A test's outcome from its phases' reports, as the gate reads its JUnit testcase."""
    by_phase = {r.when: r for r in phases}
    broken = any(is_broken(r.user_properties) for r in phases)
    call = by_phase.get("call")
    if call is not None and call.failed:
        return ("broken" if broken else "failed"), _message(call)
    for report in phases:
        if report.failed:  # setup, teardown, or a crashed xdist worker's test
            return "broken", f"failed on {report.when}: {_message(report)}"
    for report in phases:
        if report.skipped:
            return "skipped", _message(report)
    return "passed", ""


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(getattr(crash, "message", "") or report.longreprtext)
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return first.removeprefix("Skipped: ")[:MESSAGE_MAX]
