"""A remote lab host as labgrid's exporter runs one: ser2net serving a board's UART as
RFC 2217 on a TCP port. On loopback, with a virtual board behind ser2net: the real
esptool flashes and resets through it, and a rig of kind "rfc2217" naming that port runs
the HIL smoke suite (flash, boot, console, online over MQTT)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.firmware.catalog import cached_build
from hil.rig.ser2net import Ser2net
from hil.rig.virtual_board import VirtualBoardProcess

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ser2net") is None, reason="ser2net is not installed (setup.sh installs it)"),
]


@pytest.fixture
def lab_port(tmp_path: Path) -> Iterator[tuple[str, VirtualBoardProcess]]:
    board = VirtualBoardProcess(tmp_path / "board")
    endpoints = board.start()
    try:
        with Ser2net(tmp_path / "ser2net", {"board0": endpoints.serial}) as lab:
            yield lab.url("board0"), board
    finally:
        board.stop()


def test_esptool_flashes_and_resets_through_ser2net(lab_port: tuple[str, VirtualBoardProcess]) -> None:
    url, board = lab_port
    images = cached_build()
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "--port", url, "write-flash", "@flash_args"],
        cwd=images, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Hash of data verified." in result.stdout and "Hard resetting via RTS pin" in result.stdout
    assert board.control is not None
    # The RTS pulse reached the board through ser2net: it booted the app just written.
    board.control.wait_tx(r"App version:\s+1\.0\.0", timeout=30)


def test_the_smoke_suite_runs_on_an_rfc2217_rig_behind_ser2net(lab_port: tuple[str, VirtualBoardProcess], tmp_path: Path) -> None:
    url, _ = lab_port
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "lab.toml").write_text(
        'name = "lab-0"\nkind = "rfc2217"\nchip = "esp32c3"\n'
        f'port = "{url}"\nreset = "classic"\n'
        'network = { ssid = "hil-lab", broker_host = "127.0.0.1" }\ncapabilities = []\ntags = ["lab"]\n'
    )
    env = {
        **os.environ,
        "HIL_WIFI_PASSWORD": "hil-lab-password",  # the virtual AP's; a real lab's comes from CI secrets
        "HIL_CACHE_DIR": str(tmp_path / "cache"),
        "HIL_LOCK_DIR": str(tmp_path / "locks"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-p", "no:cacheprovider", "-q", "-rs",
         "--rigs-dir", str(rigs), "--rig-tag", "lab", "--hil-log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    # The online test ran on the remote rig; the others need capabilities it does not declare.
    assert "1 passed, 2 skipped" in result.stdout, result.stdout[-2000:]
    assert "lacks capabilities" in result.stdout
