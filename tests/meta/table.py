"""The meta-suite's table: which defect images the HIL suites caught, printed at the end.

A plugin loaded by the root conftest, not a ``tests/meta/conftest.py`` hook: under
pytest-xdist the controller, which prints the summary, collects nothing and so never
loads a sub-directory's conftest."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            props = dict(getattr(report, "user_properties", ()))
            if report.when == "call" and "defect" in props:
                rows.append((props["defect"], props["guard_outcomes"], outcome == "passed"))
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("defects caught by the HIL suites")
    width = max(len(defect) for defect, _, _ in rows)
    for defect, outcomes, caught in sorted(rows):
        write(f"{defect:<{width}}  {'caught' if caught else 'MISSED':<7} {outcomes}")
    caught_count = sum(1 for *_, caught in rows if caught)
    write(f"caught {caught_count} of {len(rows)} defect images run ({100 * caught_count // len(rows)} %)")
