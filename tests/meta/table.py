"""The meta-suite's table: which defect images the HIL suites caught, and how the guards
did on the baseline, printed at the end.

A plugin loaded by the root conftest, not a ``tests/meta/conftest.py`` hook: under
pytest-xdist the controller, which prints the summary, collects nothing and so never
loads a sub-directory's conftest.

Verdicts: ``caught`` (every guard failed on the device), ``MISSED`` (some guard passed or
skipped), ``BROKEN`` (some guard was stopped by infrastructure: the defect was not
judged, so it is not counted as caught).

Each row starts with the firmware its guards ran on: a defect recipe, the baseline recipe
(the meta-suite's own baseline case), or, for the guards this session ran in
``tests/hil``, the session's ``--firmware`` (the baseline recipe when none is given). A run
with ``--firmware X`` judged X, and its row says so instead of passing for the baseline.

Not in a gate's run (``hil gate`` sets ``HIL_GATE``, `GATE_ENV`): a release manager reads the gate's
verdict table, and the meta-suite's "baseline passed 41" beside "108 passed" only confuses it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest

from hil.reporting.gate import GATE_ENV
from hil.reporting.report import is_broken

GUARDS_PROPERTY = "hil_guards"
RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3, "broken": 4}  # broken: not judged at all


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Mark the reports of HIL guards, so the controller can tell them apart."""
    report = yield
    marker = item.get_closest_marker("guards")
    if marker is not None and item.nodeid.startswith("tests/hil/"):
        report.user_properties.append((GUARDS_PROPERTY, ",".join(map(str, marker.args))))
    return report


def guards_in_session(terminalreporter: pytest.TerminalReporter) -> dict[str, str]:
    """nodeid -> outcome of every HIL guard this session ran (its worst phase)."""
    outcomes: dict[str, str] = {}
    for kind in RANK:
        for report in terminalreporter.stats.get(kind, []):
            if not any(key == GUARDS_PROPERTY for key, _ in getattr(report, "user_properties", ())):
                continue
            outcome = "error" if kind == "failed" and report.when != "call" else kind
            if outcome in ("failed", "error") and is_broken(report.user_properties):
                outcome = "broken"  # infrastructure stopped it (the plugin's verdict, by type)
            if outcome == "passed" and report.when != "call":
                continue
            if RANK[outcome] >= RANK[outcomes.get(report.nodeid, "passed")]:
                outcomes[report.nodeid] = outcome
    return outcomes


def session_firmware(option: str | None) -> str:
    """What this session's tests/hil ran on: ``--firmware`` as given (a recipe name, or a
    manifest or image path), else the recipe book's baseline."""
    if option is not None:
        return option
    from hil.firmware.catalog import load_recipes

    return load_recipes().baseline


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get(GATE_ENV):
        return
    rows: list[tuple[str, str, str]] = []
    baseline: list[tuple[str, str, str, list[list[str]]]] = []
    firmware = terminalreporter.config.getoption("--firmware", None)
    in_session = guards_in_session(terminalreporter)
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            props = dict(getattr(report, "user_properties", ()))
            if report.when != "call":
                continue
            if "defect" in props:
                verdict = str(props.get("verdict", "caught" if outcome == "passed" else "missed"))
                rows.append((str(props["defect"]), verdict, str(props["guard_outcomes"])))
            elif "baseline" in props:
                skips = json.loads(str(props.get("skips", "[]")))
                baseline.append((str(props["baseline"]), outcome, str(props["guard_outcomes"]), skips))
    judged = session_firmware(firmware) if in_session else ""
    if in_session and judged not in {name for name, *_ in baseline}:
        # The guards ran in this very session (tests/hil), on the session's firmware: a
        # row of their own, named after that firmware. On the baseline it stands in for
        # the baseline case, which then skips (test_suites_catch_defects).
        bad = sorted(node for node, outcome in in_session.items() if outcome in ("failed", "error"))
        broken = sorted(node for node, outcome in in_session.items() if outcome == "broken")
        tally = ", ".join(f"{n} {o}" for o, n in sorted(Counter(in_session.values()).items()))
        skips = [[node, "skipped in this session"] for node, o in sorted(in_session.items()) if o == "skipped"]
        verdict = "BROKEN" if broken else "FAILED" if bad else "passed"  # broken: the firmware was not judged
        baseline.append((judged, verdict, f"{tally} (this session's tests/hil)", skips))
        baseline.extend(("", "", f"did not pass: {node}", []) for node in bad)
        baseline.extend(("", "", f"broken by infrastructure: {node}", []) for node in broken)
    if not rows and not baseline:
        return
    write = terminalreporter.write_line
    terminalreporter.section("defects caught by the HIL suites")
    width = max(len(name) for name, *_ in [*rows, *baseline, ("firmware", "", "", [])])
    write(f"{'firmware':<{width}}  {'verdict':<7} guards")
    for name, outcome, outcomes, skips in baseline:
        write(f"{name:<{width}}  {outcome:<7} {outcomes}")
        for test, reason in skips:
            write(f"{'':<{width}}  skipped {test}: {reason}")
    for defect, verdict, outcomes in sorted(rows):
        write(f"{defect:<{width}}  {verdict if verdict == 'caught' else verdict.upper():<7} {outcomes}")
    if rows:
        caught = sum(1 for _, verdict, _ in rows if verdict == "caught")
        broken = sum(1 for _, verdict, _ in rows if verdict == "broken")
        tail = f"; {broken} broken by infrastructure (not counted as caught)" if broken else ""
        write(f"caught {caught} of {len(rows)} defect images run ({100 * caught // len(rows)} %){tail}")
