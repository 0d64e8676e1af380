"""A session's setup steps are methods; its properties only report what a step did."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hil.errors import is_usage
from hil.session import (
    RigSession,
    SessionError,
    SessionOptions,
    SessionStateError,
    SessionUsageError,
)

RIG = """name = "bench-1"
kind = "serial"
chip = "esp32c3"
port = "/dev/ttyUSB7"
reset = "classic"
network = { ssid = "lab", broker_host = "10.0.0.2" }
"""


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RigSession:
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "rigs").mkdir()
    (tmp_path / "rigs" / "bench-1.toml").write_text(RIG)
    return RigSession(SessionOptions(rigs_dir=tmp_path / "rigs", log_dir=tmp_path / "logs", rig_name="bench-1"))


def test_reading_state_before_its_step_says_which_step(session: RigSession, tmp_path: Path) -> None:
    with pytest.raises(SessionStateError, match=r"rig read before reserve\(\)"):
        _ = session.rig
    with pytest.raises(SessionStateError, match=r"port read before start_port\(\)"):
        _ = session.port
    with pytest.raises(SessionStateError, match=r"run_dir read before prepare_run_dir\(\)"):
        _ = session.run_dir
    with pytest.raises(SessionStateError, match=r"rig read before reserve\(\)"):
        _ = session.device_id
    # Nothing was reserved, started or created by looking.
    assert session.reserved is None and session.board is None
    assert not (tmp_path / "cache").exists() and not (tmp_path / "locks").exists()


def test_the_steps_in_order(session: RigSession) -> None:
    try:
        rig = session.reserve()
        assert session.reserve() is rig and session.rig is rig and session.device_id == "hil-bench-1"
        assert session.control is None  # a real rig: no board process to start
        assert session.start_port() == "/dev/ttyUSB7" == session.port
        run_dir = session.prepare_run_dir()
        assert session.prepare_run_dir() == run_dir == session.run_dir
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    finally:
        session.close()
    assert not run_dir.exists()  # removed by close



def test_what_a_rig_lacks_is_a_usage_error_naming_the_rig(session: RigSession) -> None:
    """The session asks the rig's kind (`hil.rig.attached`) and says its refusals as its own."""
    try:
        with pytest.raises(SessionUsageError, match="rig 'bench-1': no Wi-Fi control"):
            session.wifi()
        with pytest.raises(SessionUsageError, match="no power backend"):
            session.power()
        assert is_usage(session_error(session.sensor))
    finally:
        session.close()


def session_error(call: Callable[[], object]) -> SessionError:
    with pytest.raises(SessionError) as info:
        call()
    return info.value
