"""In CI: ``pytest tests/hil --port PORT --target esp32c3`` without a rig file, as
pytest-embedded's users run it, and the session's header and summary naming the rig, the
port, the firmware (name, version, sha256) and the broker. The board is a virtual one
reached only through its RFC 2217 port, as a lab host's board would be."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hil.rig.virtual_board import VirtualBoardProcess
from hil.session import resolve_firmware

ROOT = Path(__file__).resolve().parents[2]
VIRTUAL_AP = {"HIL_WIFI_SSID": "hil-lab", "HIL_WIFI_PASSWORD": "hil-lab-password"}


def pytest_run(*args: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HIL_WIFI_SSID", "HIL_WIFI_PASSWORD")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-p", "no:cacheprovider", "-rs",
         "--hil-log-dir", str(tmp_path / "logs"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**base, "HIL_LOCK_DIR": str(tmp_path / "locks"), **(env or {})},
    )  # fmt: skip


def test_port_and_target_run_the_suite_on_a_board_without_a_rig_file(
    virtual_board: VirtualBoardProcess, tmp_path: Path
) -> None:
    assert virtual_board.endpoints is not None
    url = virtual_board.endpoints.serial
    number = url.rsplit(":", 1)[1]
    result = pytest_run("--port", url, "--target", "esp32c3", tmp_path=tmp_path, env=VIRTUAL_AP)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"^1 passed, 2 skipped", out.splitlines()[-1].strip("= ")), out[-2000:]
    firmware = resolve_firmware(None)
    fw = f"firmware: {firmware.name} {firmware.version} (recipe), app sha256 {firmware.sha256}"
    rig = f"port-127.0.0.1-{number} (rfc2217, esp32c3), port {url}"
    # The header, before the first result: what the session is about to use.
    header = out.split("tests/hil/test_smoke.py ", 1)[0]
    assert f"hil rig: {rig}\n" in header, header
    assert f"hil {fw}\n" in header
    assert re.search(r"^hil broker: embedded \((mosquitto|amqtt), started by the session on 127\.0\.0\.1\)$", header, re.M)
    # The summary: what it used (the broker's version and URL now known).
    summary = out.split(" hil session ", 1)[1]
    assert f"rig: {rig}\n" in summary and f"{fw}\n" in summary
    assert re.search(r"^broker: embedded \((mosquitto|amqtt) \S+, mqtt://127\.0\.0\.1:\d+\)$", summary, re.M)


def test_a_wrong_target_or_port_is_a_usage_error_before_anything_starts(tmp_path: Path) -> None:
    for args, env, said in (
        (["--port", "/dev/ttyUSB0", "--target", "esp32"], VIRTUAL_AP, "--target esp32: this framework tests esp32c3 boards only"),
        (["--target", "esp32s2"], {}, "--target esp32s2: this framework tests esp32c3"),
        (["--port", "/dev/ttyUSB0", "--rig", "virtual-0"], VIRTUAL_AP, "give --port or --rig / --rig-tag, not both"),
        (["--port", "/dev/ttyUSB0"], {}, "set $HIL_WIFI_SSID"),
        (["--port", "COM3"], VIRTUAL_AP, "--port COM3: give a local serial device"),
    ):
        result = pytest_run(*args, tmp_path=tmp_path, env=env)
        assert result.returncode == 4, (args, result.stdout[-2000:], result.stderr[-2000:])  # pytest's usage error
        assert said in result.stderr, (args, result.stderr)
    assert not (tmp_path / "logs").exists()  # no session started
