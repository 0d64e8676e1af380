"""A pytest plugin the meta-suite loads into a collect-only run of ``tests/hil``: writes
which tests guard which defect recipe (their ``guards`` markers) as JSON to the file
named by ``HIL_GUARDS_OUT``."""

from __future__ import annotations

import json
import os

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    guards: dict[str, list[str]] = {}
    for item in session.items:
        for marker in item.iter_markers("guards"):
            for recipe in marker.args:
                guards.setdefault(recipe, []).append(item.nodeid)
    with open(os.environ["HIL_GUARDS_OUT"], "w", encoding="utf-8") as out:
        json.dump(guards, out, indent=1, sort_keys=True)
