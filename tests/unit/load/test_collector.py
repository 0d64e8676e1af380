"""What the collector needs of the session's mosquitto: new accounts without dropping
anyone, and the broker's dropped-message count."""

from __future__ import annotations

import time
from pathlib import Path

from hil.load.collector import SYS_DROPPED, SYS_TICK, FleetCollector
from hil.load.target import LoadTarget
from hil.services.broker import OBSERVER_USER, MosquittoBroker


def test_mosquitto_takes_new_accounts_without_dropping_anyone_and_shows_its_drop_count(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.add_device("hil-virtual-0")
    broker.start()
    try:
        target = LoadTarget(
            name="mosquitto", host="127.0.0.1", port=broker.plain_port,
            observer_user=OBSERVER_USER, observer_password=broker.observer_password,
        )  # fmt: skip
        with FleetCollector(target, ["fleet-0000"]) as collector:
            assert collector.wait_sys(SYS_DROPPED, count=1, since=0.0, timeout=5)
            assert collector.sys_value(SYS_DROPPED) == 0
            account = broker.add_device("fleet-0000")
            broker.reload()  # returns once the new account can log in
            since = time.monotonic()
            assert collector.wait_sys(SYS_TICK, count=2, since=since, timeout=5)  # sys_interval 1
            assert collector.client.is_connected()  # the reload dropped nobody
        assert account.username == "fleet-0000"
        assert "Reloading config" in broker.log_path.read_text()
    finally:
        broker.kill()
