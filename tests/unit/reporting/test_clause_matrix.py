"""The clause list (``hil.device.clauses``), its statement in docs/device-contract.md, and the
matrix clause -> tests (``hil.reporting.clause_matrix``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hil.device.clauses import CLAUSES, NORMATIVE, SECTIONS
from hil.reporting.clause_matrix import (
    ClauseMatrix,
    TaggedTest,
    UnknownClauses,
    build,
    doc_ids,
    grouped,
    marker_ids,
    read,
    render_html,
    render_markdown,
    render_text,
    write,
)
from hil.reporting.html_report import write_clause_page

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "device-contract.md"


def test_the_contract_page_states_exactly_the_clauses_of_hil_clauses_in_order() -> None:
    stated = doc_ids(DOC.read_text(encoding="utf-8"))
    ids = [c.id for c in CLAUSES]
    duplicates = sorted({i for i in stated if stated.count(i) > 1})
    assert not duplicates, f"docs/device-contract.md states these ids twice: {duplicates}"
    assert set(stated) == set(ids), (
        f"only in docs/device-contract.md: {sorted(set(stated) - set(ids))}; "
        f"only in hil/device/clauses.py: {sorted(set(ids) - set(stated))}"
    )
    assert stated == ids, (
        "docs/device-contract.md states the clauses in another order than hil/device/clauses.py"
    )


def test_the_contract_page_marks_the_non_normative_clauses_and_says_why() -> None:
    text = DOC.read_text(encoding="utf-8")
    for clause in CLAUSES:
        bullet = re.search(
            rf"^- \*\*{re.escape(clause.id)}\*\*(.*?)(?=^- |^#|\Z)", text, re.M | re.S
        )
        assert bullet is not None, clause.id
        assert ("Not asserted" in bullet.group(1)) != clause.normative, clause.id
        if not clause.normative:
            assert "Why:" in bullet.group(1), clause.id


def test_the_clause_list_is_well_formed() -> None:
    ids = [c.id for c in CLAUSES]
    assert len(ids) == len(set(ids))
    for clause in CLAUSES:
        assert re.fullmatch(r"C\d+\.\d+", clause.id), clause.id
        assert clause.section in SECTIONS, clause.id
        assert clause.text.strip()
        # A non-normative clause is exempt from the meta test only with its reason.
        assert bool(clause.untestable.strip()) == (not clause.normative), clause.id


def test_doc_ids_reads_bold_ids_that_start_a_bullet_only() -> None:
    text = "- **C1.1** a\n  - **C1.2** b\n* **C3.10** c\nsee **C4.1** in prose\n- C5.1 not bold\n"
    assert doc_ids(text) == ["C1.1", "C1.2", "C3.10"]


def rows() -> list[TaggedTest]:
    return [
        TaggedTest("tests/hil/test_a.py::test_will[wifi]", ("C3.4",), hil=True),
        TaggedTest("tests/hil/test_a.py::test_will[power]", ("C3.4", "C3.5", "C3.4"), hil=True),
        TaggedTest("tests/hil/test_a.py::test_backoff", ("C3.6",), hil=True),
        TaggedTest("tests/hil/test_a.py::test_untagged", (), hil=True),
        TaggedTest("tests/unit/test_b.py::test_codec", ()),  # not a HIL test: need not name one
    ]


def test_the_matrix_lists_each_clauses_tests_and_the_clauses_without_one() -> None:
    matrix = build(rows())
    assert list(matrix.tests) == [c.id for c in CLAUSES]
    assert matrix.tests["C3.4"] == (
        "tests/hil/test_a.py::test_will[wifi]",
        "tests/hil/test_a.py::test_will[power]",
    )
    assert matrix.tests["C3.5"] == ("tests/hil/test_a.py::test_will[power]",)
    assert matrix.untagged == ("tests/hil/test_a.py::test_untagged",)
    missing = matrix.missing()
    assert "C3.4" not in missing and "C3.6" not in missing and "C3.1" in missing
    assert missing == [i for i in NORMATIVE if i not in ("C3.4", "C3.5", "C3.6")]
    assert "C7.7" not in missing  # non-normative: exempt


def test_an_unknown_id_or_an_empty_marker_is_refused_naming_the_test() -> None:
    with pytest.raises(UnknownClauses) as refused:
        build(
            [
                TaggedTest("t.py::test_typo", ("C3.4", "C34")),
                TaggedTest("t.py::test_empty", marker_ids([()])),
            ]
        )
    assert "t.py::test_typo: 'C34'" in str(refused.value)
    assert "t.py::test_empty: ''" in str(refused.value)
    assert marker_ids([("C1.1", "C1.2"), ("C2.1",)]) == ("C1.1", "C1.2", "C2.1")


def test_parameters_of_one_test_are_folded_into_one_line() -> None:
    ids = ["f.py::test_a[x]", "f.py::test_b", "f.py::test_a[y-z]", "f.py::C::test_c[1]"]
    assert grouped(ids) == ["f.py::test_a[x, y-z]", "f.py::test_b", "f.py::C::test_c[1]"]


def test_the_text_has_a_block_per_section_and_marks_what_has_no_test() -> None:
    text = render_text(build(rows()))
    for number, title in SECTIONS.items():
        assert f"§{number} {title}" in text
    assert re.search(r"^  C3\.4 +2 tests ", text, re.M)
    assert "tests/hil/test_a.py::test_will[wifi, power]" in text
    assert re.search(r"^  C3\.1 +NO TEST ", text, re.M)
    assert (
        re.search(r"^  C7\.7 +not asserted ", text, re.M)
        and "non-normative: no rig interface" in text
    )
    assert f"3 of {len(NORMATIVE)} normative clauses have an asserting test; none for C1.1," in text
    assert "HIL tests that name no clause (1):\n  tests/hil/test_a.py::test_untagged" in text


def test_markdown_and_html_forms(tmp_path: Path) -> None:
    matrix = build([*rows(), TaggedTest("t.py::test_x[<b>|</b>]", ("C9.7",), hil=True)])
    markdown = render_markdown(matrix)
    assert (
        "## §3 MQTT session" in markdown
        and "| **C3.1** The MQTT client id is the `device_id`. | **no test** |" in markdown
    )
    page = render_html(matrix)
    assert (
        "<b>C3.4</b>" in page and "test_x[&lt;b&gt;|&lt;/b&gt;]" in page and "<b>|</b>" not in page
    )
    assert page.count("class='missing'") == len(matrix.missing())


def test_the_json_form_round_trips_and_results_dirs_are_merged(tmp_path: Path) -> None:
    one = build(rows()[:2])
    two = build(rows()[2:])
    assert ClauseMatrix.from_json(json.loads(json.dumps(one.to_json()))) == one
    write(one, tmp_path / "a")
    write(two, tmp_path / "b")
    (tmp_path / "c").mkdir()
    merged = read([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert merged is not None
    assert merged.tests["C3.4"] and merged.tests["C3.6"] == ("tests/hil/test_a.py::test_backoff",)
    assert merged.untagged == ("tests/hil/test_a.py::test_untagged",)
    assert read([tmp_path / "c"]) is None
    data = json.loads((tmp_path / "a" / "clause-matrix.json").read_text())
    assert data["missing"] == one.missing()
    assert not list((tmp_path / "a").glob(".*"))  # no scratch file left
    write(two, tmp_path / "a")  # a re-run of some tests into the same dir adds, never shrinks
    again = read([tmp_path / "a"])
    assert again is not None and again.tests == merged.tests


def test_hil_report_puts_the_matrix_beside_the_allure_page(tmp_path: Path) -> None:
    write(build(rows()), tmp_path / "results")
    page = write_clause_page([tmp_path / "results"], tmp_path / "html")
    assert page == tmp_path / "html" / "clauses.html" and "<b>C3.6</b>" in page.read_text()
    (tmp_path / "bare").mkdir()
    assert write_clause_page([tmp_path / "bare"], tmp_path / "html2") is None
