"""Validation gates: a named selection of suites, run once, judged against thresholds.

A gate profile is data (``gates/<name>.toml``): which tests (paths and a marker
expression), on which rig, against which broker and firmware, how many re-runs an
*infrastructure* error earns, and the thresholds of a go. Running it is running pytest
with JUnit XML and Allure results, then reading the JUnit file back into a verdict.

Outcomes follow Allure's words: a *failed* test is a product defect (an assertion about
the device did not hold) and is never re-run; a *broken* test is one whose setup or
harness raised, or infrastructure stopped it (a rig, broker, port or board process that
failed, told by type in ``hil.errors``): only those are re-run, up to ``retries`` times.

While pytest runs, its output goes to ``pytest-N.log`` and the gate shows its progress
(`hil.reporting.progress`, fed by `hil.reporting.gate_events`). What it decided goes to
``summary.json``, whose form is ``summary.schema.json`` (`SUMMARY_SCHEMA_VERSION`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hil.reporting.progress import (
    DURATIONS_FILE,
    EventTail,
    Progress,
    load_durations,
    save_durations,
)
from hil.reporting.report import BROKEN_PROPERTY

ROOT = Path(__file__).resolve().parents[2]
GATES_DIR = ROOT / "gates"
OUTCOMES = ("passed", "failed", "broken", "skipped")
SESSION_RECORD_GLOB = "session-*.json"  # written by the plugin into --hil-log-dir
LOAD_METRICS_FILE = "load-metrics.json"  # written by gate_load tests into --hil-log-dir
MAX_LOAD_DEVICES = 10_000  # what one `hil sim fleet` runs
SUMMARY_SCHEMA_VERSION = 1
"""summary.json's form (``hil/reporting/summary.schema.json``): raised when a field is
removed or changes its meaning; a new field does not raise it."""
SUMMARY_SCHEMA = Path(__file__).with_name("summary.schema.json")
GATE_ENV = "HIL_GATE"
"""Set to the profile's name in the gate's pytest run: a repository's own end-of-run
sections (this one's meta-suite table) leave the gate's output alone."""
EMBEDDED_BROKERS = ("embedded", "mosquitto", "amqtt")  # hil.services.broker's, by value


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

    The defaults are a CI-sized run (20 devices for 15 s, under a minute with the two
    storms, a connection reset and a broker restart); a staging gate names its own (gates/load.toml: 200 devices, 60 s).
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
    # The embedded broker, sized for the fleet (`hil.services.broker.BrokerLimits`):
    broker_persistence: bool = True  # sessions and queues kept across a broker restart
    max_queued_messages: int = 10_000  # per client, above its in-flight ones (0: no limit)
    # The broker-restart storm (`hil.load.storm`): the embedded broker stopped for this long
    # under the full fleet, then started again (0: no restart storm). CI-sized: 3 s, ~10 s more.
    broker_restart_outage_s: float = 3.0

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
        if key == "broker_persistence":
            if not isinstance(value, bool):
                raise GateError(f"{path}: [load].{key} must be true or false, not {value!r}")
            values[key] = value
            continue
        integer = key in ("devices", "max_broker_dropped", "max_queued_messages")
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
    if load.max_queued_messages < 0:
        raise bad("max_queued_messages", "a count of messages per client, 0 (no limit) or more")
    if not 0 <= load.broker_restart_outage_s <= 600:
        raise bad("broker_restart_outage_s", "seconds the broker stays down, 0 (no restart storm) to 600")
    return load


# -- reading results back ---------------------------------------------------------------
@dataclass(frozen=True)
class CaseResult:
    nodeid: str
    suite: str
    outcome: str  # one of OUTCOMES
    message: str = ""
    duration_s: float = 0.0  # setup, call and teardown (JUnit's time), of the run that counts
    attempts: int = 1  # runs of this test: more than one when infrastructure broke it


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
        try:
            duration = round(float(case.get("time", "0")), 3)
        except ValueError:
            duration = 0.0
        broken = BROKEN_PROPERTY in {(p.get("name"), p.get("value")) for p in case.iter("property")}
        for child in case:
            kind = {"failure": "broken" if broken else "failed", "error": "broken", "skipped": "skipped"}.get(child.tag)
            if kind is not None:
                outcome, message = kind, child.get("message", "")
                if kind != "skipped":
                    break  # a teardown error after a failure: the failure is what counts
        cases.append(CaseResult(nodeid=nodeid, suite=suite, outcome=outcome, message=message, duration_s=duration))
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
            duration = max(case.duration_s, seen.duration_s) if seen is not None else case.duration_s
            merged[case.nodeid] = replace(case, duration_s=duration)
    return list(merged.values())


@dataclass(frozen=True)
class BrokerInfo:
    """Which broker the gate's tests ran against: ``requested`` is ``--broker`` (embedded,
    mosquitto, amqtt or a URI); ``name`` and ``version`` the broker the session started
    for an embedded one (from its session record), ``url`` an external one's address
    without credentials; ``description`` says it in a few words (the verdict line's)."""

    requested: str
    description: str
    name: str | None = None
    version: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class PytestRun:
    """One pytest run of a gate: the first, or a re-run of broken tests."""

    attempt: int
    tests: int  # how many it was asked to run by node id (the first: the profile's paths)
    exit_code: int
    duration_s: float
    junit: str
    log: str | None  # its output (None: the runner kept it)


@dataclass(frozen=True)
class GateResult:
    profile: str
    verdict: str  # go | no-go
    reasons: tuple[str, ...]
    counts: Mapping[str, int]
    suites: Mapping[str, Mapping[str, int]]
    firmware: Mapping[str, str]
    rigs: tuple[str, ...]
    broker: BrokerInfo
    retried: tuple[str, ...]
    cases: tuple[CaseResult, ...]
    out_dir: str
    load: Mapping[str, Any] = field(default_factory=dict)  # gate_load test -> its metrics
    profile_path: str = ""
    description: str = ""
    requested: Mapping[str, Any] = field(default_factory=dict)  # the profile's selection, overrides applied
    thresholds: Mapping[str, int] = field(default_factory=dict)
    started_at: str = ""  # ISO 8601, UTC
    ended_at: str = ""
    duration_s: float = 0.0
    commit: str | None = None
    host: str = ""
    runs: tuple[PytestRun, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """summary.json (``summary.schema.json``)."""
        data = {"schema_version": SUMMARY_SCHEMA_VERSION, **asdict(self)}
        data["cases"] = [asdict(c) for c in self.cases]
        return dict(json.loads(json.dumps(data)))  # JSON's own types: lists, not tuples


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


PYTEST_FINISHED = (0, 1, 5)  # all passed, some failed, none collected (min_passed judges that)
PYTEST_EXITS = {2: "interrupted", 3: "an internal error", 4: "a usage error"}
INTERRUPT_GRACE_S = 60.0  # Ctrl-C: how long pytest may take to release its rigs


def run_pytest(argv: Sequence[str], env: Mapping[str, str], *, output: Path | None = None, cwd: Path = ROOT) -> int:
    """pytest in its own process: a gate must survive a crashing session and never share
    a rig session with its caller. Its output goes to ``output`` (else to ours). Stopped
    (Ctrl-C, which pytest gets too), the gate lets pytest release its rigs: a moment to
    stop by itself, then SIGTERM (which unwinds like Ctrl-C), then SIGKILL."""
    log = output.open("wb") if output is not None else None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", *argv], cwd=cwd, env=dict(env), stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
        )  # fmt: skip
        try:
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise
    finally:
        if log is not None:
            log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for send, wait in ((None, 2.0), (signal.SIGTERM, INTERRUPT_GRACE_S), (signal.SIGKILL, None)):
        if send is not None:
            proc.send_signal(send)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: on to the next signal
            continue


def pytest_argv(profile: GateProfile, out: Path, attempt: int, tests: Sequence[str]) -> list[str]:
    argv = [*tests, "-p", "no:cacheprovider", "--junitxml", str(out / f"junit-{attempt}.xml")]
    argv += ["-p", "hil.reporting.gate_events", "--hil-gate-events", str(out / f"events-{attempt}.jsonl")]
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
    runner: Runner | None = None,
    env: Mapping[str, str] | None = None,
    root: Path = ROOT,
    progress: Progress | None = None,
) -> GateResult:
    """Run the profile's tests (and re-run the broken ones), judge, write summary.json.

    ``runner`` stands in for pytest (tests); the default runs it with its output in
    ``out/pytest-N.log``. ``progress`` shows the run as it goes (``hil gate``: stdout)."""
    out = out.resolve()  # pytest runs in ``root``
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("junit-*.xml", "events-*.jsonl", "pytest-*.log"):  # a previous run's re-runs: not this run's
        for path in out.glob(stale):
            path.unlink()
    # A previous run's Allure results would be this run's retries in its report and history
    # (a re-run's stay beside the first run's: Allure's retries). Here, not pytest's
    # --clean-alluredir: each xdist worker would clean, after another had written.
    shutil.rmtree(out / "allure-results", ignore_errors=True)
    environ = {**(os.environ if env is None else env), GATE_ENV: profile.name}
    started_at, started = _now(), time.monotonic()
    history = load_durations(out / DURATIONS_FILE)
    tests: Sequence[str] = profile.tests
    results: dict[str, CaseResult] = {}
    attempts: Counter[str] = Counter()
    retried: list[str] = []
    runs: list[PytestRun] = []
    for attempt in range(profile.retries + 1):
        argv = pytest_argv(profile, out, attempt, tests)
        events = out / f"events-{attempt}.jsonl"
        events.write_text("")
        log = out / f"pytest-{attempt}.log" if runner is None else None
        if progress is not None:
            title = f"gate {profile.name}" if attempt == 0 else f"re-run {attempt} of {len(tests)} test(s) broken by infrastructure"
            note = _progress_note(history, out, log) if attempt == 0 else ""
            progress.begin(title, history, workers=profile.workers, note=note)
        run_started = time.monotonic()
        with EventTail(events, progress) if progress is not None else contextlib.nullcontext():
            if runner is None:
                code = run_pytest(argv, environ, output=log, cwd=root)
            else:
                code = runner(argv, environ)
        junit = out / f"junit-{attempt}.xml"
        took = round(time.monotonic() - run_started, 3)
        runs.append(PytestRun(attempt, len(tests), code, took, junit.name, log.name if log is not None else None))
        if not junit.is_file():
            raise GateError(f"pytest wrote no {junit}: the run did not start ({_see_output(log)})")
        for case in read_junit(junit, root):
            attempts[case.nodeid] += 1
            results[case.nodeid] = case
        broken = sorted(nodeid for nodeid, case in results.items() if case.outcome == "broken")
        if not broken or attempt == profile.retries:
            break
        retried += broken
        tests = broken
    cases = tuple(sorted((replace(c, attempts=attempts[c.nodeid]) for c in results.values()), key=lambda c: c.nodeid))
    # A skipped or broken test's time says nothing of how long it takes when it runs.
    save_durations(out / DURATIONS_FILE, {c.nodeid: c.duration_s for c in cases if c.outcome in ("passed", "failed")})
    verdict, reasons = judge(profile, cases)
    unfinished = [_unfinished(run) for run in runs if run.exit_code not in PYTEST_FINISHED]
    if unfinished:  # what its JUnit holds may be part of the run only
        verdict, reasons = "no-go", (*reasons, *unfinished)
    suites: dict[str, Counter[str]] = {}
    for case in cases:
        suites.setdefault(case.suite, Counter())[case.outcome] += 1
    records = _session_records(out / "logs")
    firmware = {k: v for record in records for k, v in record.items() if k.startswith("firmware")}
    result = GateResult(
        profile=profile.name,
        verdict=verdict,
        reasons=reasons,
        counts={o: sum(1 for c in cases if c.outcome == o) for o in OUTCOMES},
        suites={suite: {o: counts[o] for o in OUTCOMES} for suite, counts in sorted(suites.items())},
        firmware=firmware,
        rigs=tuple(sorted({str(r.get("rig", "no-rig")) for r in records})),
        broker=broker_info(profile.broker, records),
        retried=tuple(retried),
        cases=cases,
        out_dir=str(out),
        load=_load_metrics(out / "logs"),
        profile_path=str(profile.path),
        description=profile.description,
        requested={
            "tests": list(profile.tests),
            "markers": profile.markers or None,
            "rig": profile.rig,
            "rig_tag": profile.rig_tag,
            "broker": _without_credentials(profile.broker),
            "firmware": profile.firmware,
            "retries": profile.retries,
            "workers": profile.workers,
        },
        thresholds=asdict(profile.thresholds),
        started_at=started_at,
        ended_at=_now(),
        duration_s=round(time.monotonic() - started, 3),
        commit=git_commit(root),
        host=socket.gethostname(),
        runs=tuple(runs),
    )
    (out / "summary.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _unfinished(run: PytestRun) -> str:
    why = PYTEST_EXITS.get(run.exit_code, "an unexpected exit")
    return f"pytest run {run.attempt} ended with exit code {run.exit_code} ({why}; its output: {run.log or 'above'})"


def _now() -> str:
    """Now, ISO 8601 in UTC (``2025-06-01T12:00:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _progress_note(history: Mapping[str, float], out: Path, log: Path | None) -> str:
    eta = (
        f"ETA from the previous run's durations ({out / DURATIONS_FILE})"
        if history
        else "no previous run to time it by: ETA from this run's pace"
    )
    return f"{eta}; pytest's output: {log}" if log is not None else eta


def _see_output(log: Path | None) -> str:
    if log is None or not log.is_file():
        return "see its output above"
    tail = log.read_text(errors="replace").splitlines()[-30:]
    return f"its output, {log}, ends:\n" + "\n".join(tail)


def git_commit(root: Path) -> str | None:
    """The commit ``root`` is checked out at, or None (not a git work tree, no git)."""
    try:
        run = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--verify", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = run.stdout.strip()
    return commit if run.returncode == 0 and commit else None


def broker_info(requested: str, records: Sequence[Mapping[str, Any]]) -> BrokerInfo:
    """Which broker it was: an embedded one by the name and version its sessions
    recorded (``broker_name``, ``broker_version``), an external one by its URL, any user
    information (credentials) taken out."""
    if requested not in EMBEDDED_BROKERS:
        url = _without_credentials(requested)
        return BrokerInfo(requested=url, description=url, url=url)
    for record in records:
        name = record.get("broker_name")
        if name:
            version = record.get("broker_version")
            version = None if version in (None, "", "unknown") else str(version)
            what = f"{name} {version}" if version else f"{name} (version unknown)"
            return BrokerInfo(requested=requested, description=f"{what}, embedded", name=str(name), version=version)
    return BrokerInfo(requested=requested, description=f"{requested} (no session started one)")


def _without_credentials(uri: str) -> str:
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri.rpartition("@")[2]
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _session_records(log_dir: Path) -> list[dict[str, Any]]:
    """What each pytest session (one per xdist worker) ran on: rig, firmware, broker;
    the records the plugin leaves in the log dir."""
    records: list[dict[str, Any]] = []
    for record_file in sorted(log_dir.rglob(SESSION_RECORD_GLOB)):  # one per xdist worker dir
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append({"rig": record_file.stem.removeprefix("session-"), **record})
    return records


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
    rigs = ", ".join(result.rigs) or "no rig"
    lines.append(f"gate {result.profile}: firmware {version} on {rigs}, broker {result.broker.description}")
    if result.retried:
        lines.append(f"re-run for infrastructure errors: {', '.join(result.retried)}")
    for test, metrics in result.load.items():
        lines.append(f"load ({test}): {metrics.get('summary', metrics)}")
    took = f"{result.duration_s:.0f} s" if result.duration_s < 120 else f"{result.duration_s / 60:.1f} min"
    lines.append(f"took {took}; commit {(result.commit or 'unknown')[:12]} on {result.host or 'unknown host'}")
    lines.append(f"VERDICT: {result.verdict.upper()}" + (f" ({'; '.join(result.reasons)})" if result.reasons else ""))
    return "\n".join(lines)
