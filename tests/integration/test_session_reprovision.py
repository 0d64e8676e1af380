"""RigSession.reprovision / erase_flash on a virtual rig: another NVS image (or none) and
a blank chip are what the device then boots with, and `restore` brings the session's back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hil.device import contract
from hil.session import RigSession, SessionOptions

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_reprovision_and_erase_then_restore(tmp_path: Path) -> None:
    session = RigSession(SessionOptions(rigs_dir=ROOT / "rigs", log_dir=tmp_path / "logs"))
    try:
        dut = session.dut()
        console = dut.console
        prov = session.device_provisioning()
        assert prov.device_id == dut.device_id and prov.ota_pubkey == session.signer.public_pem

        since = session.reprovision(None)
        console.expect(contract.NOT_PROVISIONED, timeout=30, since=since)

        other = dataclasses.replace(prov, device_id="dev-other", mqtt_pass="other-secret-pass")
        since = session.reprovision(other)
        console.expect(r"I \(\d+\) app: device_id=dev-other ", timeout=30, since=since)
        assert "other-secret-pass" not in session.redactor("mqtt_pass=other-secret-pass")

        since = session.erase_flash()
        console.expect(r"invalid header: 0xffffffff", timeout=30, since=since)

        mark = session.mqtt().mark()
        session.restore()
        status = session.mqtt().collect(contract.status_topic(dut.device_id), since=mark)
        assert status and status[-1].json()["state"] == "online"
    finally:
        session.close()
