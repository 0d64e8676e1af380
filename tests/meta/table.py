"""The meta-suite's table: which defect images the HIL suites caught, and how the guards
did on the baseline, printed at the end.

A plugin loaded by the root conftest, not a ``tests/meta/conftest.py`` hook: under
pytest-xdist the controller, which prints the summary, collects nothing and so never
loads a sub-directory's conftest.

Verdicts: ``caught`` (every guard failed on the device), ``MISSED`` (some guard passed or
skipped), ``BROKEN`` (some guard was stopped by infrastructure: the defect was not
judged, so it is not counted as caught).
"""

from __future__ import annotations

import json

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows: list[tuple[str, str, str]] = []
    baseline: list[tuple[str, str, str, list[list[str]]]] = []
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
    if not rows and not baseline:
        return
    write = terminalreporter.write_line
    terminalreporter.section("defects caught by the HIL suites")
    width = max(len(name) for name, *_ in [*rows, *baseline])
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
