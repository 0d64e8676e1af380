"""``hil gate`` and ``hil rigs`` run the way a person runs them: a subprocess, its exit code
and its output. The gate runs against a local mosquitto with mutual TLS standing in for
staging: go on the baseline, no-go (exit 1, the right counts) on a defect image. Its output
is progress (counts, an ETA from the previous run) and the verdict table, never the
meta-suite's table; its summary.json validates against the committed schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.services.broker import OBSERVER_USER, MosquittoBroker
from tests.jsonschema_subset import validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "hil" / "reporting" / "summary.schema.json").read_text())


def hil(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize("command", [["gate"], ["rigs"]])
def test_help_teaches(command: list[str]) -> None:
    result = hil(*command, "--help")
    assert result.returncode == 0
    assert {"gate": "summary.json", "rigs": "whether a session holds it"}[command[0]] in " ".join(result.stdout.split())


def test_rigs_lists_the_inventory_and_who_holds_a_rig(tmp_path: Path) -> None:
    from hil.rig.reservation import reserve
    from hil.rig.rigfile import load_rigs

    rigs = load_rigs(ROOT / "rigs")
    result = hil("rigs", "--lock-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [r.name for r in rigs] and all(r["held_by"] is None for r in rows)
    with reserve([rigs[0]], name=rigs[0].name, lock_dir=tmp_path):
        held = hil("rigs", "--lock-dir", str(tmp_path))
    assert held.returncode == 0
    first = held.stdout.splitlines()[0]
    assert first.startswith(rigs[0].name) and f"pid {os.getpid()}" in first, held.stdout


def test_rigs_reports_a_broken_inventory(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[rig.x]\nkind = "virtaul"\n')
    result = hil("rigs", "--rigs-dir", str(tmp_path))
    assert result.returncode == 2 and "bad.toml" in result.stderr


def test_gate_names_an_unknown_profile() -> None:
    result = hil("gate", "stagign")
    assert result.returncode == 2 and "known profiles" in result.stderr and "staging" in result.stderr


@pytest.mark.slow
def test_gate_against_a_mutual_tls_broker_go_then_no_go(tmp_path: Path) -> None:
    staging = MosquittoBroker(tmp_path / "staging")
    device = staging.add_device("hil-virtual-0")
    observer = staging.add_device(OBSERVER_USER)  # mTLS-only: the observer needs its own identity
    files = {
        "HIL_BROKER_CA_FILE": ("ca.pem", staging.ca_pem),
        "HIL_BROKER_CLIENT_CERT_FILE": ("device.pem", device.client_cert_pem),
        "HIL_BROKER_CLIENT_KEY_FILE": ("device.key", device.client_key_pem.reveal()),
        "HIL_BROKER_OBSERVER_CERT_FILE": ("observer.pem", observer.client_cert_pem),
        "HIL_BROKER_OBSERVER_KEY_FILE": ("observer.key", observer.client_key_pem.reveal()),
    }
    env = {"HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    for var, (name, text) in files.items():
        (tmp_path / name).write_text(text)
        env[var] = str(tmp_path / name)
    profile = tmp_path / "staging.toml"
    profile.write_text(
        '[gate]\ntests = ["tests/hil/test_smoke.py"]\nmarkers = "gate_e2e"\nrig = "virtual-0"\n'
        "[thresholds]\nmin_passed = 2\n"
    )
    staging.start()
    try:
        go = hil("gate", str(profile), "--broker", staging.uri("mtls"), "--out", str(tmp_path / "go"), env=env, timeout=400)
        (tmp_path / "no-go").mkdir()
        if (tmp_path / "go" / "durations.json").is_file():  # the same gate's previous run times the next
            (tmp_path / "no-go" / "durations.json").write_text((tmp_path / "go" / "durations.json").read_text())
        no_go = hil(
            "gate", str(profile), "--broker", staging.uri("mtls"), "--firmware", "temp_high_2c",
            "--out", str(tmp_path / "no-go"), env=env, timeout=400,
        )  # fmt: skip
    finally:
        staging.stop()
    assert go.returncode == 0, go.stdout[-4000:] + go.stderr[-2000:]
    assert "VERDICT: GO" in go.stdout
    assert f"broker {staging.uri('mtls')}\n" in go.stdout  # which broker, not "embedded"
    assert "no previous run to time it by" in go.stdout and "  3/3 done: 2 passed, 0 failed, 0 broken, 1 skipped;" in go.stdout
    assert "defects caught by the HIL suites" not in go.stdout + go.stderr  # the meta-suite's table
    assert "defects caught by the HIL suites" not in (tmp_path / "go" / "pytest-0.log").read_text()
    summary = json.loads((tmp_path / "go" / "summary.json").read_text())
    assert validate(summary, SCHEMA) == [], summary
    assert summary["broker"]["url"] == staging.uri("mtls") and summary["broker"]["requested"] == staging.uri("mtls")
    assert summary["started_at"] < summary["ended_at"] and summary["duration_s"] > 0
    assert all(c["duration_s"] > 0 for c in summary["cases"] if c["outcome"] == "passed")
    assert summary["counts"] == {"passed": 2, "failed": 0, "broken": 0, "skipped": 1}  # no fault proxy in front of an external broker
    assert summary["rigs"] == ["virtual-0"] and summary["firmware"]["firmware_version"]
    assert (tmp_path / "go" / "allure-results" / "environment.properties").is_file()

    assert no_go.returncode == 1, no_go.stdout[-4000:]
    assert "VERDICT: NO-GO (1 failed" in no_go.stdout
    assert "ETA from the previous run's durations" in no_go.stdout
    assert "  FAILED tests/hil/test_smoke.py::test_a_reading_matches_the_sensor_environment" in no_go.stdout
    summary = json.loads((tmp_path / "no-go" / "summary.json").read_text())
    assert validate(summary, SCHEMA) == [], summary
    assert summary["counts"] == {"passed": 1, "failed": 1, "broken": 0, "skipped": 1}
    assert summary["firmware"]["firmware"] == "temp_high_2c"
    failed = [c for c in summary["cases"] if c["outcome"] == "failed"]
    assert failed[0]["nodeid"].endswith("test_a_reading_matches_the_sensor_environment")
    log = (tmp_path / "staging" / "mosquitto.log").read_text()
    assert "hil-virtual-0" in log  # the device really used the staging broker
