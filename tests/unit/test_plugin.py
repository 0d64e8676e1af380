"""The pytest plugin, driven through pytester: options, markers, skips, reservation errors."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.rig.reservation import reserve
from hil.rig.rigfile import load_rigs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path / "cache"))

    def go(*args: str) -> tuple[pytest.RunResult, float]:
        started = time.monotonic()
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--rootdir={pytester.path}",
            f"--hil-log-dir={tmp_path / 'logs'}", *args
        )
        return result, time.monotonic() - started

    return go


def test_options_are_documented(run) -> None:
    result, _ = run("--help")
    text = result.stdout.str()
    for option in ("--rig=", "--rig-tag", "--firmware", "--broker", "--keep-on-failure", "--keep-timeout",
                   "--hil-log-dir", "--rig-wait", "--rig-profile"):  # fmt: skip
        assert option in text, option


def test_keep_timeout_is_a_few_minutes_in_ci_else_until_ctrl_c(run) -> None:
    from hil.pytest_plugin import KEEP_TIMEOUT_CI_S, keep_timeout

    assert keep_timeout(None, {}) is None  # at a desk: until Ctrl-C
    assert keep_timeout(None, {"CI": "true"}) == KEEP_TIMEOUT_CI_S == 300.0
    assert keep_timeout(None, {"CI": "false"}) is None and keep_timeout(None, {"CI": "0"}) is None
    assert keep_timeout(5.0, {"CI": "1"}) == 5.0 and keep_timeout(float("inf"), {"CI": "1"}) is None
    result, _ = run("--keep-on-failure", "--keep-timeout", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "seconds > 0" in result.stderr.str()


def test_missing_capability_skips_with_the_reason(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.requires("teleportation")
        def test_needs_it(): pass
        def test_needs_nothing(): pass
        """
    )
    result, _ = run("-rs", f"--rigs-dir={ROOT / 'rigs'}")
    result.assert_outcomes(passed=1, skipped=1)
    assert "lacks capabilities ['teleportation']" in result.stdout.str()
    assert "Unknown pytest.mark" not in result.stdout.str()


def test_unknown_rig_is_an_error_naming_the_rigs_that_exist(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(rig): pass")
    result, seconds = run(f"--rigs-dir={ROOT / 'rigs'}", "--rig", "virtaul-0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # one usage error before any test, not one per test
    result.stderr.fnmatch_lines(["*virtaul-0*"])
    assert seconds < 10  # a whole pytest process, start to finish: nothing waited on a rig
    assert "virtual-0" in result.stderr.str()


def test_rig_profile_chooses_how_real_the_virtual_boards_of_the_run_are(
    run, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    rigs = pytester.mkdir("profiled")
    (rigs / "virtual.toml").write_text('name = "sim"\nkind = "virtual"\n')
    (rigs / "slow.toml").write_text('name = "slow"\nkind = "virtual"\nprofile = "real-board"\n')
    pytester.makepyfile(
        """
        import os
        def test_profile(rig):
            assert rig.profile == os.environ["EXPECTED_PROFILE"], rig
        """
    )
    monkeypatch.setenv("EXPECTED_PROFILE", "default")
    result, _ = run(f"--rigs-dir={rigs}", "--rig", "sim")
    result.assert_outcomes(passed=1)  # the rig file's own
    monkeypatch.setenv("EXPECTED_PROFILE", "real-board")
    result, _ = run(f"--rigs-dir={rigs}", "--rig", "slow")
    result.assert_outcomes(passed=1)
    result, _ = run(f"--rigs-dir={rigs}", "--rig", "sim", "--rig-profile", "real-board")
    result.assert_outcomes(passed=1)  # the run's, over the rig file's
    monkeypatch.setenv("EXPECTED_PROFILE", "default")
    result, _ = run(f"--rigs-dir={rigs}", "--rig", "slow", "--rig-profile", "default")
    result.assert_outcomes(passed=1)
    typo, _ = run(f"--rigs-dir={rigs}", "--rig-profile", "realboard")
    assert typo.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'realboard' (choose from 'default', 'real-board')" in typo.stderr.str()


def test_a_typo_in_a_rig_file_names_file_field_and_fix(run, pytester: pytest.Pytester) -> None:
    rigs = pytester.mkdir("myrigs")
    (rigs / "bench.toml").write_text('name = "bench"\nkind = "virtaul"\n')
    pytester.makepyfile("def test_x(rig): pass")
    result, _ = run(f"--rigs-dir={rigs}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stderr.str()
    assert "bench.toml" in text and "kind" in text and "virtual" in text


def test_a_busy_rig_is_never_shared_the_tests_skip_saying_who_holds_it(
    run, pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rigs = pytester.mkdir("onerig")
    (rigs / "v.toml").write_text('name = "solo"\nkind = "virtual"\n')
    pytester.makepyfile("def test_x(rig): pass")
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    held = reserve(load_rigs(rigs), lock_dir=tmp_path / "locks")
    try:
        result, _ = run("-rs", f"--rigs-dir={rigs}")
    finally:
        held.release()
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no rig available*"])


def test_markers_are_registered(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.destructive
        @pytest.mark.slow
        @pytest.mark.gate_security
        def test_x(): pass
        """
    )
    pytester.makeini("[pytest]\naddopts = --strict-markers\n")
    result, _ = run()
    result.assert_outcomes(passed=1)


def test_n_auto_starts_one_worker_per_matching_rig(run, pytester: pytest.Pytester) -> None:
    rigs = pytester.mkdir("labrigs")
    for n in range(3):
        (rigs / f"bench{n}.toml").write_text(
            f'name = "bench-{n}"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://127.0.0.1:{4000 + n}"\n'
            'reset = "classic"\nnetwork = { ssid = "lab", broker_host = "127.0.0.1" }\ncapabilities = []\n'
            'tags = ["lab-a"]\n'
        )
    pytester.makepyfile("def test_x(): pass")
    result, _ = run(f"--rigs-dir={rigs}", "--rig-tag", "lab-a", "-n", "auto")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*3 workers*"])
    typo, _ = run(f"--rigs-dir={rigs}", "--rig-tag", "lab-b", "-n", "auto")
    assert typo.ret != 0 and "no rig with tag 'lab-b'" in typo.stderr.str() + typo.stdout.str()


def test_a_rig_whose_port_is_dead_is_taken_out_with_one_clear_report(run, pytester: pytest.Pytester) -> None:
    rigs = pytester.mkdir("deadrigs")
    (rigs / "lab.toml").write_text(
        'name = "lab-0"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "rfc2217://127.0.0.1:9"\n'
        'reset = "classic"\nnetwork = { ssid = "lab", broker_host = "127.0.0.1" }\ncapabilities = []\n'
        'tags = ["lab"]\n'
    )
    pytester.makepyfile("def test_one(dut): pass\ndef test_two(dut): pass\ndef test_no_rig_needed(): pass")
    junit = pytester.path / "junit.xml"
    result, seconds = run(f"--rigs-dir={rigs}", "--rig-tag", "lab", f"--junitxml={junit}")
    result.assert_outcomes(passed=1, errors=2)
    text = result.stdout.str()
    assert text.count("rigs taken out of this run (infrastructure)") == 1
    assert "rig lab-0 taken out of this run: ConsoleError: cannot open console port" in text
    assert seconds < 60
    # JUnit readers (the meta-suite, CI dashboards) see it too: a property on each case.
    cases = {case.get("name"): case for case in ET.parse(junit).iter("testcase")}
    for name in ("test_one", "test_two"):
        props = {p.get("name"): p.get("value") for p in cases[name].iter("property")}
        assert "rig lab-0 taken out of this run" in props.get("hil_rig_taken_out", ""), props
    assert not list(cases["test_no_rig_needed"].iter("property"))


def test_power_and_sensor_fixtures_on_a_real_rig_use_its_rig_files_backends(run, pytester: pytest.Pytester) -> None:
    rigs = pytester.mkdir("benchrigs")
    (rigs / "bench.toml").write_text(
        'name = "bench-1"\nkind = "serial"\nchip = "esp32c3"\nport = "/dev/ttyUSB7"\nreset = "classic"\n'
        'network = { ssid = "lab", broker_host = "10.0.0.2" }\ncapabilities = ["power_control"]\n'
        'power = { kind = "gpio-expander", bus = 1, address = 0x20, pin = 3, chip = "pcf8574" }\n'
        'sensor = { kind = "reference-bme280", bus = 1, address = 0x76 }\n'
    )
    # The host's I2C bus, faked at smbus2's boundary: a reference BME280 and a PCF8574.
    pytester.makeconftest(
        """
        import hil.rig.wiring
        from hil.bme280.compensation import Environment
        from hil.sim.bme280 import BME280, SimulatedSMBus

        class Bus(SimulatedSMBus):
            writes = []
            def write_byte(self, addr, value, force=None):
                self.writes.append((addr, value))

        BUS = Bus(devices=[BME280(environment=Environment(21.0, 45.0, 1005.0))])
        hil.rig.wiring.open_smbus = lambda number: BUS
        """
    )
    pytester.makepyfile(
        """
        import pytest
        from conftest import BUS

        @pytest.mark.requires("power_control")
        def test_power_cycles_the_expander_pin(power):
            power.cycle(0.0)
            assert BUS.writes == [(0x20, 0xF7), (0x20, 0xFF)]

        def test_the_reference_sensor_reads_the_room(sensor):
            assert abs(sensor.get().temperature_c - 21.0) < 0.05
        """
    )
    result, _ = run(f"--rigs-dir={rigs}", "--rig", "bench-1")
    result.assert_outcomes(passed=2)


def test_firmware_option_checks_an_app_image_before_any_rig_is_touched(run, pytester: pytest.Pytester) -> None:
    from hil.images.app import AppDescriptor, build_app_image

    pytester.makepyfile("def test_x(dut): pass")
    missing, seconds = run(f"--rigs-dir={ROOT / 'rigs'}", "--firmware", "build/nothing.bin")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR and seconds < 10
    assert "--firmware: build/nothing.bin: no such file" in missing.stderr.str()
    wrong = pytester.path / "s3.bin"
    wrong.write_bytes(build_app_image(AppDescriptor(version="9.9.9", project_name="x"), chip_id=9))
    chip, _ = run(f"--rigs-dir={ROOT / 'rigs'}", "--firmware", str(wrong))
    assert chip.ret == pytest.ExitCode.USAGE_ERROR and "not the ESP32-C3" in chip.stderr.str()
    corrupt = pytester.path / "corrupt.bin"
    data = bytearray(build_app_image(AppDescriptor(version="9.9.9", project_name="x")))
    data[40] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    bad, _ = run(f"--rigs-dir={ROOT / 'rigs'}", "--firmware", str(corrupt))
    assert bad.ret == pytest.ExitCode.USAGE_ERROR and "corrupt image" in bad.stderr.str()
    big = pytester.path / "big.bin"
    big.write_bytes(bytes([0xE9]) + bytes(0x300000))  # on the flash, not in the app partition
    size, _ = run(f"--rigs-dir={ROOT / 'rigs'}", "--firmware", str(big))
    assert size.ret == pytest.ExitCode.USAGE_ERROR and "do not fit" in size.stderr.str()
    recipe, _ = run(f"--rigs-dir={ROOT / 'rigs'}", "--firmware", "baselin")
    assert recipe.ret == pytest.ExitCode.USAGE_ERROR and "no recipe 'baselin'" in recipe.stderr.str()


def test_an_app_image_is_flashed_with_the_frameworks_bootloader_and_fresh_dut_boots_it_again(
    run, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    import hashlib

    from hil.firmware.catalog import build_images, load_recipes

    build_images(load_recipes(), ["baseline"], tmp_path / "app")
    app = tmp_path / "app" / "baseline.bin"
    pytester.makepyfile(
        f"""
        from hil.device import contract

        def versions(console):
            return [m["version"] for line in console.lines() if (m := contract.APP_VERSION.search(line))]

        def test_firmware_says_what_is_under_test(firmware):
            assert (firmware.kind, firmware.name, firmware.version) == ("image", "env-monitor", "1.0.0")
            assert [f.offset for f in firmware.files] == [0x0, 0x8000, 0xD000, 0x10000]
            assert str(firmware.files[-1].path) == {str(app)!r} and firmware.sha256 == {hashlib.sha256(app.read_bytes()).hexdigest()!r}

        def test_the_image_is_what_booted(dut, firmware, console):
            assert dut.version == firmware.version and versions(console)[-1] == firmware.version

        def test_fresh_dut(fresh_dut, console, firmware):
            assert fresh_dut.version == firmware.version
            assert len(versions(console)) >= 2  # the boot after flashing, then the fresh one

        def test_a_fresh_boot_by_power_cycle(hil_session, console):
            seen = len(versions(console))
            hil_session.fresh_boot("power")
            assert len(versions(console)) == seen + 1
        """
    )
    result, seconds = run(f"--rigs-dir={ROOT / 'rigs'}", "--firmware", str(app))
    result.assert_outcomes(passed=4)
    assert seconds < 90
