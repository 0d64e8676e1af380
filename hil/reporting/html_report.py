"""HTML reports from Allure results with Allure 3 (the npm ``allure`` package: no Java).

``setup.sh`` installs it into the project's ``node_modules``; a lab host that has it on
PATH works too. Each report is configured with the project's categories
(`hil.reporting.report.CATEGORIES`: Allure 3 reads them from its configuration only), a
title naming the gate and its verdict when the results are a gate's, and, given a
history directory, Allure 3's history file there: each report reads the runs before it
(trend charts, a test's history tab) and adds its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ReportError(Exception):
    """The report could not be made; the message says what to install or fix."""


def allure_cli() -> Path:
    local = ROOT / "node_modules" / ".bin" / "allure"
    if local.exists():
        return local
    found = shutil.which("allure")
    if found is None:
        raise ReportError("the Allure 3 CLI is not installed: run `bash setup.sh` (or `npm install` in the project)")
    return Path(found)


DEFAULT_TITLE = "HIL report"
HISTORY_FILE = "history.jsonl"
"""Allure 3's history (one JSON line a report) inside a ``--history`` directory."""
GATE_SUMMARY = "summary.json"
"""``hil gate`` writes it beside its ``allure-results``: the report's title comes from it."""


def gate_title(profile: str, verdict: str) -> str:
    """``gate staging: NO-GO``: what a release manager reads first."""
    return f"gate {profile}: {verdict.upper()}"


def report_title(results: Sequence[Path]) -> str:
    """The gate and verdict of the first results dir that is a gate's (``summary.json``
    beside it), else `DEFAULT_TITLE`."""
    for directory in results:
        try:
            summary = json.loads((directory.parent / GATE_SUMMARY).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and summary.get("profile") and summary.get("verdict"):
            return gate_title(str(summary["profile"]), str(summary["verdict"]))
    return DEFAULT_TITLE


def report_config(name: str, history: Path | None = None) -> dict[str, object]:
    """The Allure 3 configuration (``allurerc.json``) of a report."""
    from hil.reporting.report import CATEGORIES

    config: dict[str, object] = {
        "name": name,
        # Allure 3 keeps its own "Product errors" / "Test errors" after these: they match
        # nothing ours do not (ours cover failed and broken).
        "categories": CATEGORIES,
        # One self-contained index.html: it opens from a file:// URL, a CI artifact or a
        # mail, where the multi-file report's data fetches are blocked.
        "plugins": {"awesome": {"options": {"singleFile": True}}},
    }
    if history is not None:
        config["historyPath"] = str((history / HISTORY_FILE).resolve())
    return config


def generate(
    results: Sequence[Path],
    out: Path,
    *,
    name: str | None = None,
    history: Path | None = None,
    timeout_s: float = 300,
) -> Path:
    """Write the HTML report of ``results`` (Allure results dirs) into ``out``; return its
    index.html. ``name``: the title (default `report_title`); ``history``: a directory
    whose history the report shows and extends (made if missing). Results with no test
    in them are refused: an empty report reads as a pass."""
    for directory in results:
        if not directory.is_dir():
            raise ReportError(f"{directory}: no such Allure results directory (pytest --alluredir DIR writes one)")
    if not any(any(d.glob("*-result.json")) for d in results):
        raise ReportError(f"no test results in {', '.join(map(str, results))}: nothing to report")
    if history is not None:
        if history.exists() and not history.is_dir():
            raise ReportError(f"--history {history}: not a directory (the report keeps {HISTORY_FILE} in it)")
        history.mkdir(parents=True, exist_ok=True)
    cli = allure_cli()
    title = name if name is not None else report_title(results)
    with tempfile.TemporaryDirectory(prefix="hil-report-") as scratch:
        config = Path(scratch) / "allurerc.json"
        config.write_text(json.dumps(report_config(title, history)))
        command = [str(cli), "generate", *map(str, results), "--config", str(config), "--output", str(out)]
        try:
            done = subprocess.run(
                command, env={**os.environ, "NO_COLOR": "1"}, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ReportError(f"allure generate took longer than {timeout_s:.0f} s") from None
    index = out / "index.html"
    if done.returncode != 0 or not index.is_file():
        raise ReportError(f"allure generate failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return index


GATE_REPORT_DIR = "report"
GATE_HISTORY_DIR = "history"


def gate_report(out: Path, *, profile: str, verdict: str) -> tuple[Path, Path | None]:
    """``hil gate``'s own report of its run in ``out``: ``out/report/index.html`` titled
    with the gate and verdict, its history kept in ``out/history`` (the gate's next run
    into the same ``out`` shows the trend), and the clause page. Returns the index and
    the clause page (None without a matrix)."""
    results = [out / "allure-results"]
    report = out / GATE_REPORT_DIR
    index = generate(results, report, name=gate_title(profile, verdict), history=out / GATE_HISTORY_DIR)
    return index, write_clause_page(results, report)


def write_clause_page(results: Sequence[Path], out: Path) -> Path | None:
    """``out/clauses.html``: the device-contract clause matrix of the run (clause -> the
    tests that assert it, the clauses no test asserts), from the ``clause-matrix.json``
    the plugin writes into each results dir. A page beside Allure's ``index.html``, as
    Allure 3 has no place for a page of our own; ``None`` when the results carry no
    matrix (a run without the project's plugin)."""
    from hil.reporting.clause_matrix import read, render_html

    matrix = read(results)
    if matrix is None:
        return None
    out.mkdir(parents=True, exist_ok=True)  # called after `generate`, which makes it; alone too
    page = out / "clauses.html"
    page.write_text(render_html(matrix), encoding="utf-8")
    return page
