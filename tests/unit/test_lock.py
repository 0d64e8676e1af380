"""The locks agree with pyproject.toml (a range changed without `bash .ci/lock` fails here),
and the environment check that setup.sh and CI run tells a drifted venv from a locked one."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "locks"
sys.path.insert(0, str(ROOT / ".ci"))
from lockcheck import lock_pins  # noqa: E402

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(*groups: str) -> list[Requirement]:
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    for group in groups:
        found += [Requirement(r) for r in PROJECT["optional-dependencies"][group]]
    return found


@pytest.mark.parametrize("requirement", _requirements("dev"), ids=str)
def test_dev_lock_pins_every_dependency_within_its_range(requirement: Requirement) -> None:
    pins = lock_pins((LOCKS / "dev.txt").read_text())
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is in pyproject.toml but not in locks/dev.txt: run bash .ci/lock"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"locks/dev.txt pins {name}=={pins[name]}, outside pyproject's {requirement}: run bash .ci/lock"
    )


def test_every_lock_pin_carries_hashes() -> None:
    for lock in LOCKS.glob("*.txt"):
        pins = [line for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#")]
        unhashed = [line for line in pins if not line.rstrip().endswith("\\")]
        assert pins and not unhashed, f"{lock.name}: pins without hashes: {unhashed}"


def test_bench_lock_is_the_bench_extra_with_the_projects_esptool_and_pytest() -> None:
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PROJECT["optional-dependencies"]["bench"]}
    bench = lock_pins((LOCKS / "bench.txt").read_text())
    dev = lock_pins((LOCKS / "dev.txt").read_text())
    for name, requirement in wanted.items():
        assert requirement.specifier.contains(bench[name]), f"locks/bench.txt: {name}=={bench[name]} vs {requirement}"
    assert bench["esptool"] == dev["esptool"] and bench["pytest"] == dev["pytest"]


def test_build_backend_lock_satisfies_the_build_system() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = lock_pins((LOCKS / "build.txt").read_text())
    for raw in build:
        requirement = Requirement(raw)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])


def _check(freeze: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "lockcheck.py"), str(LOCKS / "dev.txt"), "-"],
        input=freeze, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_lockcheck_accepts_exactly_the_locked_set_and_names_each_difference() -> None:
    pins = lock_pins((LOCKS / "dev.txt").read_text())
    exact = "".join(f"{name}=={version}\n" for name, version in pins.items()) + "-e /somewhere/hil\n"
    assert _check(exact).returncode == 0
    drifted = exact.replace(f"cryptography=={pins['cryptography']}", "cryptography==0.0.1") + "leftpad==1.0\n"
    result = _check(drifted)
    assert result.returncode == 1
    assert f"cryptography: locked {pins['cryptography']}, installed 0.0.1" in result.stderr
    assert "leftpad: installed 1.0, not in the lock" in result.stderr
