"""The meta-suite's reading of a guard run's JUnit: a device's failure or error catches
its defect, an infrastructure failure is *broken* and catches nothing. Which is which the
plugin decided by type and wrote as properties; the messages' words count for nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.meta.outcomes import junit_outcomes, skip_reasons, verdict

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="5" failures="3" skipped="1" tests="10">
<testcase classname="tests.hil.test_ota" name="test_passes" time="1"/>
<testcase classname="tests.hil.test_ota" name="test_fails_on_the_device" time="1">
  <failure message="AssertionError: the device rebooted on a lower version update">...</failure>
</testcase>
<testcase classname="tests.hil.test_smoke" name="test_never_online" time="1">
  <error message="failed on setup with &quot;hil.session.SessionError: device never came online within 60 s; last serial lines: Guru Meditation Error&quot;">
    E   hil.session.SessionError: device never came online (the console had a ConsoleError handler)
  </error>
</testcase>
<testcase classname="tests.hil.test_smoke" name="test_rig_taken_out" time="0">
  <properties><property name="hil_outcome" value="broken"/><property name="hil_rig_taken_out" value="rig virtual-0 taken out of this run: ..."/></properties>
  <error message="failed on setup with &quot;hil.errors.RigTakenOut: [infrastructure] rig virtual-0 taken out of this run: ConsoleError: port lost (logs: x)&quot;">...</error>
</testcase>
<testcase classname="tests.hil.test_smoke" name="test_rig_taken_out_property" time="0">
  <properties><property name="hil_rig_taken_out" value="rig virtual-0 taken out of this run: ..."/></properties>
  <error message="failed on setup with &quot;something&quot;">...</error>
</testcase>
<testcase classname="tests.hil.test_connectivity" name="test_board_killed_during_the_call" time="0">
  <properties><property name="hil_outcome" value="broken"/></properties>
  <failure message="hil.errors.RigTakenOut: [infrastructure] rig virtual-0 taken out of this run: the virtual board process (pid 1) was killed by SIGKILL">...</failure>
</testcase>
<testcase classname="tests.hil.test_connectivity" name="test_flash_sync" time="0">
  <properties><property name="hil_outcome" value="broken"/></properties>
  <error message="failed on setup with &quot;hil.errors.InfrastructureFailure: [infrastructure] FlashInfrastructureError: could not sync&quot;">...</error>
</testcase>
<testcase classname="tests.hil.test_connectivity" name="test_words_are_not_types" time="0">
  <failure message="AssertionError: the device logged 'BrokerError: taken out of this run'">...</failure>
</testcase>
<testcase classname="tests.hil.test_connectivity" name="test_words_are_not_types_in_setup" time="0">
  <error message="failed on setup with &quot;hil.session.SessionError: never online; ConsoleError in the log&quot;">...</error>
</testcase>
<testcase classname="tests.hil.test_ota" name="test_skipped" time="0">
  <skipped type="pytest.skip" message="rig 'virtual-0' lacks capabilities ['power_control']">...</skipped>
</testcase>
</testsuite></testsuites>
"""


@pytest.fixture
def junit(tmp_path: Path) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    return path


def test_each_testcase_is_classified(junit: Path) -> None:
    assert junit_outcomes(junit) == {
        "tests.hil.test_ota::test_passes": "passed",
        "tests.hil.test_ota::test_fails_on_the_device": "failed",
        # the device's fault (crash_on_boot): still an error, so it catches; words in the
        # traceback text do not count, only the last exception's type and message
        "tests.hil.test_smoke::test_never_online": "error",
        "tests.hil.test_smoke::test_rig_taken_out": "broken",
        "tests.hil.test_smoke::test_rig_taken_out_property": "broken",
        "tests.hil.test_connectivity::test_board_killed_during_the_call": "broken",  # a JUnit not yet rewritten
        "tests.hil.test_connectivity::test_flash_sync": "broken",
        "tests.hil.test_connectivity::test_words_are_not_types": "failed",
        "tests.hil.test_connectivity::test_words_are_not_types_in_setup": "error",
        "tests.hil.test_ota::test_skipped": "skipped",
    }
    assert skip_reasons(junit) == {"tests.hil.test_ota::test_skipped": "rig 'virtual-0' lacks capabilities ['power_control']"}


def test_a_broken_run_is_not_caught() -> None:
    assert verdict({"a": "failed", "b": "error"}) == "caught"
    assert verdict({"a": "failed", "b": "broken"}) == "broken"
    assert verdict({"a": "error", "b": "passed"}) == "missed"
    assert verdict({"a": "skipped"}) == "missed"
    assert verdict({}) == "missed"


def test_the_table_says_broken_and_shows_the_baseline(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.meta.table"]')
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("defect, verdict, outcomes", [
            ("accepts_downgrade", "caught", "failed, failed"),
            ("ota_no_resume", "broken", "broken"),
        ])
        def test_case(defect, verdict, outcomes, record_property):
            record_property("defect", defect)
            record_property("guard_outcomes", outcomes)
            record_property("verdict", verdict)
            assert verdict == "caught"

        def test_baseline(record_property):
            record_property("baseline", "baseline")
            record_property("guard_outcomes", "passed, passed, skipped")
            record_property("skips", '[["t::x", "rig lacks power_control"]]')
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.re_match_lines(
        [
            r"baseline +passed +passed, passed, skipped",
            r" +skipped t::x: rig lacks power_control",
            r"accepts_downgrade +caught +failed, failed",
            r"ota_no_resume +BROKEN +broken",
            r"caught 1 of 2 defect images run \(50 %\); 1 broken by infrastructure \(not counted as caught\)",
        ]
    )


def test_the_baseline_row_comes_from_this_sessions_guards_when_it_ran_them(pytester: pytest.Pytester) -> None:
    """`pytest tests` (CI) runs the guards on the baseline in tests/hil already: the table's
    baseline row is made from those results, a failing guard named."""
    pytester.makeconftest(
        'pytest_plugins = ["tests.meta.table"]\n'
        "def pytest_configure(config):\n"
        '    config.addinivalue_line("markers", "guards(*recipes): the defects a test guards")\n'
    )
    hil = pytester.mkdir("tests") / "hil"
    hil.mkdir()
    (hil / "test_guarded.py").write_text(
        "import pytest\n"
        "@pytest.mark.guards('temp_high_2c')\n"
        "def test_good(): pass\n"
        "@pytest.mark.guards('no_lwt')\n"
        "def test_bad(): assert False\n"
        "@pytest.mark.guards('no_lwt')\n"
        "def test_skipped(): pytest.skip('rig lacks power_control')\n"
        "def test_not_a_guard(): assert False\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--import-mode=importlib", "tests")
    result.stdout.re_match_lines(
        [
            r"baseline +FAILED +1 failed, 1 passed, 1 skipped \(this session's tests/hil\)",
            r" +skipped tests/hil/test_guarded.py::test_skipped: skipped in this session",
            r" +did not pass: tests/hil/test_guarded.py::test_bad",
        ]
    )
    assert "test_not_a_guard" not in result.stdout.str().split("defects caught by the HIL suites")[1].split("short test summary")[0]


def test_the_session_row_names_the_firmware_it_judged(pytester: pytest.Pytester) -> None:
    """`pytest tests --firmware X` ran the guards on X: the row says X, never "baseline"
    (the meta-suite's own baseline case, which judged the baseline recipe, keeps its row)."""
    pytester.makeconftest(
        'pytest_plugins = ["tests.meta.table"]\n'
        "def pytest_addoption(parser):\n"
        '    parser.addoption("--firmware")\n'
        "def pytest_configure(config):\n"
        '    config.addinivalue_line("markers", "guards(*recipes): the defects a test guards")\n'
    )
    hil = pytester.mkdir("tests") / "hil"
    hil.mkdir()
    (hil / "test_guarded.py").write_text(
        "import pytest\n"
        "@pytest.mark.guards('no_lwt')\n"
        "def test_will(): assert False\n"
        "@pytest.mark.guards('temp_high_2c')\n"
        "def test_reading(): pass\n"
    )
    (pytester.path / "tests" / "test_meta.py").write_text(
        "def test_baseline(record_property):\n"
        '    record_property("baseline", "baseline")\n'
        '    record_property("guard_outcomes", "2 passed")\n'
    )
    # The table alone: hil's own plugin (an entry point) is left out, this conftest stands in.
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hil", "--import-mode=importlib", "tests", "--firmware", "no_lwt")
    table = result.stdout.str().split("defects caught by the HIL suites")[1]
    result.stdout.re_match_lines(
        [
            r"firmware +verdict +guards",
            r"baseline +passed +2 passed$",
            r"no_lwt +FAILED +1 failed, 1 passed \(this session's tests/hil\)",
            r" +did not pass: tests/hil/test_guarded.py::test_will",
        ]
    )
    assert "baseline" not in table.split("no_lwt")[1]
    alone = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hil", "--import-mode=importlib", "tests/hil", "--firmware", "fw.bin")
    alone.stdout.re_match_lines([r"fw.bin +FAILED +1 failed, 1 passed \(this session's tests/hil\)"])
    assert not any(line.startswith("baseline") for line in alone.stdout.lines)


def test_a_gates_run_prints_no_table(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hil gate` (which sets HIL_GATE) has a verdict table of its own: the meta-suite's
    "baseline passed 41" beside the gate's "108 passed" is not printed."""
    hil = pytester.mkdir("tests") / "hil"
    hil.mkdir()
    (hil / "test_guarded.py").write_text("import pytest\n@pytest.mark.guards('no_lwt')\ndef test_good(): pass\n")
    args = ("-p", "no:cacheprovider", "-p", "no:hil", "--import-mode=importlib", "tests", "--firmware", "fw.bin")
    pytester.makeconftest(
        'pytest_plugins = ["tests.meta.table"]\n'
        "def pytest_addoption(parser):\n"
        '    parser.addoption("--firmware")\n'
        "def pytest_configure(config):\n"
        '    config.addinivalue_line("markers", "guards(*recipes): the defects a test guards")\n'
    )
    assert "defects caught by the HIL suites" in pytester.runpytest(*args).stdout.str()
    monkeypatch.setenv("HIL_GATE", "staging")
    result = pytester.runpytest(*args)
    assert result.ret == 0 and "defects caught by the HIL suites" not in result.stdout.str()
