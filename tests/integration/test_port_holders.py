"""A port held by another program is named with its pid and command on every command that
opens one: `hil flash`, `hil provision`, `hil monitor`, `hil rigs check`, and what a
session opens (the console) or flashes and erases with (the flasher). The holder is a
real `hil monitor` on a virtual board's RFC 2217 port, the issue's case (#16: flashing
while `hil monitor` was open failed with "Broken pipe" and a generic hint)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.link.console import Console, ConsoleError
from hil.link.flash_errors import FlashPortBusyError
from hil.link.flasher import Flasher
from hil.rig.virtual_board import VirtualBoardProcess

ROOT = Path(__file__).resolve().parents[2]
ROM_BANNER = "ESP-ROM:"  # the monitor's reset on start booted the board: it has the port


def hil(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks"),
           "HIL_STATE_DIR": str(tmp_path / "bench")}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "hil", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def held(virtual_board: VirtualBoardProcess) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The board's port, held by `hil monitor` (a subprocess running esp-idf-monitor)."""
    assert virtual_board.endpoints is not None
    url = virtual_board.endpoints.serial
    monitor = subprocess.Popen(
        [sys.executable, "-m", "hil", "monitor", "--port", url, "--timeout", "120"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert monitor.stdout is not None
        seen = []
        for line in monitor.stdout:  # ends at EOF if the monitor fails: then the assert says why
            seen.append(line)
            if ROM_BANNER in line:
                break
        assert any(ROM_BANNER in line for line in seen), "".join(seen)
        yield url, monitor
    finally:
        monitor.terminate()
        monitor.wait(timeout=30)


def _names_the_monitor(message: str, monitor: subprocess.Popen[str]) -> None:
    assert "is busy" in message, message
    assert "(python -m esp_idf_monitor --port rfc2217://127.0.0.1:" in message, message
    assert f"run by pid {monitor.pid} (python -m hil monitor --port" in message, message
    assert "Broken pipe" not in message.split("is held by")[0]


def test_bench_commands_name_the_monitor_holding_the_port(
    held: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, monitor = held
    for command, nothing in (
        (["flash", "--port", url, "--recipe", "baseline"], "Nothing was flashed."),
        (["monitor", "--port", url, "--timeout", "5"], "No monitor was started."),
    ):
        result = hil(*command, tmp_path=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        _names_the_monitor(result.stderr, monitor)
        assert nothing in result.stderr


def test_rigs_check_names_the_holder_of_an_rfc2217_rig_s_port(
    held: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, monitor = held
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "lab-x.toml").write_text(
        f'name = "lab-x"\nkind = "rfc2217"\nchip = "esp32c3"\nport = "{url}"\n'
        'network = { ssid = "lab", broker_host = "10.0.0.2" }\n'
    )
    result = hil("rigs", "check", "lab-x", "--rigs-dir", str(rigs), tmp_path=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = result.stdout.strip().splitlines()[-1]
    assert failed.split(":")[0].split() == ["FAIL", "port", "free"], result.stdout
    _names_the_monitor(failed, monitor)


def test_what_a_session_opens_names_the_holder(held: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    url, monitor = held
    with pytest.raises(ConsoleError) as console:
        Console(url, tmp_path / "console.log").close()
    # Whichever way pyserial saw the refusal (a broken pipe, or "does not seem to support
    # RFC2217" when the server's close came after its first writes), the holder is named.
    _names_the_monitor(str(console.value), monitor)
    with pytest.raises(FlashPortBusyError) as erase:
        Flasher().erase_flash(url)
    _names_the_monitor(str(erase.value), monitor)
    assert "Nothing was flashed." in str(erase.value)
