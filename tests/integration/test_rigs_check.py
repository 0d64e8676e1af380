"""``hil rigs check`` run the way a person runs it (a subprocess, its lines and exit code):
against each example rig's virtual twin, a board process started for the check, esptool
talking to it with the rig's reset method and flash baud, stopped afterwards; against a rig
whose port is missing, that port named and a non-zero exit. And the smoke suite on each
twin, as CI runs the suites on a real rig's stand-in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hil.rig.model import Rig
from hil.rig.reservation import who_holds
from hil.rig.rigfile import load_rigs

ROOT = Path(__file__).resolve().parents[2]
TWINS = [rig for rig in load_rigs(ROOT / "rigs") if rig.twin_of is not None]
CHECKS = ["reserved", "board", "port present", "port free", "chip answers", "chip id", "mac", "power", "sensor"]
LINE = re.compile(r"^(ok|FAIL|skip) +([a-z ]+): (.+)$")


def hil(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    return subprocess.run(
        [sys.executable, "-m", "hil", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def parse(stdout: str) -> list[tuple[str, str, str]]:
    lines = stdout.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), f"not one check per line:\n{stdout}"
    return [match.groups() for match in parsed if match]  # type: ignore[misc]


def test_every_example_has_a_twin() -> None:
    assert sorted(rig.twin_of or "" for rig in TWINS) == ["devkitm-1", "lab-port", "labgrid-place", "usb-jtag"]


@pytest.mark.parametrize("twin", TWINS, ids=[rig.name for rig in TWINS])
def test_each_example_s_twin_passes_every_check(twin: Rig, tmp_path: Path) -> None:
    result = hil("rigs", "check", twin.name, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = parse(result.stdout)
    assert [name for _, name, _ in checks] == CHECKS
    assert all(status in ("ok", "skip") for status, _, _ in checks)
    seen = {name: detail for _, name, detail in checks}
    assert seen["reserved"].startswith(f"{twin.name} (virtual, virtual twin of {twin.twin_of}")
    method = twin.flash_method()
    assert f"(esptool --before {method.before}, {method.flash_baud} Bd)" in seen["chip answers"]
    assert seen["chip id"].startswith("5 (esp32c3)")
    # The board the check started is gone, and the rig is free again.
    pid = int(re.search(r"pid (\d+)", seen["board"]).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert who_holds(twin, lock_dir=tmp_path / "locks") is None


@pytest.mark.parametrize("twin", TWINS, ids=[rig.name for rig in TWINS])
def test_the_smoke_suite_runs_on_each_twin(twin: Rig, tmp_path: Path) -> None:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-p", "no:cacheprovider", "-q", "-rs",
         "--rig", twin.name, "--hil-log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    # Flashed at the twin's baud, booted and online; what it does not declare is skipped, saying so.
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[1-9]\d* passed(, \d+ skipped)? in .*", summary), result.stdout[-2000:]


def test_a_bare_check_takes_the_virtual_rig_not_an_example(tmp_path: Path) -> None:
    result = hil("rigs", "check", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert parse(result.stdout)[0][2].startswith("virtual-0 (virtual")


def test_a_rig_whose_port_is_missing_is_named_and_fails(tmp_path: Path) -> None:
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "bench-x.toml").write_text(
        'name = "bench-x"\nkind = "serial"\nchip = "esp32c3"\nport = "/dev/ttyUSB-does-not-exist"\n'
        'network = { ssid = "lab", broker_host = "10.0.0.2" }\n'
    )
    result = hil("rigs", "check", "bench-x", "--rigs-dir", str(rigs), tmp_path=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = parse(result.stdout)
    assert [(status, name) for status, name, _ in checks] == [("ok", "reserved"), ("FAIL", "port present")]
    assert checks[-1][2].startswith("/dev/ttyUSB-does-not-exist does not exist. Fix: plug the board in")
    # The inventory may also come before the subcommand; an unknown name is a usage error.
    unknown = hil("rigs", "--rigs-dir", str(rigs), "check", "bench-y", tmp_path=tmp_path)
    assert unknown.returncode == 2 and "no rig or pool named 'bench-y'" in unknown.stderr
