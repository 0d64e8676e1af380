"""Every `hil` command meets bad input with one line naming the input and the fix, a
non-zero exit (2 for input, 1 for a failed port), no traceback, and nothing changed:
no image written, the state dir's files as they were."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def hil(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HIL_") or k in ("HIL_CACHE_DIR", "HIL_LOCK_DIR")}
    return subprocess.run([sys.executable, "-m", "hil", *args], env={**environ, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# -- hil sim board ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mac", "zz:zz"], "--mac zz:zz: MAC 'zz:zz' is not six colon-separated hex bytes"),
        (["--mac", "01:00:5e:00:00:01"], "is multicast; a base MAC must be unicast"),
    ],
)
def test_sim_board_refuses_a_bad_mac(tmp_path: Path, args: list[str], needle: str) -> None:
    state = tmp_path / "board"
    one_line_error(hil("sim", "board", "--state-dir", str(state), *args), 2, "hil sim board:", needle)
    assert not (state / "flash.bin").exists()


def test_sim_board_refuses_an_unknown_profile_naming_the_known_ones(tmp_path: Path) -> None:
    state = tmp_path / "board"
    result = hil("sim", "board", "--state-dir", str(state), "--profile", "realboard")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'realboard' (choose from 'default', 'real-board')" in result.stderr
    assert not state.exists()


def test_sim_board_refuses_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    one_line_error(hil("sim", "board", "--state-dir", str(tmp_path / "f")), 2, "is a file, not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_sim_board_refuses_a_state_dir_it_cannot_create() -> None:
    one_line_error(hil("sim", "board", "--state-dir", "/proc/hil-board"), 2, "--state-dir /proc/hil-board: cannot create it")


@pytest.mark.parametrize("size", [1000, 8 * 2**20])
def test_sim_board_refuses_a_flash_file_of_the_wrong_size(tmp_path: Path, size: int) -> None:
    (tmp_path / "flash.bin").write_bytes(b"\xff" * size)
    before = digest(tmp_path)
    one_line_error(hil("sim", "board", "--state-dir", str(tmp_path)), 2, "flash.bin: flash image is", "delete the file")
    assert digest(tmp_path) == {**before, **{k: v for k, v in digest(tmp_path).items() if k not in before}}
    assert digest(tmp_path)["flash.bin"] == before["flash.bin"]


def test_sim_board_does_not_write_through_a_symlinked_flash_file(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    state = tmp_path / "board"
    state.mkdir()
    (state / "flash.bin").symlink_to(target)
    one_line_error(hil("sim", "board", "--state-dir", str(state)), 2, "flash.bin is a symlink")
    assert target.read_bytes() == b"keep me"


def test_sim_board_refuses_an_efuse_file_of_the_wrong_size(tmp_path: Path) -> None:
    (tmp_path / "efuse.bin").write_bytes(b"\x00" * 100)
    one_line_error(hil("sim", "board", "--state-dir", str(tmp_path)), 2, "efuse.bin: eFuse file is 100 bytes", "delete it")
    assert (tmp_path / "efuse.bin").read_bytes() == b"\x00" * 100


def test_sim_board_does_not_write_through_a_symlinked_efuse_file(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    state = tmp_path / "board"
    state.mkdir()
    (state / "efuse.bin").symlink_to(target)
    one_line_error(hil("sim", "board", "--state-dir", str(state)), 2, "efuse.bin is a symlink")
    assert target.read_bytes() == b"keep me"


# -- hil provision ------------------------------------------------------------------------
BROKER = ["--broker", "mqtt://127.0.0.1:1883"]


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--device-id", "dev1", "--wifi-ssid", "lab"], {}, "$HIL_WIFI_PASSWORD is not set"),
        (["--device-id", "dev1", "--wifi-password-env", "NOPE_NOT_SET"], {}, "$NOPE_NOT_SET is not set"),
        (["--device-id", "dev1", "--mqtt-password-env", "NOPE_NOT_SET"], {}, "$NOPE_NOT_SET is not set"),
        (["--device-id", "a/b#+"], {}, "--device-id 'a/b#+': a device id is a non-empty MQTT topic level"),
        (["--device-id", "x y"], {}, "--device-id 'x y': a device id is a non-empty MQTT topic level"),
        (["--device-id", "x\ty"], {}, "a device id is a non-empty MQTT topic level"),
        (["--device-id", "hil-observer"], {}, "is the test observer's account"),
    ],
    ids=["wifi-password-unset", "named-wifi-var-unset", "named-mqtt-var-unset", "wildcards", "space", "tab", "observer"],
)
def test_provision_refuses_before_writing_anything(tmp_path: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    out = tmp_path / "nvs.bin"
    one_line_error(hil("provision", *args, *BROKER, "--out", str(out), env=env), 2, "hil provision:", needle)
    assert not out.exists()


def test_provision_with_the_password_set_writes_a_private_image(tmp_path: Path) -> None:
    out = tmp_path / "nvs.bin"
    result = hil("provision", "--device-id", "dev1", "--wifi-ssid", "lab", *BROKER, "--out", str(out),
                 env={"HIL_WIFI_PASSWORD": "s3cret-pass"})  # fmt: skip
    assert result.returncode == 0, result
    assert "s3cret-pass" not in result.stdout + result.stderr
    assert out.stat().st_mode & 0o777 == 0o600


# -- hil monitor ----------------------------------------------------------------------------
def test_monitor_on_a_missing_port_fails(tmp_path: Path) -> None:
    one_line_error(hil("monitor", "--port", "/dev/ttyUSB9", "--timeout", "2"), 1, "--port /dev/ttyUSB9: no such serial port")


# -- hil gate -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tests", "needle"),
    [("[]", "[gate].tests is empty"), ('["tests/hil/test_no_such_suite.py"]', "does not exist")],
    ids=["empty", "missing-file"],
)
def test_gate_refuses_a_profile_whose_tests_run_nothing_meant(tmp_path: Path, tests: str, needle: str) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(f"[gate]\ntests = {tests}\n")
    result = hil("gate", str(profile), "--out", str(tmp_path / "out"))
    one_line_error(result, 2, "hil gate:", needle)
    assert not (tmp_path / "out").exists()


# -- hil flash ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("{dir}@0x10000", "is a directory; name the image file in it"),
        ("{file}@-1", "a negative offset (-1) is not a place in flash"),
        ("{file}@0x1001", "not a multiple of the 0x1000-byte flash sector"),
        ("{file}@ten", "offset 'ten' is not a number"),
        ("{dir}/missing.bin@0x10000", "does not exist"),
    ],
    ids=["directory", "negative", "unaligned", "not-a-number", "missing"],
)
def test_flash_refuses_a_bad_item_before_any_port(tmp_path: Path, item: str, needle: str) -> None:
    image = tmp_path / "app.bin"
    image.write_bytes(b"\xe9" + bytes(255))
    spec = item.format(dir=tmp_path, file=image)
    result = hil("flash", "--port", "/dev/null-no-such-port", spec)
    line = one_line_error(result, 2, "hil flash:", needle)
    assert "0x-" not in line


# -- the pytest plugin: a bad rig file -----------------------------------------------------
@pytest.mark.parametrize(
    ("rig_file", "args", "needle"),
    [
        ('name = "lab"\nkind = "serial"\nchip = "esp32c3"\nport = "/dev/ttyUSB0"\nreset = "clasic"\n', [], "clasic"),
        (None, ["--rig", "no-such-rig"], "no-such-rig"),
    ],
    ids=["typo", "unknown-rig"],
)
def test_a_bad_rig_file_is_one_usage_error_not_one_per_test(
    tmp_path: Path, rig_file: str | None, args: list[str], needle: str
) -> None:
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "r.toml").write_text(rig_file or (ROOT / "rigs" / "virtual.toml").read_text())
    (tmp_path / "test_three.py").write_text("".join(f"def test_{n}(dut):\n    pass\n" for n in ("a", "b", "c")))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tmp_path}", "--rigs-dir", str(rigs),
         *args, "test_three.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error
    assert needle in result.stderr and result.stderr.count("ERROR:") == 1, result.stderr
    assert "test_a" not in result.stdout  # nothing ran, nothing was set up
