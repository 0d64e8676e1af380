"""A pytest plugin the clause meta test loads into a collect-only run of ``tests/hil``:
writes every collected test with the clause ids its markers name, as JSON, to the file
named by ``HIL_CLAUSES_OUT`` (``hil.reporting.clause_matrix.tagged`` reads the markers)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from hil.reporting.clause_matrix import tagged


def pytest_collection_finish(session: pytest.Session) -> None:
    with open(os.environ["HIL_CLAUSES_OUT"], "w", encoding="utf-8") as out:
        json.dump([asdict(row) for row in tagged(session.items)], out, indent=1)
