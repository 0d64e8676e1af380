"""A broker that dies by a signal before it listens, having said nothing, is started once
more (the fork child died before exec); one that says why it failed is not."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from hil.services.broker import BrokerError, MosquittoBroker

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")


def launcher(tmp_path: Path, body: str) -> str:
    script = tmp_path / "mosquitto-launcher"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_silent_crash_before_listening_is_started_once_more(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    exe = launcher(tmp_path, f'[ -e {marker} ] || {{ touch {marker}; kill -SEGV $$; }}\nexec {MOSQUITTO} "$@"')
    broker = MosquittoBroker(tmp_path / "work", executable=exe)
    try:
        broker.start()
        assert marker.exists()
        assert "starting it once more" in broker.log_path.read_text()
    finally:
        broker.kill()


def test_a_crash_every_time_is_an_error(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "work", executable=launcher(tmp_path, "kill -SEGV $$"))
    with pytest.raises(BrokerError, match="exited with -11"):
        broker.start()


def test_a_broker_that_says_why_it_failed_is_not_retried(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "work", executable=launcher(tmp_path, "echo 'Error: bad config' >&2; exit 3"))
    with pytest.raises(BrokerError, match="exited with 3"):
        broker.start()
    assert "starting it once more" not in broker.log_path.read_text()


def test_the_broker_says_its_version_for_the_gates_summary(tmp_path: Path) -> None:
    """`hil gate` names the broker ("mosquitto 2.0.11, embedded") from the session record."""
    import importlib.metadata
    import re

    from hil.services.broker import AmqttBroker

    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", MosquittoBroker(tmp_path / "m").version or "")
    assert MosquittoBroker(tmp_path / "f", executable=launcher(tmp_path, "echo nothing to say")).version is None
    try:
        expected = importlib.metadata.version("amqtt")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("amqtt is not installed")
    assert AmqttBroker(tmp_path / "a").version == expected
