"""What the collector needs of the session's mosquitto: new accounts without dropping
anyone, and the broker's dropped-message count."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hil.load.collector import SYS_DROPPED, SYS_TICK, FleetCollector
from hil.load.errors import FleetBroken
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


def test_an_aborted_collector_stops_every_wait_with_the_error_it_was_given(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        target = LoadTarget(
            name="mosquitto", host="127.0.0.1", port=broker.plain_port,
            observer_user=OBSERVER_USER, observer_password=broker.observer_password,
        )  # fmt: skip
        with FleetCollector(target, ["fleet-0000"]) as collector:
            broken = FleetBroken("fleet shard shard-0 died")
            waiting: list[BaseException] = []

            def wait() -> None:
                try:
                    collector.wait_each(lambda d: collector.count(d) >= 1, timeout=60)
                except FleetBroken as exc:
                    waiting.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            collector.abort(broken)
            waiter.join(10)
            assert waiting == [broken]  # the wait in progress, long before its 60 s
            with pytest.raises(FleetBroken):  # and every later one
                collector.wait_each(lambda d: True, timeout=60)
            with pytest.raises(FleetBroken):
                collector.wait_sys(SYS_TICK, count=100, since=0.0, timeout=60)
    finally:
        broker.kill()
