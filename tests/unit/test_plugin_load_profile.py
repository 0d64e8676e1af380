"""The plugin's ``--hil-load-profile`` option and ``load_profile`` fixture: the profile a
load run is given (CI-sized without the option; a gate profile's ``[load]`` table with it)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    pytester.makepyfile(
        """
        def test_profile(load_profile):
            print("LOAD", load_profile.devices, load_profile.duration_s, load_profile.max_p99_latency_s)
        """
    )

    def go(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--rootdir={pytester.path}", "-s", *args
        )

    return go


def test_without_a_load_profile_the_run_is_ci_sized(run) -> None:
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOAD 20 15.0 1.0*"])


def test_the_load_profile_option_reads_a_gate_profiles_load_table(run, tmp_path: Path) -> None:
    profile = tmp_path / "mine.toml"
    profile.write_text("[gate]\n[load]\ndevices = 7\nduration_s = 4\nmax_p99_latency_s = 0.25\n")
    run(f"--hil-load-profile={profile}").stdout.fnmatch_lines(["*LOAD 7 4.0 0.25*"])
    run(f"--hil-load-profile={ROOT / 'gates' / 'load.toml'}").stdout.fnmatch_lines(["*LOAD 200 60.0*"])


@pytest.mark.parametrize(
    ("text", "says"),
    [("[gate]\n", "has no [load] table"), ("[gate]\n[load]\ndevices = -1\n", "[load].devices = -1")],
)
def test_a_bad_load_profile_is_a_usage_error(run, tmp_path: Path, text: str, says: str) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_text(text)
    result = run(f"--hil-load-profile={profile}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert says in result.stderr.str() and str(profile) in result.stderr.str()
