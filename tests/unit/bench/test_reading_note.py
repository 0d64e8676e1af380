"""`hil sensor set`'s note: when the change shows, from what `hil provision` recorded for
the board's port (its §5 settings, never a secret), else the firmware's default."""

from __future__ import annotations

import json
from pathlib import Path

from hil.bench.controls import PROVISIONED_DIR, reading_note, record_provisioning
from hil.device.contract import CONFIG_INT_SETTINGS

PORT = "rfc2217://127.0.0.1:4000"


def test_the_interval_hil_provision_set_is_the_one_said(tmp_path: Path) -> None:
    record_provisioning(tmp_path, PORT, "bench-1", {"measurement_interval_s": 3, "log_level": "info"})
    assert reading_note(tmp_path, PORT) == (
        "the next reading of bench-1 reflects it: within measurement_interval_s = 3 s "
        f"(as hil provision --config set it on {PORT})"
    )
    (recorded,) = (tmp_path / PROVISIONED_DIR).iterdir()
    assert json.loads(recorded.read_text()) == {
        "port": PORT, "device_id": "bench-1", "config": {"measurement_interval_s": 3, "log_level": "info"},
    }  # fmt: skip


def test_without_a_recorded_interval_the_firmware_default_is_said(tmp_path: Path) -> None:
    default = CONFIG_INT_SETTINGS["measurement_interval_s"].default
    for port in (None, PORT, "/dev/ttyUSB0"):
        assert f"within measurement_interval_s = {default} s (the firmware's default" in reading_note(tmp_path, port)
    record_provisioning(tmp_path, "/dev/ttyUSB0", "bench-2", {})  # provisioned without --config
    assert f"= {default} s (the firmware's default" in reading_note(tmp_path, "/dev/ttyUSB0")
    assert "= 3 s" not in reading_note(tmp_path, PORT)  # another port's record is not this one's
