"""bench/mutate.py's choice of likeliest killers: the code a mutated line names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hil.sim.mutants import enumerate_mutants

ROOT = Path(__file__).resolve().parents[3]
METRICS_STARTED = "tasks.create_task(self.metrics.run())"


def load_bench_mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mutate", ROOT / "bench" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mutate"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_a_dropped_task_start_names_that_tasks_class_and_not_every_run_method() -> None:
    mutate = load_bench_mutate()
    module = "hil.sim.firmware.reference"
    dropped = next(
        m
        for m in enumerate_mutants(mutate.module_path(module).read_text(), module)
        if m.operator == "drop" and m.original == METRICS_STARTED
    )
    spans = mutate.function_spans()
    named = mutate.named_spans(dropped, spans)
    health = str(mutate.module_path("hil.sim.firmware.tasks.health"))
    first, last = spans[("hil.sim.firmware.tasks.health", "MetricsTask")]
    assert named == [(health, first, last)]  # ``run`` is every task's: it names none of them
