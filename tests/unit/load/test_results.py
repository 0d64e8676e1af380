"""A load run's arithmetic (no fleet, no broker): latency and its basis, the devices' own
rate, seq-gap loss against the devices' own drop counts, thresholds in words, "unknown"
never 0."""

from __future__ import annotations

import json

import pytest

from hil.load.collector import Reading
from hil.load.results import LoadResult, Storm, device_rates, latency, loss, percentile
from hil.reporting.gate import LoadProfile


def reading(seq: int, *, taken: float = 100.0, delay: float = 0.01, boot: int = 1) -> Reading:
    return Reading(seq=seq, boot=boot, taken=taken + seq, received=taken + seq + delay, received_mono=10.0 + seq)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([3.0], 99) == 3.0


def test_latency_is_receive_time_minus_the_device_timestamp_within_the_window() -> None:
    readings = {"fleet-0000": [reading(s, delay=0.002 * (s + 1)) for s in range(10)]}
    result = latency(readings, since=10.0, until=14.0)  # seqs 0..4 arrived in the window
    assert result.samples == 5 and "clocks agree" in result.basis
    assert result.p50_s == pytest.approx(0.006) and result.p99_s == pytest.approx(0.010)


def test_a_device_clock_behind_the_host_gives_latency_relative_to_its_best_reading() -> None:
    readings = {
        "fleet-0000": [reading(s, taken=1000.0, delay=-50.0 + 0.01 * s) for s in range(5)],  # clock 50 s ahead
        "fleet-0001": [reading(s, delay=0.01) for s in range(5)],
    }
    result = latency(readings, since=0.0, until=100.0)
    assert "device clocks differ" in result.basis and result.p99_s == pytest.approx(0.04)
    assert latency({"fleet-0000": []}, 0.0, 1.0).p99_s is None


def test_the_devices_own_rate_comes_from_their_timestamps() -> None:
    slow = [Reading(s, 1, 100.0 + 1.25 * s, 100.0 + 1.25 * s, 10.0 + s) for s in range(9)]
    readings = {"fleet-0000": [reading(s) for s in range(9)], "fleet-0001": slow}
    assert device_rates(readings, 10.0, 18.0) == (pytest.approx(0.9), pytest.approx(0.8))
    assert device_rates({"fleet-0000": [reading(0)]}, 0.0, 100.0) is None


def test_loss_is_seq_gaps_and_silent_loss_is_what_the_devices_did_not_count() -> None:
    readings = {
        "fleet-0000": [reading(s) for s in (0, 1, 2, 4, 5)],  # 3 lost
        "fleet-0001": [reading(s) for s in (0, 1, 1, 2)],  # a QoS 1 duplicate, no loss
        "fleet-0002": [reading(0), reading(1), reading(0, boot=2)],  # rebooted
    }
    health = {d: (1.0, {"dropped_readings": 0}) for d in readings}
    health["fleet-0000"] = (1.0, {"dropped_readings": 1})
    found = loss(readings, health)
    assert (found.expected, found.received, found.lost, found.duplicates, found.reboots) == (6 + 3 + 3, 11, 1, 1, 1)
    assert (found.visible, found.silent) == (1, 0)
    assert dict(found.worst) == {"fleet-0000": [3]}
    unknown = loss(readings, {})  # no health from anyone: the split is unknown, not 0
    assert unknown.visible is None and unknown.silent is None


def result(**changes: object) -> LoadResult:
    base = LoadResult(
        broker="mosquitto",
        app="baseline",
        devices=2,
        rate_hz=1.0,
        duration_s=15.0,
        startup_s=1.0,
        window_s=15.0,
        readings_in_window=30,
        throughput_msgs_per_s=2.0,
        expected_msgs_per_s=2.0,
        latency=latency({"fleet-0000": [reading(0)]}, 0.0, 100.0),
        loss=loss({"fleet-0000": [reading(0), reading(1)]}, {"fleet-0000": (1.0, {"dropped_readings": 0})}),
        storm=Storm(connections_reset=2, reconnected_s=1.1, recovery_s=1.2),
        broker_dropped=0,
        fleet_cpu_s=1.0,
        fleet_cpu_cores=0.05,
        fleet_memory={"VmRSS": 2 * 4096 * 1024},
    )
    return LoadResult(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_thresholds_are_judged_in_words() -> None:
    profile = LoadProfile(max_storm_recovery_s=1.0, max_p99_latency_s=0.005)
    assert result().violations(LoadProfile()) == []
    problems = result(broker_dropped=7).violations(profile)
    assert any("storm recovery 1.20 s > max_storm_recovery_s 1.0 s" in p for p in problems)
    assert any("p99 latency 0.010 s > max_p99_latency_s 0.005 s" in p for p in problems)
    assert any("broker dropped 7 messages" in p for p in problems)
    lost = loss({"fleet-0000": [reading(0), reading(2)]}, {})
    assert "loss 1 of 3 readings" in result(loss=lost).violations(LoadProfile())[0]
    # no reading lost, but a tenth of the rate missing: slowed down, not held
    slow = result(throughput_msgs_per_s=1.8).violations(LoadProfile())
    assert slow == ["throughput 1.8 msgs/s is 90.0% of the nominal 2.0 < min_throughput_ratio 95%"]
    assert result(throughput_msgs_per_s=1.8).violations(LoadProfile(min_throughput_ratio=0.9)) == []


def test_the_json_says_unknown_rather_than_zero() -> None:
    data = result(broker_dropped=None, loss=loss({"fleet-0000": [reading(0)]}, {})).to_json()
    assert data["broker_dropped"] == "unknown" and data["loss"]["visible"] == "unknown"
    assert data["rss_per_device_bytes"] == 4096 * 1024
    assert "broker dropped unknown" in data["summary"] and json.loads(json.dumps(data))["broker"] == "mosquitto"
    assert result(broker_dropped=None).violations(LoadProfile()) == []  # unknown is not judged
    assert result(storm=None).to_json()["storm"] is None
