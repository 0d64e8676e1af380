"""Proof of teeth: every defect recipe is guarded by at least one HIL test, each guard
fails (or errors, by the device's fault) on the image that carries its defect, and all
the guards pass on the baseline.

The guards are declared where they live, with ``@pytest.mark.guards("recipe")`` on the
HIL test. Each case runs in its own pytest process with its own rig, broker and cache, so
cases run in parallel under xdist: per defect only its guards; for the baseline the union
of all guards, in one process. A guard stopped by infrastructure (a rig taken out, a
broker that did not start) is *broken*, never caught: see ``tests/meta/outcomes.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hil.firmware.catalog import load_recipes
from tests.meta.outcomes import junit_outcomes, skip_reasons, verdict

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

DEFECT_RECIPES = sorted(name for name, recipe in load_recipes().recipes.items() if recipe.defects)
BASELINE = load_recipes().baseline
LIST_TIMEOUT_S = 120
DEFECT_TIMEOUT_S = 600
BASELINE_TIMEOUT_S = 1200
# pytest-timeout (pytest.ini: 300 s, thread method) would kill the xdist worker mid-case;
# each case's own limit is its subprocess's plus the guard listing (the first case of a
# worker sets that fixture up) plus a margin, so a slow case ends in the clear
# TimeoutExpired failure below instead.
MARGIN_S = 60


@pytest.fixture(scope="session")
def guards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("guards") / "guards.json"
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "tests.meta.guard_lister"],
        cwd=ROOT, env={**os.environ, "HIL_GUARDS_OUT": str(out)}, capture_output=True, text=True,
        timeout=LIST_TIMEOUT_S,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def run_guards(tests: list[str], firmware: str, tmp_path: Path, timeout: float) -> tuple[Path, str]:
    """The guards in a pytest process of their own on ``firmware``: its JUnit file and the
    tail of its output. A run that outlives ``timeout`` fails here, saying so."""
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    command = [sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider", "-q", "-rs", "--firmware", firmware,
               "--hil-log-dir", str(tmp_path / "logs"), "--junitxml", str(junit)]  # fmt: skip
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        pytest.fail(
            f"the guards on {firmware} did not finish within {timeout:.0f} s (logs: {tmp_path / 'logs'}):\n"
            f"{tail[-3000:]}"
        )
    output = result.stdout[-3000:] + result.stderr[-2000:]
    assert junit.exists(), f"pytest did not run ({result.returncode}):\n{output}"
    return junit, output


def summary(outcomes: dict[str, str]) -> str:
    return ", ".join(sorted(outcomes.values()))


def guards_run_in_this_session(request: pytest.FixtureRequest) -> bool:
    """This session collected HIL guards and runs them on the baseline image."""
    firmware = request.config.getoption("--firmware", None)
    return firmware in (None, BASELINE) and any(
        item.get_closest_marker("guards") is not None and item.nodeid.startswith("tests/hil/")
        for item in request.session.items
    )


def counts(outcomes: dict[str, str]) -> str:
    """"40 passed, 1 skipped": the baseline runs every guard, too many to list."""
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(Counter(outcomes.values()).items()))


@pytest.mark.timeout(LIST_TIMEOUT_S + DEFECT_TIMEOUT_S + MARGIN_S)
@pytest.mark.parametrize("defect", DEFECT_RECIPES)
def test_the_guards_fail_on_the_defect_image(
    defect: str, guards: dict[str, list[str]], tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    tests = guards.get(defect, [])
    record_property("defect", defect)
    record_property("guard_outcomes", "no guard")
    record_property("verdict", "missed")
    assert tests, f"no HIL test is marked @pytest.mark.guards({defect!r})"
    junit, output = run_guards(tests, defect, tmp_path, DEFECT_TIMEOUT_S)
    outcomes = junit_outcomes(junit)
    record_property("guard_outcomes", summary(outcomes))
    record_property("verdict", verdict(outcomes))
    assert len(outcomes) == len(tests), f"ran {len(outcomes)} of {len(tests)} guards:\n{output}"
    broken = {name: o for name, o in outcomes.items() if o == "broken"}
    assert not broken, (
        f"the run on {defect} was broken by infrastructure, not caught (the defect was never judged): "
        f"{sorted(broken)}\n{output}"
    )
    missed = {name: o for name, o in outcomes.items() if o not in ("failed", "error")}
    assert not missed, f"these guards did not fail on {defect}: {missed}\n{output}"


@pytest.mark.timeout(LIST_TIMEOUT_S + BASELINE_TIMEOUT_S + MARGIN_S)
def test_the_guards_pass_on_the_baseline(
    guards: dict[str, list[str]], tmp_path: Path, record_property: pytest.RecordProperty, request: pytest.FixtureRequest
) -> None:
    """A guard that fails on the baseline proves nothing by failing on a defect image.

    When this session runs the guards itself (``pytest tests`` on the baseline, as CI
    does), running them again here would only repeat that work: the table's baseline
    row is then made from this session's own results (``tests.meta.table``)."""
    if guards_run_in_this_session(request):
        pytest.skip(f"the guards run on {BASELINE} in this session's tests/hil: see the table's baseline row")
    tests = sorted({test for names in guards.values() for test in names})
    record_property("baseline", BASELINE)
    record_property("guard_outcomes", "no guard")
    assert tests, "no HIL test is marked @pytest.mark.guards(...)"
    junit, output = run_guards(tests, BASELINE, tmp_path, BASELINE_TIMEOUT_S)
    outcomes = junit_outcomes(junit)
    record_property("guard_outcomes", counts(outcomes))
    reasons = skip_reasons(junit)
    record_property("skips", json.dumps(sorted(reasons.items())))
    for name, reason in sorted(reasons.items()):
        print(f"skipped on {BASELINE}: {name}: {reason}")
    assert len(outcomes) == len(tests), f"ran {len(outcomes)} of {len(tests)} guards:\n{output}"
    unreasoned = sorted(name for name, reason in reasons.items() if not reason.strip())
    assert not unreasoned, f"guards skipped on {BASELINE} without a reason: {unreasoned}"
    bad = {name: o for name, o in outcomes.items() if o not in ("passed", "skipped")}
    assert not bad, f"these guards did not pass on {BASELINE}: {bad}\n{output}"
