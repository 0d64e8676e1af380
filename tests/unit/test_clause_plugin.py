"""``pytest --clauses``, the ``clause`` marker's check, and ``hil clauses``, through pytester."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.device.clauses import NORMATIVE

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import pytest

pytestmark = pytest.mark.hil

@pytest.mark.clause("C3.4")
@pytest.mark.parametrize("fault", ["wifi", pytest.param("power", marks=pytest.mark.clause("C3.5"))])
def test_will(fault):
    open("ran", "a").write("x")

class TestBackoff:
    pytestmark = pytest.mark.clause("C3.6", "C3.7")

    def test_backoff(self):
        assert False, "must not run under --clauses"

def test_untagged():
    pass
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def go(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--rootdir={pytester.path}",
            f"--hil-log-dir={tmp_path / 'logs'}", *args
        )  # fmt: skip

    return go


def test_clauses_prints_the_matrix_by_section_and_runs_nothing(
    run, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run("--clauses")
    assert result.ret == 0, result.stdout.str()
    assert not (pytester.path / "ran").exists()
    result.stdout.re_match_lines(
        [
            r"=+ device-contract clauses and the tests that assert them =+",
            r"§1 Flash layout and provisioning",
            r"  C1\.1 +NO TEST +The image set",
            r"§3 MQTT session",
            r"  C3\.4 +2 tests +The last will",
            r" +test_suite\.py::test_will\[wifi, power\]",
            r"  C3\.5 +1 test +On every connect",
            r" +test_suite\.py::test_will\[power\]",
            r"  C3\.6 +1 test ",
            r" +test_suite\.py::TestBackoff::test_backoff",
            r"  C7\.7 +not asserted ",
            r"§9 Program runtime",
            rf"4 of {len(NORMATIVE)} normative clauses have an asserting test; none for C1\.1, .*",
            r"HIL tests that name no clause \(1\):",
            r"  test_suite\.py::test_untagged",
        ]
    )
    assert "must not run" not in result.stdout.str() and "passed" not in result.stdout.str()


def test_clauses_ignores_n_and_collects_in_one_process(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run("--clauses", "-n", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*C3.4*2 tests*"])
    assert not (pytester.path / "ran").exists()


def test_a_collection_error_still_stops_the_run(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken="import no_such_module_anywhere\n")
    result = run("--clauses")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "device-contract clauses" not in result.stdout.str()


@pytest.mark.parametrize(
    "marker, shown",
    [('@pytest.mark.clause("C3.4", "C34")', "'C34'"), ("@pytest.mark.clause()", "''")],
    ids=["typo", "empty"],
)
def test_an_unknown_clause_id_is_a_usage_error_naming_the_test(
    run, pytester: pytest.Pytester, marker: str, shown: str
) -> None:
    pytester.makepyfile(test_typo=f"import pytest\n{marker}\ndef test_x(): pass\n")
    for args in ((), ("--clauses",)):
        result = run(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert f"test_typo.py::test_x: {shown}" in result.stderr.str()
        assert "not clauses of hil/device/clauses.py" in result.stderr.str()


def test_a_run_with_alluredir_leaves_the_matrix_for_hil_report(
    run, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_suite=SUITE.replace('assert False, "must not run under --clauses"', "pass")
    )
    result = run("--alluredir", "results")
    result.assert_outcomes(passed=4)
    data = json.loads((pytester.path / "results" / "clause-matrix.json").read_text())
    rows = {row["id"]: row["tests"] for row in data["clauses"]}
    assert rows["C3.6"] == ["test_suite.py::TestBackoff::test_backoff"]
    assert data["untagged"] == ["test_suite.py::test_untagged"] and "C3.1" in data["missing"]
    tags = {}  # allure-pytest adds argument-less marks as tags too: "hil" is left out
    for path in (pytester.path / "results").glob("*-result.json"):
        result_json = json.loads(path.read_text())
        tags[result_json["name"]] = sorted(
            lab["value"]
            for lab in result_json["labels"]
            if lab["name"] == "tag" and lab["value"] != "hil"
        )
    assert tags["test_will[power]"] == ["C3.4", "C3.5"] and tags["test_backoff"] == ["C3.6", "C3.7"]
    assert tags["test_untagged"] == []


def test_hil_clauses_is_pytest_clauses() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.cli", "clauses", "tests/hil/test_smoke.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (
        "§1 Flash layout and provisioning" in result.stdout
        and "normative clauses have an asserting test" in result.stdout
    )
    assert "passed" not in result.stdout  # nothing ran
