"""The Allure report a release manager opens, read in headless Chromium (the page as
rendered, its DOM), after real gate runs on the virtual rig with a defect image
(``temp_high_2c``: temperatures 2 °C high):

* the failed test's own page lists its serial log, MQTT trace and sweep chart as
  attachments (not under a fixture's "Tear down"), its category is the project's
  product-defect one, and the title names the gate and NO-GO;
* no parameter on any page shows a memory address or ``<class 'bytes'>``;
* after two gate runs, ``hil report --history`` with the gate's kept history draws the
  trend ("Status dynamics"), which the first run's report, with no history, cannot;
* the device-contract clause matrix is a page of the report (Global Attachments).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.reporting.evidence import CLAUSE_PAGE
from hil.reporting.html_report import HISTORY_FILE, ReportError, allure_cli

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _allure_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (the Allure 3 CLI runs on it; setup.sh installs both)"
    try:
        allure_cli()
    except ReportError as exc:
        return str(exc)
    return None


pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"),
    pytest.mark.skipif(_allure_missing() is not None, reason=_allure_missing() or ""),
]

PROFILE = "allure-acceptance"
SWEEP = "tests/hil/test_sensor.py::test_readings_match_the_environment_across_the_range"
NOT_JSON = "tests/hil/test_commands_and_programs.py::test_an_unknown_or_malformed_command_is_refused_and_changes_nothing[not-json]"
PARTITION = "tests/hil/test_connectivity.py::test_a_network_fault_ends_in_a_reconnect_with_no_reading_lost[partition]"
PRODUCT_DEFECT = "Product defects (the device broke its contract)"
NO_HISTORY = "No history information available"  # Allure 3's words in an empty trend widget
RENDER_TRIES = 3
ATTACHMENT = 'data-testid="test-result-attachment-header"'
OVERVIEW = 'data-testid="test-result-info-title"'
CHARTS = ">Status dynamics<"


@dataclass(frozen=True)
class GateRuns:
    out: Path
    first_report: Path  # the first run's OUT/report, kept aside (the second run writes over it)
    history_lines_after_two: int
    outputs: tuple[str, ...]


def hil(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateRuns]:
    work = tmp_path_factory.mktemp("allure")
    profile = work / f"{PROFILE}.toml"
    tests = ", ".join(json.dumps(t) for t in (SWEEP, NOT_JSON, PARTITION))
    profile.write_text(f'[gate]\ntests = [{tests}]\nfirmware = "temp_high_2c"\nretries = 0\n')
    # The machine's lock dir: the virtual pool's other members are other runs' (their board
    # state dirs too), so take a free one as every session does.
    out = work / "out"
    outputs = []
    for run in (1, 2):
        done = hil("gate", str(profile), "--out", str(out))
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]  # no-go: the sweep fails
        assert f"report: {out / 'report' / 'index.html'} (history: {out / 'history'})" in done.stdout, done.stdout[-2000:]
        if run == 1:
            shutil.copytree(out / "report", work / "first-report")
    history = out / "history" / HISTORY_FILE
    lines = len(history.read_text().splitlines()) if history.is_file() else 0
    yield GateRuns(out, work / "first-report", lines, tuple(outputs))


def dom(index: Path, route: str, scratch: Path, ready: str) -> str:
    """The page at ``index.html#route`` after its scripts ran, once it holds ``ready``
    (rendering a 6 MB page on a loaded machine: a dump can come before the tab's content;
    a few tries, then the last dump as it is, for the assertions to judge). Each try with
    a profile of its own: another Chromium may still hold the last one."""
    assert CHROMIUM is not None
    page = ""
    for attempt in range(RENDER_TRIES):
        profile = scratch / f"chromium-{route.strip('/').replace('/', '-')}-{attempt}"
        browser = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--virtual-time-budget=8000", "--dump-dom", f"{index.as_uri()}#{route}",
        ]  # fmt: skip
        done = subprocess.run(browser, capture_output=True, text=True, timeout=120)
        page = done.stdout
        if ready in page:
            break
    assert "<body" in page, f"chromium rendered nothing of {index}#{route}"
    return page


def text_of(fragment: str) -> str:
    fragment = re.sub(r"<(script|style)\b.*?</\1>", "", fragment, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def result_ids(report: Path) -> dict[str, tuple[str, str]]:
    """Test name -> (Allure's id of its result, status), from the report's own index."""
    by_id = json.loads((report / "test-results.json").read_text())["byId"]
    return {entry["name"]: (test_id, entry["status"]) for test_id, entry in by_id.items()}


def attachment_names(page: str) -> list[str]:
    headers = re.findall(r'data-testid="test-result-attachment-header"[^>]*>(.*?)</button>', page, flags=re.S)
    return [re.sub(r"^\d+ ", "", text_of(header)) for header in headers]  # "2 serial log": its number first


def parameters(page: str) -> dict[str, str]:
    """The Parameters section of a test's overview: name -> value as shown."""
    start = page.find("<span>Parameters</span>")
    if start < 0:
        return {}
    section = page[start : page.find("<span>Labels</span>", start)]
    keys = re.findall(r'data-testid="metadata-item-key"[^>]*>(.*?)</span>', section, flags=re.S)
    values = re.findall(r'data-testid="metadata-item-value"[^>]*>(.*?)</div></div></div>', section, flags=re.S)
    return {text_of(k): text_of(v) for k, v in zip(keys, values, strict=True)}


def status_dynamics(page: str) -> str:
    """The "Status dynamics" widget (Allure 3's trend of the runs in its history)."""
    start = page.index(">Status dynamics<")
    end = page.find('data-drop-shadow="true"', start)
    return page[start : end if end > 0 else None]


def test_the_failed_tests_page_shows_its_evidence_category_and_the_gates_verdict(gate_runs: GateRuns, tmp_path: Path) -> None:
    report = gate_runs.first_report
    ids = result_ids(report)
    sweep_id, status = ids[SWEEP.rsplit("::", 1)[1]]
    assert status == "failed"
    attachments = attachment_names(dom(report / "index.html", f"/{sweep_id}/attachments", tmp_path, ATTACHMENT))
    assert {"serial log", "MQTT trace", "sweep: temperature_c"} <= set(attachments), attachments
    overview = dom(report / "index.html", f"/{sweep_id}", tmp_path, OVERVIEW)
    shown = text_of(overview)
    assert f"Category: {PRODUCT_DEFECT}" in shown, shown[:1500]
    assert re.search(r"<title>\s*gate allure-acceptance: NO-GO\s*</title>", overview)
    assert "gate allure-acceptance: NO-GO" in shown  # the page's own header, not only the tab's


def test_no_parameter_shows_a_memory_address(gate_runs: GateRuns, tmp_path: Path) -> None:
    report = gate_runs.first_report
    ids = result_ids(report)
    shown = {}
    for nodeid in (NOT_JSON, PARTITION):
        test_id, _ = ids[nodeid.rsplit("::", 1)[1]]
        shown[nodeid] = parameters(dom(report / "index.html", f"/{test_id}", tmp_path, "<span>Parameters</span>"))
    assert shown[NOT_JSON] == {"payload": "b'reset'", "cmd": "None"}
    assert shown[PARTITION] == {"fault": "partition", "retries_refused": "True"}
    for values in shown.values():
        assert not [v for v in values.values() if re.search(r"0x[0-9a-fA-F]{6,}|<class ", v)], shown


def test_two_gate_runs_then_hil_report_with_history_draw_the_trend(gate_runs: GateRuns, tmp_path: Path) -> None:
    assert gate_runs.history_lines_after_two == 2  # the gate kept one point a run
    first = status_dynamics(dom(gate_runs.first_report / "index.html", "/charts", tmp_path / "first", CHARTS))
    assert NO_HISTORY in first and 'role="img"' not in first  # the first run had nothing to trend
    out = tmp_path / "html"
    done = hil("report", str(gate_runs.out / "allure-results"), "--history", str(gate_runs.out / "history"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    trend = status_dynamics(dom(out / "index.html", "/charts", tmp_path / "trend", 'role="img"'))
    assert NO_HISTORY not in trend and re.search(r'<svg[^>]*role="img"', trend), text_of(trend)[:500]
    assert len((gate_runs.out / "history" / HISTORY_FILE).read_text().splitlines()) == 3  # hil report added its run


def test_the_clause_matrix_is_a_page_of_the_report(gate_runs: GateRuns, tmp_path: Path) -> None:
    page = dom(gate_runs.first_report / "index.html", "/globalAttachments", tmp_path, CLAUSE_PAGE)
    assert CLAUSE_PAGE in text_of(page)
    assert (gate_runs.out / "report" / "clauses.html").is_file()  # and beside it, for a link
