"""Proof of teeth: every defect recipe is guarded by at least one HIL test, and each
guard fails (or errors) on the image that carries its defect.

The guards are declared where they live, with ``@pytest.mark.guards("recipe")`` on the
HIL test. That they pass on the baseline is shown by the same CI run, which runs
``tests/hil`` on the baseline image; here only the guards of one defect run per case, in
their own pytest process with their own rig, broker and cache, so cases run in parallel
under xdist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.firmware import load_recipes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

DEFECT_RECIPES = sorted(name for name, recipe in load_recipes().recipes.items() if recipe.defects)


@pytest.fixture(scope="session")
def guards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("guards") / "guards.json"
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "tests.meta.guard_lister"],
        cwd=ROOT, env={**os.environ, "HIL_GUARDS_OUT": str(out)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def junit_outcomes(path: Path) -> dict[str, str]:
    """nodeid-ish name -> passed/failed/error/skipped, from pytest's JUnit XML."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[name] = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
            kinds[0] if kinds else "", "passed"
        )
    return outcomes


@pytest.mark.parametrize("defect", DEFECT_RECIPES)
def test_the_guards_fail_on_the_defect_image(
    defect: str, guards: dict[str, list[str]], tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    tests = guards.get(defect, [])
    record_property("defect", defect)
    record_property("guard_outcomes", "no guard")
    assert tests, f"no HIL test is marked @pytest.mark.guards({defect!r})"
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider", "-q", "--firmware", defect,
         "--hil-log-dir", str(tmp_path / "logs"), "--junitxml", str(junit)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert junit.exists(), f"pytest did not run ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    outcomes = junit_outcomes(junit)
    record_property("guard_outcomes", ", ".join(f"{o}" for o in sorted(outcomes.values())))
    missed = {name: o for name, o in outcomes.items() if o not in ("failed", "error")}
    assert len(outcomes) == len(tests), f"ran {len(outcomes)} of {len(tests)} guards:\n{result.stdout[-3000:]}"
    assert not missed, f"these guards did not fail on {defect}: {missed}\n{result.stdout[-3000:]}"
