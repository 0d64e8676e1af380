"""HTML reports from Allure results with Allure 3 (the npm ``allure`` package: no Java).

``setup.sh`` installs it into the project's ``node_modules``; a lab host that has it on
PATH works too.
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


def generate(results: Sequence[Path], out: Path, *, name: str = "HIL report", timeout_s: float = 300) -> Path:
    """Write the HTML report of ``results`` (Allure results dirs) into ``out``; return its
    index.html. Results with no test in them are refused: an empty report reads as a pass."""
    for directory in results:
        if not directory.is_dir():
            raise ReportError(f"{directory}: no such Allure results directory (pytest --alluredir DIR writes one)")
    if not any(any(d.glob("*-result.json")) for d in results):
        raise ReportError(f"no test results in {', '.join(map(str, results))}: nothing to report")
    cli = allure_cli()
    with tempfile.TemporaryDirectory(prefix="hil-report-") as scratch:
        # One self-contained index.html: it opens from a file:// URL, a CI artifact or a
        # mail, where the multi-file report's data fetches are blocked.
        config = Path(scratch) / "allurerc.json"
        config.write_text(json.dumps({"name": name, "plugins": {"awesome": {"options": {"singleFile": True}}}}))
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
