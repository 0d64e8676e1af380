"""The broker-restart storm's arithmetic (no fleet, no broker): the contract's backoff as
bounds on attempts and on the time to all-online, the reconnect rate over time, reordering
told from QoS 1 re-sends, and the chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.load.collector import Reading
from hil.load.storm import (
    RestartStorm,
    failed_attempts,
    listen_overflows,
    longest_pending_delay,
    max_attempts,
    out_of_order,
    peak_rate,
    reconnect_chart,
    reconnect_rate,
)


def storm(**changes: object) -> RestartStorm:
    values: dict[str, object] = {
        "devices": 4, "outage_s": 3.0, "held_s": 1.0, "attempts_in_outage": 8, "max_attempts": 12,
        "all_online_s": 2.0, "bound_s": 14.8, "recovery_s": 2.1, "reconnects": (0.4, 0.9, 1.2, 2.0),
    }  # fmt: skip
    values.update(changes)
    return RestartStorm(**values)  # type: ignore[arg-type]


def test_attempts_allowed_follow_the_backoff_at_its_shortest() -> None:
    # One at once, then after 0.8, 1.6, 3.2, 6.4 ... s (1 s doubling, -20 %): at 0.8, 2.4, 5.6, 12.0.
    assert [max_attempts(s) for s in (0.5, 0.81, 2.39, 2.41, 5.59, 5.61, 11.99, 12.01)] == [1, 2, 2, 3, 3, 4, 4, 5]
    # Past the 30 s cap the delays stop growing: 24 s (30 × 0.8) apart.
    assert max_attempts(24.81 + 24.0 + 24.0) - max_attempts(24.81) == 2


def test_the_longest_pending_delay_is_the_longest_that_can_have_begun() -> None:
    assert longest_pending_delay(0.0) == pytest.approx(1.2)  # the first delay, +20 %
    assert longest_pending_delay(0.8) == pytest.approx(2.4)  # the second can have begun at 0.8 s
    assert longest_pending_delay(5.0) == pytest.approx(4.8)  # the 4 s delay begins at 2.4 s at the earliest
    assert longest_pending_delay(5.61) == pytest.approx(9.6)  # ... the 8 s one at 5.6 s
    assert longest_pending_delay(1000.0) == pytest.approx(36.0)  # the 30 s cap, +20 %


def test_the_reconnect_rate_lists_every_bin_per_second() -> None:
    assert reconnect_rate([0.1, 0.2, 1.2], bin_s=0.5) == [(0.0, 4.0), (0.5, 0.0), (1.0, 2.0)]
    assert reconnect_rate([]) == []
    assert peak_rate([0.1, 0.2, 1.2], bin_s=0.5) == 4.0


def reading(seq: int, at: float, boot: int = 1) -> Reading:
    return Reading(seq=seq, boot=boot, taken=at, received=at, received_mono=at)


def test_a_queue_drained_newest_first_is_out_of_order_and_a_resend_is_not() -> None:
    in_order = [reading(s, float(s)) for s in range(6)]
    resent = [*in_order[:4], reading(2, 4.0), reading(3, 4.1), reading(4, 4.2)]  # QoS 1 re-sends after a reconnect
    lifo = [*in_order[:2], reading(4, 5.0), reading(3, 5.1), reading(2, 5.2)]
    new_boot = [*in_order[:4], reading(0, 5.0, boot=2), reading(1, 5.1, boot=2)]
    found = out_of_order({"a": in_order, "b": resent, "c": lifo, "d": new_boot}, since=0.0)
    assert found == {"c": [3, 2]}
    assert out_of_order({"c": lifo}, since=5.15) == {"c": [2]}  # only what arrived from ``since`` on


def test_failed_attempts_are_the_proxy_connections_that_found_no_broker() -> None:
    timeline = [
        (1.0, "conn 7: upstream 127.0.0.1:1883 failed: [Errno 111] Connection refused"),
        (1.5, "conn 7: reset (no upstream)"),
        (2.0, "conn 8: upstream connected"),
        (3.0, "conn 9: upstream 127.0.0.1:1883 failed: [Errno 111] Connection refused"),
        (9.0, "conn 10: upstream 127.0.0.1:1883 failed: [Errno 111] Connection refused"),
    ]
    assert failed_attempts(timeline, 0.5, 5.0) == 2


def test_a_storm_that_held_has_no_violation_and_each_breach_is_named() -> None:
    assert storm().violations() == []
    assert "13 connection attempts" in storm(attempts_in_outage=13).violations()[0]
    assert "online after 15.00 s > the bound 14.80 s" in storm(all_online_s=15.0).violations()[0]
    assert "2 devices never came back" in storm(all_online_s=None, not_back=("x", "y")).violations()[0]
    assert "out of order" in storm(out_of_order={"fleet-0001": [3]}).violations()[0]
    assert "did not drain" in storm(not_drained=("fleet-0002",)).violations()[0]


def test_the_chart_is_svg_with_a_bar_per_bin_and_the_bound() -> None:
    svg = reconnect_chart(storm(), bin_s=0.5)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == len(reconnect_rate(storm().reconnects, 0.5))
    assert "bound 14.8 s" in svg and root.find(f"{ns}polyline") is not None


def test_the_hosts_accept_queue_overflows_are_read_from_netstat(tmp_path: Path) -> None:
    netstat = tmp_path / "netstat"
    netstat.write_text("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 42 42\nIpExt: InNoRoutes\nIpExt: 0\n")
    assert listen_overflows(netstat) == 42
    assert listen_overflows(tmp_path / "absent") is None
    assert "(7 SYNs dropped at full accept queues meanwhile)" in storm(all_online_s=15.0, listen_overflows=7).violations()[0]
