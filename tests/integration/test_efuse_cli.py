"""The real espefuse CLI, unmodified, against a virtual board over RFC 2217.

A C3 v0.4 leaves the factory with BLOCK1/BLOCK2 burned (MAC, revision, package, a
unique id, ADC and temperature calibration); BLOCK3 is the user's to burn, once, bits
only ever set; what is burned is kept by the board like its flash, across power cycles
and restarts of the board process.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hil.rig.virtual_board import VirtualBoardProcess

pytestmark = [pytest.mark.esptool]

MAC = "58:cf:79:a1:b2:c4"
USER_DATA = b"board 17, calibrated 2026-03-01\x00"


def espefuse(board: VirtualBoardProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("espefuse", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "espefuse"]
    assert board.endpoints is not None
    result = subprocess.run(
        [*cmd, "--port", board.endpoints.serial, *args], capture_output=True, text=True, timeout=240, check=False
    )
    if check:
        assert result.returncode == 0, f"espefuse {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def field(summary: str, name: str) -> str:
    """The value of one field in ``espefuse summary``: printed as ``name (BLOCKn)``, the
    description (51 columns), then ``= value``, or the value alone on the next line."""
    lines = summary.splitlines()
    at = next((i for i, line in enumerate(lines) if re.match(rf"{name} \(BLOCK\d+\) ", line)), None)
    assert at is not None, f"no {name} in:\n{summary}"
    value = lines[at][102:] if lines[at][102:104] == "= " else lines[at + 1].strip()
    assert value.startswith("= "), (name, lines[at : at + 2])
    return value[2:].strip()


def test_summary_shows_identity_and_calibration_of_a_c3_v0_4(virtual_board_factory) -> None:
    board = virtual_board_factory(mac=MAC)
    out = espefuse(board, "summary").stdout
    unique_id = field(out, "OPTIONAL_UNIQUE_ID")
    assert re.fullmatch(r"(?:[0-9a-f]{2} ){16}R/W", unique_id) and unique_id != "00 " * 16 + "R/W", unique_id
    assert field(out, "BLK_VERSION_MAJOR").startswith("With calibration")
    assert field(out, "MAC").startswith(f"{MAC} (OK)")
    assert field(out, "WAFER_VERSION_MINOR").startswith("4 ")
    assert field(out, "PKG_VERSION").startswith("0 ")  # ESP32-C3 (QFN32), as esptool prints
    assert re.match(r"-\d+(\.\d+)? R/W", field(out, "TEMP_CALIB")), field(out, "TEMP_CALIB")
    for name in ("OCODE", "ADC1_INIT_CODE_ATTEN0", "ADC1_CAL_VOL_ATTEN3", "K_RTC_LDO"):
        assert not field(out, name).startswith("0 "), (name, field(out, name))
    assert "Calibration fuses:" in out

    # The same chip a second time: the unique id is the chip's, not the run's.
    assert field(espefuse(board, "summary").stdout, "OPTIONAL_UNIQUE_ID") == unique_id


def test_burn_block_data_is_read_back_and_survives_power_cycles_and_restarts(
    virtual_board_factory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "board"
    board = virtual_board_factory(mac=MAC, state_dir=state_dir)
    data = tmp_path / "usr.bin"
    data.write_bytes(USER_DATA)
    expected = " ".join(f"{b:02x}" for b in USER_DATA) + " R/W"
    assert field(espefuse(board, "summary").stdout, "BLOCK_USR_DATA") == "00 " * 32 + "R/W"

    burned = espefuse(board, "--do-not-confirm", "burn-block-data", "BLOCK_USR_DATA", str(data))
    assert "BURN BLOCK3  - OK" in burned.stdout, burned.stdout
    assert field(espefuse(board, "summary").stdout, "BLOCK_USR_DATA") == expected
    assert "No errors detected" in espefuse(board, "check-error").stdout

    assert board.control is not None
    board.control.request("power", action="cycle")  # the rig's power switch
    assert field(espefuse(board, "summary").stdout, "BLOCK_USR_DATA") == expected

    board.stop()  # the board process goes away (the lab host reboots) ...
    again = virtual_board_factory(mac=MAC, state_dir=state_dir)  # ... and comes back
    assert field(espefuse(again, "summary").stdout, "BLOCK_USR_DATA") == expected

    # eFuses only go 0 -> 1: espefuse refuses to burn other data over it.
    other = tmp_path / "other.bin"
    other.write_bytes(b"\xff" * 32)
    refused = espefuse(again, "--do-not-confirm", "burn-block-data", "BLOCK_USR_DATA", str(other), check=False)
    assert refused.returncode != 0
    assert field(espefuse(again, "summary").stdout, "BLOCK_USR_DATA") == expected
