"""Validation gates: a named selection of suites, run once, judged against thresholds.

A gate profile is data (``gates/<name>.toml``): which tests (paths and a marker
expression), on which rig, against which broker and firmware, how many re-runs an
*infrastructure* error earns, and the thresholds of a go. Running it is running pytest
with JUnit XML and Allure results, then reading the JUnit file back into a verdict.

Outcomes follow Allure's words: a *failed* test is a product defect (an assertion about
the device did not hold) and is never re-run; a *broken* test is one whose setup or
harness raised, or infrastructure stopped it (a rig, broker, port or board process that
failed, told by type in ``hil.errors``): only those are re-run, up to ``retries`` times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hil.reporting.report import BROKEN_PROPERTY

ROOT = Path(__file__).resolve().parents[2]
GATES_DIR = ROOT / "gates"
OUTCOMES = ("passed", "failed", "broken", "skipped")
SESSION_RECORD_GLOB = "session-*.json"  # written by the plugin into --hil-log-dir
LOAD_METRICS_FILE = "load-metrics.json"  # written by gate_load tests into --hil-log-dir
MAX_LOAD_DEVICES = 10_000  # what one `hil sim fleet` runs


class GateError(Exception):
    """A gate profile problem; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Thresholds:
    max_failed: int = 0
    max_broken: int = 0
    min_passed: int = 1


@dataclass(frozen=True)
class LoadProfile:
    """The ``[load]`` table: a fleet load run and the thresholds it must hold.

    The defaults are a CI-sized run (20 devices for 15 s, well under a minute with the
    reconnect storm); a staging gate names its own (gates/load.toml: 200 devices, 60 s).
    ``rate_hz`` is each device's reading rate: the contract's measurement interval is a
    whole number of seconds, so 1, 0.5, 0.25 ... (1 / rate_hz must be an integer).
    ``max_loss`` is the fraction of readings that may go missing (seq gaps), 0 to 1.
    ``min_throughput_ratio`` is the share of the nominal rate (devices × rate_hz) that
    must arrive in the steady window: a fleet or broker that slows down loses nothing
    by seq and would pass on loss alone.
    """

    devices: int = 20
    rate_hz: float = 1.0
    duration_s: float = 15.0
    max_loss: float = 0.0
    max_p99_latency_s: float = 1.0
    max_storm_recovery_s: float = 10.0
    max_broker_dropped: int = 0
    min_throughput_ratio: float = 0.95

    @property
    def interval_s(self) -> int:
        """The measurement interval the fleet is provisioned with."""
        return round(1 / self.rate_hz)


@dataclass(frozen=True)
class GateProfile:
    name: str
    path: Path
    description: str = ""
    tests: tuple[str, ...] = ("tests/hil",)
    markers: str = ""
    rig: str | None = None
    rig_tag: str | None = None
    broker: str = "embedded"
    firmware: str | None = None
    retries: int = 1
    workers: int = 1
    thresholds: Thresholds = field(default_factory=Thresholds)
    load: LoadProfile | None = None  # the [load] table, for gate_load tests


_PROFILE_KEYS = {
    "description": str,
    "tests": list,
    "markers": str,
    "rig": str,
    "rig_tag": str,
    "broker": str,
    "firmware": str,
    "retries": int,
    "workers": int,
}


def load_profile(name_or_path: str, gates_dir: Path = GATES_DIR) -> GateProfile:
    """``staging`` means ``gates/staging.toml``; a path ending in .toml is read as is."""
    path = Path(name_or_path) if name_or_path.endswith(".toml") else gates_dir / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in gates_dir.glob("*.toml")) if gates_dir.is_dir() else []
        raise GateError(f"no gate profile {name_or_path!r} ({path} does not exist); known profiles: {known}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GateError(f"{path}: not valid TOML: {exc}") from None
    table = raw.get("gate")
    if not isinstance(table, dict):
        raise GateError(f"{path}: missing the [gate] table (see gates/staging.toml for an example)")
    values: dict[str, Any] = {}
    for key, value in table.items():
        expected = _PROFILE_KEYS.get(key)
        if expected is None:
            raise GateError(f"{path}: [gate] has unknown field {key!r}; fields: {sorted(_PROFILE_KEYS)}")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise GateError(f"{path}: [gate].{key} must be a {expected.__name__}, not {value!r}")
        values[key] = tuple(str(t) for t in value) if isinstance(value, list) else value
    for key in ("retries", "workers"):
        if key in values and values[key] < (0 if key == "retries" else 1):
            raise GateError(f"{path}: [gate].{key} = {values[key]} is out of range")
    if "tests" in values:
        _check_tests(path, values["tests"])
    thresholds = raw.get("thresholds", {})
    known_thresholds = set(Thresholds.__dataclass_fields__)
    for key, value in thresholds.items():
        if key not in known_thresholds:
            raise GateError(f"{path}: [thresholds] has unknown field {key!r}; fields: {sorted(known_thresholds)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GateError(f"{path}: [thresholds].{key} must be a non-negative integer, not {value!r}")
    unknown_tables = set(raw) - {"gate", "thresholds", "load"}
    if unknown_tables:
        raise GateError(
            f"{path}: unknown tables {sorted(unknown_tables)}; a profile has [gate], [thresholds] and [load]"
        )
    load = _load_table(path, raw["load"]) if "load" in raw else None
    return GateProfile(name=path.stem, path=path, thresholds=Thresholds(**thresholds), load=load, **values)


def _check_tests(path: Path, tests: tuple[str, ...]) -> None:
    """[gate].tests names what the gate runs: an empty list would run pytest's whole
    default tree, a missing file would end in "NO-GO: 0 passed"; both are profile errors."""
    if not tests:
        raise GateError(f"{path}: [gate].tests is empty; name the suites, e.g. tests = [\"tests/hil\"]")
    for test in tests:
        file = test.split("::", 1)[0]
        if not (ROOT / file).exists():
            raise GateError(f"{path}: [gate].tests names {test!r}, but {ROOT / file} does not exist")


def _load_table(path: Path, table: Any) -> LoadProfile:
    """``[load]``: every field a number of the right kind and in range, or a GateError."""
    if not isinstance(table, dict):
        raise GateError(f"{path}: [load] must be a table")
    fields = LoadProfile.__dataclass_fields__
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise GateError(f"{path}: [load] has unknown field {key!r}; fields: {sorted(fields)}")
        integer = key in ("devices", "max_broker_dropped")
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if not isinstance(value, int | float) or not isinstance(value, kinds) or isinstance(value, bool):
            kind = "an integer" if integer else "a number"
            raise GateError(f"{path}: [load].{key} must be {kind}, not {value!r}")
        values[key] = int(value) if integer else float(value)
    load = LoadProfile(**values)

    def bad(key: str, why: str) -> GateError:
        return GateError(f"{path}: [load].{key} = {getattr(load, key)!r}: {why}")

    if not 1 <= load.devices <= MAX_LOAD_DEVICES:
        raise bad("devices", f"give 1..{MAX_LOAD_DEVICES} devices (one fleet process)")
    if not 0 < load.rate_hz <= 1 or abs(1 / load.rate_hz - load.interval_s) > 1e-9 or load.interval_s > 86400:
        raise bad("rate_hz", "a device reads every whole number of seconds: use 1, 0.5, 0.25, 0.2, ... (1 / rate_hz an integer)")
    if not load.duration_s >= 2 * load.interval_s:
        raise bad("duration_s", f"too short for two readings per device at {load.rate_hz} Hz (at least {2 * load.interval_s} s)")
    if not 0 <= load.max_loss <= 1:
        raise bad("max_loss", "a fraction of the readings, 0 (none may be lost) to 1")
    if not 0 <= load.min_throughput_ratio <= 1:
        raise bad("min_throughput_ratio", "a fraction of the nominal rate, 0 to 1 (0.95: 95 % must arrive)")
    for key in ("max_p99_latency_s", "max_storm_recovery_s"):
        if not getattr(load, key) > 0:
            raise bad(key, "must be a number of seconds > 0")
    if load.max_broker_dropped < 0:
        raise bad("max_broker_dropped", "a count of messages, 0 or more")
    return load


# -- reading results back ---------------------------------------------------------------
@dataclass(frozen=True)
class CaseResult:
    nodeid: str
    suite: str
    outcome: str  # one of OUTCOMES
    message: str = ""


def read_junit(path: Path, root: Path = ROOT) -> list[CaseResult]:
    """pytest's JUnit XML as results. A ``<failure>`` is a failed test; an ``<error>`` (setup,
    teardown, collection, or a test's call that infrastructure stopped: the plugin makes
    those errors) is broken; a ``<skipped>`` is skipped. A failure whose testcase carries
    the plugin's ``hil_outcome = broken`` property is broken too (a JUnit file written
    before the plugin turned it into an error)."""
    cases: list[CaseResult] = []
    for case in ET.parse(path).iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        suite, nodeid = _nodeid(classname, name, root)
        outcome, message = "passed", ""
        broken = BROKEN_PROPERTY in {(p.get("name"), p.get("value")) for p in case.iter("property")}
        for child in case:
            kind = {"failure": "broken" if broken else "failed", "error": "broken", "skipped": "skipped"}.get(child.tag)
            if kind is not None:
                outcome, message = kind, child.get("message", "")
                if kind != "skipped":
                    break  # a teardown error after a failure: the failure is what counts
        cases.append(CaseResult(nodeid=nodeid, suite=suite, outcome=outcome, message=message))
    return _merge_phases(cases)


def _nodeid(classname: str, name: str, root: Path) -> tuple[str, str]:
    """``tests.hil.test_ota.TestX`` + ``test_y[p]`` -> (``tests/hil/test_ota.py``, node id)."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        module = Path(*parts[:cut]).with_suffix(".py")
        if (root / module).is_file():
            return module.as_posix(), "::".join([module.as_posix(), *parts[cut:], name])
    return classname, f"{classname}::{name}"


def _merge_phases(cases: list[CaseResult]) -> list[CaseResult]:
    # pytest writes a second <testcase> for a teardown error of a test that failed.
    worst = {"passed": 0, "skipped": 1, "broken": 2, "failed": 3}
    merged: dict[str, CaseResult] = {}
    for case in cases:
        seen = merged.get(case.nodeid)
        if seen is None or worst[case.outcome] > worst[seen.outcome]:
            merged[case.nodeid] = case
    return list(merged.values())


@dataclass(frozen=True)
class GateResult:
    profile: str
    verdict: str  # go | no-go
    reasons: tuple[str, ...]
    counts: Mapping[str, int]
    suites: Mapping[str, Mapping[str, int]]
    firmware: Mapping[str, str]
    rigs: tuple[str, ...]
    broker: str
    retried: tuple[str, ...]
    cases: tuple[CaseResult, ...]
    out_dir: str
    load: Mapping[str, Any] = field(default_factory=dict)  # gate_load test -> its metrics

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cases"] = [asdict(c) for c in self.cases]
        return data


def judge(profile: GateProfile, cases: Sequence[CaseResult]) -> tuple[str, tuple[str, ...]]:
    counts = Counter(case.outcome for case in cases)
    t = profile.thresholds
    reasons = []
    if counts["failed"] > t.max_failed:
        reasons.append(f"{counts['failed']} failed (at most {t.max_failed} allowed)")
    if counts["broken"] > t.max_broken:
        reasons.append(f"{counts['broken']} broken by infrastructure (at most {t.max_broken} allowed)")
    if counts["passed"] < t.min_passed:
        reasons.append(f"{counts['passed']} passed (at least {t.min_passed} required)")
    return ("no-go" if reasons else "go"), tuple(reasons)


# -- running ----------------------------------------------------------------------------
Runner = Callable[[Sequence[str], Mapping[str, str]], int]


def run_pytest(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """pytest in its own process (its output streams to ours): a gate must survive a
    crashing session and never share a rig session with its caller."""
    return subprocess.run([sys.executable, "-m", "pytest", *argv], cwd=ROOT, env=dict(env), check=False).returncode


def pytest_argv(profile: GateProfile, out: Path, attempt: int, tests: Sequence[str]) -> list[str]:
    argv = [*tests, "-p", "no:cacheprovider", "--junitxml", str(out / f"junit-{attempt}.xml")]
    argv += ["--alluredir", str(out / "allure-results"), "--hil-log-dir", str(out / "logs")]
    argv += ["--broker", profile.broker, "-o", "console_output_style=classic"]
    if profile.markers and attempt == 0:
        argv += ["-m", profile.markers]
    for option, value in (("--rig", profile.rig), ("--rig-tag", profile.rig_tag), ("--firmware", profile.firmware)):
        if value:
            argv += [option, value]
    if profile.workers > 1:
        argv += ["-n", str(profile.workers)]
    if profile.load is not None:
        argv += ["--hil-load-profile", str(profile.path)]
    return argv


def run_gate(
    profile: GateProfile,
    out: Path,
    *,
    runner: Runner = run_pytest,
    env: Mapping[str, str] | None = None,
    root: Path = ROOT,
) -> GateResult:
    out.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ if env is None else env)
    tests: Sequence[str] = profile.tests
    results: dict[str, CaseResult] = {}
    retried: list[str] = []
    for attempt in range(profile.retries + 1):
        runner(pytest_argv(profile, out, attempt, tests), environ)
        junit = out / f"junit-{attempt}.xml"
        if not junit.is_file():
            raise GateError(f"pytest wrote no {junit}: the run did not start (see its output above)")
        for case in read_junit(junit, root):
            results[case.nodeid] = case
        broken = sorted(nodeid for nodeid, case in results.items() if case.outcome == "broken")
        if not broken or attempt == profile.retries:
            break
        retried += broken
        tests = broken
    cases = tuple(sorted(results.values(), key=lambda c: c.nodeid))
    verdict, reasons = judge(profile, cases)
    suites: dict[str, Counter[str]] = {}
    for case in cases:
        suites.setdefault(case.suite, Counter())[case.outcome] += 1
    firmware, rigs = _session_records(out / "logs")
    result = GateResult(
        profile=profile.name,
        verdict=verdict,
        reasons=reasons,
        counts={o: sum(1 for c in cases if c.outcome == o) for o in OUTCOMES},
        suites={suite: {o: counts[o] for o in OUTCOMES} for suite, counts in sorted(suites.items())},
        firmware=firmware,
        rigs=rigs,
        broker=profile.broker,
        retried=tuple(retried),
        cases=cases,
        out_dir=str(out),
        load=_load_metrics(out / "logs"),
    )
    (out / "summary.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _session_records(log_dir: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """The firmware and rigs the sessions used, from the records the plugin leaves."""
    firmware: dict[str, str] = {}
    rigs: set[str] = set()
    for record_file in sorted(log_dir.rglob(SESSION_RECORD_GLOB)):  # one per xdist worker dir
        record = json.loads(record_file.read_text())
        rigs.add(record.get("rig", record_file.stem))
        firmware.update({k: v for k, v in record.items() if k.startswith("firmware")})
    return firmware, tuple(sorted(rigs))


def _load_metrics(log_dir: Path) -> dict[str, Any]:
    """What the gate_load tests measured, by test (``load-metrics.json`` per session)."""
    metrics: dict[str, Any] = {}
    for path in sorted(log_dir.rglob(LOAD_METRICS_FILE)):
        try:
            found = json.loads(path.read_text())
        except ValueError as exc:
            metrics[str(path)] = {"error": f"unreadable: {exc}"}
            continue
        if isinstance(found, dict):
            metrics.update(found)
    return metrics


def override(profile: GateProfile, **values: Any) -> GateProfile:
    """The profile with command-line overrides (``None`` leaves a field as it is)."""
    return replace(profile, **{k: v for k, v in values.items() if v is not None})


def verdict_table(result: GateResult) -> str:
    """The table a release manager reads: one row per suite, then the verdict."""
    header = ("suite", *OUTCOMES)
    rows = [(suite, *(str(counts[o]) for o in OUTCOMES)) for suite, counts in result.suites.items()]
    rows.append(("total", *(str(result.counts[o]) for o in OUTCOMES)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    version = result.firmware.get("firmware_version") or result.firmware.get("firmware", "?")
    lines.append("")
    lines.append(f"gate {result.profile}: firmware {version} on {', '.join(result.rigs) or 'no rig'}, broker {result.broker}")
    if result.retried:
        lines.append(f"re-run for infrastructure errors: {', '.join(result.retried)}")
    for test, metrics in result.load.items():
        lines.append(f"load ({test}): {metrics.get('summary', metrics)}")
    lines.append(f"VERDICT: {result.verdict.upper()}" + (f" ({'; '.join(result.reasons)})" if result.reasons else ""))
    return "\n".join(lines)
