"""Gate profiles, JUnit reading, verdicts and infrastructure-only retries (no rig needed:
the pytest run is replaced by a runner that writes the JUnit file a run would)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from hil.reporting.gate import (
    GateError,
    GateProfile,
    Thresholds,
    judge,
    load_profile,
    read_junit,
    run_gate,
    verdict_table,
)

ROOT = Path(__file__).resolve().parents[3]


def junit(cases: Sequence[tuple[str, str, str]]) -> str:
    """(classname, name, outcome) -> a JUnit XML document like pytest's."""
    body = []
    for classname, name, outcome in cases:
        inner = {
            "passed": "",
            "failed": '<failure message="AssertionError: 25.6 not within 1.0 of 23.5">trace</failure>',
            "broken": '<error message="failed on setup with BrokerError: mosquitto died">trace</error>',
            "skipped": '<skipped type="pytest.skip" message="rig lacks power_control">skip</skipped>',
        }[outcome]
        body.append(f'<testcase classname="{classname}" name="{name}" time="1.0">{inner}</testcase>')
    return f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>'


def write_profile(tmp_path: Path, text: str, name: str = "staging") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_the_shipped_profiles_load() -> None:
    for path in sorted((ROOT / "gates").glob("*.toml")):
        profile = load_profile(str(path))
        assert profile.tests and profile.name == path.stem


def test_a_profile_is_read_with_its_thresholds(tmp_path: Path) -> None:
    write_profile(
        tmp_path,
        '[gate]\ntests = ["tests/hil/test_smoke.py"]\nmarkers = "gate_e2e"\nretries = 2\nfirmware = "v1_1_0"\n'
        "[thresholds]\nmax_failed = 1\nmin_passed = 3\n",
    )
    profile = load_profile("staging", tmp_path)
    assert profile.tests == ("tests/hil/test_smoke.py",) and profile.retries == 2 and profile.firmware == "v1_1_0"
    assert profile.thresholds == Thresholds(max_failed=1, max_broken=0, min_passed=3)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[gate]\nretires = 1\n", "unknown field 'retires'"),
        ('[gate]\nretries = "1"\n', "[gate].retries must be a int"),
        ("[gate]\nretries = -1\n", "out of range"),
        ("[gate]\nworkers = 0\n", "out of range"),
        ("[thresholds]\nmax_failed = 0\n", "missing the [gate] table"),
        ("[gate]\n[thresholds]\nmax_fails = 0\n", "unknown field 'max_fails'"),
        ("[gate]\n[thresholds]\nmax_failed = -2\n", "non-negative integer"),
        ("[gate]\n[limits]\n", "unknown tables ['limits']"),
        ("[gate\n", "not valid TOML"),
    ],
)
def test_a_bad_profile_names_the_file_and_the_field(tmp_path: Path, text: str, says: str) -> None:
    path = write_profile(tmp_path, text)
    with pytest.raises(GateError) as info:
        load_profile("staging", tmp_path)
    assert says in str(info.value) and str(path) in str(info.value)


def test_an_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    write_profile(tmp_path, "[gate]\n", "smoke")
    with pytest.raises(GateError, match=r"known profiles: \['smoke'\]"):
        load_profile("stagign", tmp_path)


def test_junit_outcomes_map_to_suites_and_node_ids(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(
        junit(
            [
                ("tests.hil.test_smoke", "test_online", "passed"),
                ("tests.hil.test_ota", "test_bad[lower version]", "failed"),
                ("tests.hil.test_ota", "test_bad[lower version]", "broken"),  # teardown error too
                ("tests.hil.test_smoke", "test_power", "skipped"),
                ("tests.hil.test_smoke", "test_partition", "broken"),
            ]
        )
    )
    cases = {c.nodeid: c for c in read_junit(path, ROOT)}
    assert cases["tests/hil/test_ota.py::test_bad[lower version]"].outcome == "failed"
    assert cases["tests/hil/test_ota.py::test_bad[lower version]"].suite == "tests/hil/test_ota.py"
    assert cases["tests/hil/test_smoke.py::test_partition"].message.startswith("failed on setup")
    assert sorted(c.outcome for c in cases.values()) == ["broken", "failed", "passed", "skipped"]


class ScriptedRuns:
    """Stands in for pytest: attempt N writes the JUnit XML it was scripted to."""

    def __init__(self, attempts: list[list[tuple[str, str, str]]]) -> None:
        self.attempts = attempts
        self.argvs: list[list[str]] = []
        self.envs: list[dict[str, str]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        self.argvs.append(list(argv))
        out = Path(argv[argv.index("--junitxml") + 1])
        out.write_text(junit(self.attempts[len(self.argvs) - 1]))
        logs = Path(argv[argv.index("--hil-log-dir") + 1])
        logs.mkdir(parents=True, exist_ok=True)
        record = {"rig": "virtual-0", "firmware_version": "1.0.0", "broker_name": "mosquitto", "broker_version": "2.0.11"}
        (logs / "session-virtual-0.json").write_text(json.dumps(record))
        self.envs.append(dict(env))
        return 0


def test_only_broken_tests_are_re_run_and_the_last_outcome_counts(tmp_path: Path) -> None:
    runs = ScriptedRuns(
        [
            [
                ("tests.hil.test_smoke", "test_online", "passed"),
                ("tests.hil.test_smoke", "test_reading", "failed"),
                ("tests.hil.test_smoke", "test_partition", "broken"),
            ],
            [("tests.hil.test_smoke", "test_partition", "passed")],
        ]
    )
    profile = GateProfile(name="staging", path=tmp_path / "staging.toml", markers="gate_e2e", retries=1)
    result = run_gate(profile, tmp_path / "out", runner=runs, env={}, root=ROOT)
    assert runs.argvs[1][0] == "tests/hil/test_smoke.py::test_partition" and "-m" not in runs.argvs[1]
    assert result.retried == ("tests/hil/test_smoke.py::test_partition",)
    assert dict(result.counts) == {"passed": 2, "failed": 1, "broken": 0, "skipped": 0}
    assert result.verdict == "no-go" and result.reasons == ("1 failed (at most 0 allowed)",)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"] == "no-go" and summary["rigs"] == ["virtual-0"]
    assert summary["firmware"]["firmware_version"] == "1.0.0"
    assert summary["suites"]["tests/hil/test_smoke.py"]["failed"] == 1
    assert "VERDICT: NO-GO" in verdict_table(result)


def test_a_failure_is_never_re_run(tmp_path: Path) -> None:
    runs = ScriptedRuns([[("tests.hil.test_smoke", "test_reading", "failed")]])
    profile = GateProfile(name="g", path=tmp_path / "g.toml", retries=3)
    run_gate(profile, tmp_path / "out", runner=runs, env={}, root=ROOT)
    assert len(runs.argvs) == 1


def test_broken_after_all_retries_is_a_no_go(tmp_path: Path) -> None:
    broken = [("tests.hil.test_smoke", "test_online", "broken")]
    runs = ScriptedRuns([broken, broken])
    result = run_gate(GateProfile(name="g", path=tmp_path / "g.toml", retries=1), tmp_path / "o", runner=runs, env={}, root=ROOT)
    assert result.verdict == "no-go" and "broken by infrastructure" in result.reasons[0]


def test_thresholds_decide_the_verdict() -> None:
    from hil.reporting.gate import CaseResult

    cases = [CaseResult("a", "s", "passed"), CaseResult("b", "s", "skipped")]
    assert judge(GateProfile(name="g", path=Path("g")), cases) == ("go", ())
    strict = GateProfile(name="g", path=Path("g"), thresholds=Thresholds(min_passed=2))
    assert judge(strict, cases) == ("no-go", ("1 passed (at least 2 required)",))


def test_a_run_that_writes_no_junit_is_a_gate_error(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="wrote no"):
        run_gate(GateProfile(name="g", path=Path("g")), tmp_path, runner=lambda argv, env: 4, env={}, root=ROOT)


def test_a_run_pytest_did_not_finish_is_a_no_go_whatever_its_junit_says(tmp_path: Path) -> None:
    class Crashing(ScriptedRuns):
        def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
            super().__call__(argv, env)
            return 3  # INTERNAL_ERROR: the JUnit file holds the tests before it only

    runs = Crashing([[("tests.hil.test_smoke", "test_online", "passed")]])
    result = run_gate(GateProfile(name="g", path=tmp_path / "g.toml"), tmp_path / "o", runner=runs, env={}, root=ROOT)
    assert result.verdict == "no-go"
    assert result.reasons == ("pytest run 0 ended with exit code 3 (an internal error; its output: above)",)


# -- the [load] table (fleet load gate) ----------------------------------------------------
def test_the_load_profile_has_a_realistic_load_table() -> None:
    from hil.reporting.gate import LoadProfile

    profile = load_profile("load", ROOT / "gates")
    assert profile.load is not None and profile.markers == "gate_load"
    assert profile.load.devices >= 200 and profile.load.duration_s >= 60 and profile.load.max_loss == 0
    assert load_profile("staging", ROOT / "gates").load is None
    ci = LoadProfile()  # the plugin's default without --hil-load-profile: CI-sized
    assert ci.devices * ci.duration_s <= 20 * 15 and ci.interval_s == 1


def test_a_load_table_is_read_with_numbers_as_floats(tmp_path: Path) -> None:
    from hil.reporting.gate import LoadProfile

    write_profile(
        tmp_path,
        "[gate]\n[load]\ndevices = 50\nrate_hz = 0.5\nduration_s = 30\nmax_loss = 0\nmax_p99_latency_s = 2\n",
    )
    load = load_profile("staging", tmp_path).load
    assert load == LoadProfile(devices=50, rate_hz=0.5, duration_s=30.0, max_loss=0.0, max_p99_latency_s=2.0)
    assert load.interval_s == 2 and isinstance(load.duration_s, float)


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("devices = 20\ndevises = 3\n", "[load] has unknown field 'devises'"),
        ('devices = "20"\n', "[load].devices must be an integer"),
        ("devices = 20.0\n", "[load].devices must be an integer"),
        ("rate_hz = true\n", "[load].rate_hz must be a number"),
        ("devices = 0\n", "[load].devices = 0: give 1..10000 devices"),
        ("devices = 20000\n", "give 1..10000 devices"),
        ("rate_hz = 2\n", "1 / rate_hz an integer"),
        ("rate_hz = 0.3\n", "1 / rate_hz an integer"),
        ("rate_hz = 0\n", "1 / rate_hz an integer"),
        ("rate_hz = 0.5\nduration_s = 3\n", "too short for two readings per device"),
        ("max_loss = 1.5\n", "[load].max_loss = 1.5: a fraction"),
        ("max_p99_latency_s = 0\n", "[load].max_p99_latency_s = 0.0: must be a number of seconds > 0"),
        ("max_storm_recovery_s = -1\n", "max_storm_recovery_s"),
        ("max_broker_dropped = -1\n", "a count of messages"),
        ("min_throughput_ratio = 1.2\n", "[load].min_throughput_ratio = 1.2: a fraction of the nominal rate"),
    ],
)
def test_a_bad_load_table_names_the_file_and_the_field(tmp_path: Path, table: str, says: str) -> None:
    path = write_profile(tmp_path, f"[gate]\n[load]\n{table}")
    with pytest.raises(GateError) as info:
        load_profile("staging", tmp_path)
    assert says in str(info.value) and str(path) in str(info.value)


def test_a_load_table_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    write_profile(tmp_path, "load = 3\n[gate]\n")
    with pytest.raises(GateError, match=r"\[load\] must be a table"):
        load_profile("staging", tmp_path)


def test_the_gate_passes_its_load_profile_and_copies_the_metrics_into_the_summary(tmp_path: Path) -> None:
    from hil.reporting.gate import LOAD_METRICS_FILE, LoadProfile

    path = write_profile(tmp_path, "[gate]\n[load]\ndevices = 5\n", "load")
    metrics = {"tests/hil/test_load.py": {"devices": 5, "broker_dropped": "unknown", "summary": "5 devices × 1 Hz"}}

    class LoadRuns(ScriptedRuns):
        def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
            code = super().__call__(argv, env)
            logs = Path(argv[argv.index("--hil-log-dir") + 1])
            (logs / "main").mkdir(parents=True, exist_ok=True)
            (logs / "main" / LOAD_METRICS_FILE).write_text(json.dumps(metrics))
            return code

    runs = LoadRuns([[("tests.hil.test_load", "test_no_reading_is_lost", "passed")]])
    profile = GateProfile(name="load", path=path, load=LoadProfile(devices=5))
    result = run_gate(profile, tmp_path / "out", runner=runs, env={}, root=ROOT)
    argv = runs.argvs[0]
    assert argv[argv.index("--hil-load-profile") + 1] == str(path)
    assert "--hil-load-profile" not in pytest_argv_without_load(tmp_path)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["load"] == metrics and result.load == metrics
    assert "load (tests/hil/test_load.py): 5 devices × 1 Hz" in verdict_table(result)


def pytest_argv_without_load(tmp_path: Path) -> list[str]:
    from hil.reporting.gate import pytest_argv

    return pytest_argv(GateProfile(name="staging", path=tmp_path / "staging.toml"), tmp_path, 0, ["tests/hil"])


# -- summary.json: its schema, and what it says -------------------------------------------------
SCHEMA = ROOT / "hil" / "reporting" / "summary.schema.json"


def test_summary_json_validates_against_the_committed_schema_and_says_what_ran(tmp_path: Path) -> None:
    from tests.jsonschema_subset import validate

    runs = ScriptedRuns(
        [
            [("tests.hil.test_smoke", "test_online", "passed"), ("tests.hil.test_smoke", "test_partition", "broken")],
            [("tests.hil.test_smoke", "test_partition", "passed")],
        ]
    )
    profile = GateProfile(
        name="staging", path=tmp_path / "staging.toml", rig_tag="virtual", markers="gate_e2e",
        thresholds=Thresholds(max_failed=0, max_broken=0, min_passed=2),
    )  # fmt: skip
    run_gate(profile, tmp_path / "out", runner=runs, env={}, root=ROOT)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert validate(summary, json.loads(SCHEMA.read_text())) == []
    assert summary["schema_version"] == 1 and summary["verdict"] == "go"
    assert summary["thresholds"] == {"max_failed": 0, "max_broken": 0, "min_passed": 2}
    assert summary["requested"]["rig_tag"] == "virtual" and summary["requested"]["markers"] == "gate_e2e"
    assert summary["started_at"].endswith("Z") and summary["started_at"] <= summary["ended_at"]
    assert summary["duration_s"] >= 0 and summary["host"]
    assert summary["commit"] is None or len(summary["commit"]) in (40, 64)
    assert summary["broker"] == {
        "requested": "embedded", "description": "mosquitto 2.0.11, embedded", "name": "mosquitto",
        "version": "2.0.11", "url": None,
    }  # fmt: skip
    cases = {c["nodeid"]: c for c in summary["cases"]}
    assert cases["tests/hil/test_smoke.py::test_partition"]["attempts"] == 2
    assert cases["tests/hil/test_smoke.py::test_online"] == {
        "nodeid": "tests/hil/test_smoke.py::test_online", "suite": "tests/hil/test_smoke.py", "outcome": "passed",
        "message": "", "duration_s": 1.0, "attempts": 1,
    }  # fmt: skip
    assert [(r["attempt"], r["tests"], r["exit_code"]) for r in summary["runs"]] == [(0, 1, 0), (1, 1, 0)]


def test_the_schema_check_catches_a_summary_that_drifted(tmp_path: Path) -> None:
    """The validator is no rubber stamp: what the schema says is checked."""
    from tests.jsonschema_subset import unsupported, validate

    schema = json.loads(SCHEMA.read_text())
    assert unsupported(schema) == set()
    runs = ScriptedRuns([[("tests.hil.test_smoke", "test_online", "failed")]])
    summary = run_gate(GateProfile(name="g", path=tmp_path / "g.toml"), tmp_path / "o", runner=runs, env={}, root=ROOT).to_json()
    assert validate(summary, schema) == []
    bad = {**summary, "verdict": "maybe", "started_at": "2025-06-01 12:00", "surprise": 1}
    del bad["host"]
    bad["cases"] = [{**summary["cases"][0], "duration_s": -1}]
    bad["counts"] = {**summary["counts"], "passed": "2"}
    errors = validate(bad, schema)
    for says in ("$.verdict", "$.started_at", "'surprise' is not allowed", "'host' is required", "$.cases[0].duration_s",
                 "$.counts.passed"):  # fmt: skip
        assert any(says in error for error in errors), (says, errors)
    with pytest.raises(ValueError, match="does not check"):
        validate(summary, {"type": "object", "minProperties": 1})


def test_the_schema_is_in_the_wheel() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hil"]
    assert "reporting/summary.schema.json" in data and SCHEMA.is_file()
    from hil.reporting.gate import SUMMARY_SCHEMA, SUMMARY_SCHEMA_VERSION

    assert SUMMARY_SCHEMA == SCHEMA and json.loads(SCHEMA.read_text())["properties"]["schema_version"]["const"] == SUMMARY_SCHEMA_VERSION


@pytest.mark.parametrize(
    ("requested", "records", "description", "url"),
    [
        ("embedded", [{"broker_name": "mosquitto", "broker_version": "2.0.11"}], "mosquitto 2.0.11, embedded", None),
        ("embedded", [{"broker_name": "amqtt", "broker_version": "unknown"}], "amqtt (version unknown), embedded", None),
        ("mosquitto", [{"rig": "virtual-0"}], "mosquitto (no session started one)", None),
        ("mqtts://broker.staging:8883", [], "mqtts://broker.staging:8883", "mqtts://broker.staging:8883"),
        ("mqtts://ci:s3cret@broker.staging:8883", [], "mqtts://broker.staging:8883", "mqtts://broker.staging:8883"),
    ],
)
def test_the_broker_is_named_never_with_credentials(
    requested: str, records: list[dict[str, str]], description: str, url: str | None
) -> None:
    from hil.reporting.gate import broker_info

    info = broker_info(requested, records)
    assert info.description == description and info.url == url and "s3cret" not in repr(info)


def test_the_verdict_line_names_the_broker(tmp_path: Path) -> None:
    runs = ScriptedRuns([[("tests.hil.test_smoke", "test_online", "passed")]])
    result = run_gate(GateProfile(name="staging", path=tmp_path / "s.toml"), tmp_path / "o", runner=runs, env={}, root=ROOT)
    table = verdict_table(result)
    assert "gate staging: firmware 1.0.0 on virtual-0, broker mosquitto 2.0.11, embedded" in table
    assert table.splitlines()[-1] == "VERDICT: GO"


def test_the_gate_tells_its_pytest_run_it_is_a_gate_and_asks_for_its_events(tmp_path: Path) -> None:
    runs = ScriptedRuns([[("tests.hil.test_smoke", "test_online", "passed")]])
    run_gate(GateProfile(name="staging", path=tmp_path / "s.toml"), tmp_path / "o", runner=runs, env={"A": "1"}, root=ROOT)
    argv = runs.argvs[0]
    assert runs.envs[0] == {"A": "1", "HIL_GATE": "staging"}  # no meta-suite table in a gate's output
    assert argv[argv.index("-p", argv.index("--junitxml")) + 1] == "hil.reporting.gate_events"
    assert argv[argv.index("--hil-gate-events") + 1] == str(tmp_path / "o" / "events-0.jsonl")


def test_the_durations_are_kept_for_the_next_runs_eta(tmp_path: Path) -> None:
    import io

    from hil.reporting.progress import Progress, load_durations

    first = [("tests.hil.test_smoke", "test_online", "passed"), ("tests.hil.test_smoke", "test_power", "skipped")]
    run_gate(GateProfile(name="g", path=tmp_path / "g.toml"), tmp_path / "o", runner=ScriptedRuns([first]), env={}, root=ROOT)
    assert load_durations(tmp_path / "o" / "durations.json") == {"tests/hil/test_smoke.py::test_online": 1.0}

    class Timed(ScriptedRuns):  # a run that says what it is doing, as the events plugin does
        def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
            events = Path(argv[argv.index("--hil-gate-events") + 1])
            events.write_text(json.dumps({"event": "collected", "nodeids": ["tests/hil/test_smoke.py::test_online"]}) + "\n")
            return super().__call__(argv, env)

    shown = io.StringIO()
    progress = Progress(shown, tty=False)
    run_gate(GateProfile(name="g", path=tmp_path / "g.toml"), tmp_path / "o", runner=Timed([first]), env={}, root=ROOT, progress=progress)
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("gate g: ETA from the previous run's durations"), lines
    assert lines[1].startswith("  0/1 done: 0 passed, 0 failed, 0 broken, 0 skipped;") and lines[1].endswith("ETA 1s"), lines


def test_a_previous_runs_files_do_not_pass_for_this_runs(tmp_path: Path) -> None:
    """A CI job that collects junit-*.xml must not find the re-run of a run before."""
    out = tmp_path / "o"
    out.mkdir()
    for stale in ("junit-1.xml", "events-1.jsonl", "pytest-1.log"):
        (out / stale).write_text("from the run before")
    runs = ScriptedRuns([[("tests.hil.test_smoke", "test_online", "passed")]])
    run_gate(GateProfile(name="g", path=tmp_path / "g.toml"), out, runner=runs, env={}, root=ROOT)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".xml", ".jsonl", ".log")) == ["events-0.jsonl", "junit-0.xml"]


def test_a_previous_runs_allure_results_are_cleared_and_a_re_runs_kept(tmp_path: Path) -> None:
    """The report (and its history) of this run holds this run's results only; a test that
    infrastructure broke and the gate re-ran shows as a retry (both attempts' results)."""
    out = tmp_path / "o"
    (out / "allure-results").mkdir(parents=True)
    (out / "allure-results" / "before-result.json").write_text("{}")
    runs = ScriptedRuns([[("tests.hil.test_smoke", "test_online", "broken")], [("tests.hil.test_smoke", "test_online", "passed")]])

    def run_and_write_results(argv: Sequence[str], env: Mapping[str, str]) -> int:
        results = Path(argv[argv.index("--alluredir") + 1])
        results.mkdir(parents=True, exist_ok=True)
        (results / f"attempt{len(runs.argvs)}-result.json").write_text("{}")
        return runs(argv, env)

    profile = GateProfile(name="g", path=tmp_path / "g.toml", retries=1)
    run_gate(profile, out, runner=run_and_write_results, env={}, root=ROOT)
    assert sorted(p.name for p in (out / "allure-results").iterdir()) == ["attempt0-result.json", "attempt1-result.json"]
