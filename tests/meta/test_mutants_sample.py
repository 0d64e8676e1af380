"""The suites' teeth, measured: a fixed sample of firmware mutants must all be killed.

bench/mutants-sample.toml names about 20 mutants of the reference firmware model (picked,
by id, from those the suites kill: see bench/README.md) and, for each, the HIL tests that
run its lines. ``bench/mutate.py --sample --require-killed`` runs each mutant in its own
board process (the import hook of hil.sim.mutation; nothing changes on disk) against
those tests with ``pytest -x``, one pytest process at a time. A mutant the suites no
longer kill fails this test: an assertion was weakened, or the mutated code moved out of
their reach. A mutant whose code changed (its id no longer exists) fails it too, asking
for the sample to be picked again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TIMEOUT_S = 900


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_every_sampled_mutant_is_killed(tmp_path: Path) -> None:
    command = [sys.executable, "bench/mutate.py", "--sample", "--require-killed", "--work", str(tmp_path)]
    # Rigs of its own (as tests/meta/test_suites_catch_defects.py): the pool's locks are
    # for the suites running beside it.
    env = {**os.environ, "HIL_LOCK_DIR": str(tmp_path / "locks")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    report = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"mutants not killed (or not run):\n{report}"
