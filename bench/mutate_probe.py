"""pytest plugin for bench/mutate.py's coverage run: tells the board which test is running.

Loaded with ``-p mutate_probe`` (bench/ on PYTHONPATH) when ``$HIL_MUTATION_TRACE`` is
set. Each pytest process (each xdist worker) gets a context file of its own, named in
``$HIL_MUTATION_CONTEXT`` before its session starts a board (the board inherits the
environment); as each test starts, its node id is written there, and the board's line
recorder (hil.sim.mutation) files the lines it runs under that test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_context: dict[str, Path] = {}


def pytest_configure(config: pytest.Config) -> None:
    trace = os.environ.get("HIL_MUTATION_TRACE")
    if not trace:
        return
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    path = Path(trace) / f"context-{worker}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("(session)\n")
    os.environ["HIL_MUTATION_CONTEXT"] = str(path)
    _context["path"] = path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    path = _context.get("path")
    if path is not None:
        path.write_text(item.nodeid + "\n")
    return (yield)
