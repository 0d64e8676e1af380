"""What `hil report` asks Allure 3 for: the project's categories, the gate and verdict as
the title, a history file that is kept (the pages themselves: tests/integration/
test_allure_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.reporting.html_report import (
    DEFAULT_TITLE,
    HISTORY_FILE,
    ReportError,
    generate,
    report_config,
    report_title,
)
from hil.reporting.report import CATEGORIES


def test_the_config_carries_the_projects_categories_and_one_file_output() -> None:
    config = report_config("gate staging: NO-GO")
    assert config["name"] == "gate staging: NO-GO"
    assert config["categories"] == CATEGORIES  # Allure 3 reads no categories.json
    assert config["plugins"] == {"awesome": {"options": {"singleFile": True}}}
    assert "historyPath" not in config


def test_a_history_dir_is_allures_history_file_in_it(tmp_path: Path) -> None:
    config = report_config("x", tmp_path / "hist")
    assert config["historyPath"] == str((tmp_path / "hist" / HISTORY_FILE).resolve())


def test_the_product_defect_category_is_the_failed_tests(tmp_path: Path) -> None:
    product = [c for c in CATEGORIES if c.get("matchedStatuses") == ["failed"]]
    assert [c["name"] for c in product] == ["Product defects (the device broke its contract)"]


def gate_out(tmp_path: Path, **summary: object) -> Path:
    (tmp_path / "allure-results").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path / "allure-results"


def test_a_gates_results_are_titled_with_the_gate_and_verdict(tmp_path: Path) -> None:
    results = gate_out(tmp_path, profile="staging", verdict="no-go", counts={"failed": 1})
    assert report_title([results]) == "gate staging: NO-GO"


@pytest.mark.parametrize("summary", ["not json", json.dumps({"profile": "staging"}), json.dumps([1])])
def test_results_that_are_no_gates_keep_the_default_title(tmp_path: Path, summary: str) -> None:
    (tmp_path / "allure-results").mkdir()
    (tmp_path / "summary.json").write_text(summary)
    assert report_title([tmp_path / "allure-results", tmp_path / "nope"]) == DEFAULT_TITLE


def test_a_history_path_that_is_a_file_is_refused_before_allure_runs(tmp_path: Path) -> None:
    results = tmp_path / "r"
    results.mkdir()
    (results / "x-result.json").write_text("{}")
    (tmp_path / "hist").write_text("")
    with pytest.raises(ReportError, match="not a directory"):
        generate([results], tmp_path / "out", history=tmp_path / "hist")
