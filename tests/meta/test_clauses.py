"""Every normative clause of the device contract has a HIL test that asserts it, and every
HIL test says which clauses it asserts.

Clauses are ``hil.device.clauses`` (stated in docs/device-contract.md); a test names the ones it
asserts with ``@pytest.mark.clause("C3.4", ...)``. A clause nobody asserts is a promise
the suites never check: a firmware could break it and every suite would still pass. The
failure lists each such clause with its text, so closing the gap is a to-do list;
``pytest tests/hil --clauses`` prints the whole matrix.

``tests/hil`` is collected in a pytest process of its own (as the guards meta-suite does),
so the matrix is that of ``tests/hil`` whatever this session selected, and nothing runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.device.clauses import BY_ID, SECTIONS
from hil.reporting.clause_matrix import ClauseMatrix, TaggedTest, build, grouped

ROOT = Path(__file__).resolve().parents[2]
COLLECT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def hil_tests(tmp_path_factory: pytest.TempPathFactory) -> list[TaggedTest]:
    out = tmp_path_factory.mktemp("clauses") / "clauses.json"
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "tests.meta.clause_lister"],
        cwd=ROOT, env={**os.environ, "HIL_CLAUSES_OUT": str(out)}, capture_output=True, text=True,
        timeout=COLLECT_TIMEOUT_S,
    )  # fmt: skip
    # An unknown clause id is a usage error of the collection: it fails here, named.
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    rows = [
        TaggedTest(r["nodeid"], tuple(r["clauses"]), r["hil"]) for r in json.loads(out.read_text())
    ]
    assert rows, "collected no test in tests/hil"
    return rows


@pytest.fixture(scope="module")
def matrix(hil_tests: list[TaggedTest]) -> ClauseMatrix:
    return build(hil_tests)


def test_every_normative_clause_has_an_asserting_test(matrix: ClauseMatrix) -> None:
    missing = matrix.missing()
    by_section: dict[int, list[str]] = {}
    for clause_id in missing:
        clause = BY_ID[clause_id]
        by_section.setdefault(clause.section, []).append(f"  {clause.id}  {clause.text}")
    listing = "\n".join(
        f"§{n} {SECTIONS.get(n, '')}\n" + "\n".join(lines)
        for n, lines in sorted(by_section.items())
    )
    if missing:  # pytest.fail: the list is the message, not an assert's repr of it
        pytest.fail(
            f"{len(missing)} normative clause(s) with no asserting test in tests/hil "
            f"(tag the test that asserts it with @pytest.mark.clause(...), or write one):\n{listing}",
            pytrace=False,
        )


def test_every_hil_test_names_a_clause(hil_tests: list[TaggedTest]) -> None:
    untagged = grouped(t.nodeid for t in hil_tests if not t.clauses)
    if untagged:
        pytest.fail(
            f"{len(untagged)} test(s) in tests/hil name no clause (a HIL test asserts the device "
            "contract: say which clauses with @pytest.mark.clause(...)):\n  "
            + "\n  ".join(untagged),
            pytrace=False,
        )
