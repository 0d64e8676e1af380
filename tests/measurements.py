"""Numbers that tests measure, printed at the end of a run, even a passing one.

A test records ``record_property("measured", text)``; this plugin (loaded by the root
conftest, so that the xdist controller has it too: workers' reports carry the properties
to it) prints each one under a "measured by the tests" section, where pytest's output
capture and xdist would otherwise hide a ``print``."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        (report.nodeid, str(value))
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for key, value in getattr(report, "user_properties", ())
        if key == "measured"
    ]
    if not lines:
        return
    terminalreporter.section("measured by the tests")
    for nodeid, text in sorted(lines):
        terminalreporter.write_line(f"{nodeid}:")
        for line in text.strip().splitlines():
            terminalreporter.write_line(f"  {line}")
