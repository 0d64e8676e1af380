"""A load run's results and the arithmetic behind them (no fleet, no broker): latency and
its basis, the devices' own rate, loss by seq gaps against the devices' own drop counts,
the thresholds in words, and "unknown" never 0."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hil.load.collector import Reading
from hil.load.storm import RestartStorm
from hil.reporting.gate import LoadProfile

CLOCK_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class Latency:
    basis: str
    samples: int
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None


@dataclass(frozen=True)
class Storm:
    connections_reset: int
    reconnected_s: float | None  # every device announced online again (None: not all did)
    recovery_s: float | None  # ... and published a reading over its new connection
    not_back: tuple[str, ...] = ()


@dataclass(frozen=True)
class Loss:
    expected: int  # readings the devices took (highest seq + 1, per device and boot)
    received: int  # distinct readings received
    lost: int  # seq gaps
    ratio: float
    visible: int | None  # the devices' own dropped_readings (None: no health from some)
    silent: int | None  # lost beyond what the devices counted
    duplicates: int
    reboots: int
    worst: Mapping[str, Sequence[int]] = field(default_factory=dict)  # device -> first missing seqs


@dataclass(frozen=True)
class LoadResult:
    broker: str
    app: str
    devices: int
    rate_hz: float
    duration_s: float
    startup_s: float  # fleet started -> every device has published
    window_s: float  # the steady window as measured
    readings_in_window: int
    throughput_msgs_per_s: float
    expected_msgs_per_s: float
    latency: Latency
    loss: Loss
    storm: Storm | None
    broker_dropped: int | None
    fleet_cpu_s: float
    fleet_cpu_cores: float  # CPU seconds per wall second over the steady window
    fleet_memory: Mapping[str, int]
    fleet_cpu_wait_s: float = 0.0  # in the window: its threads ready to run, the CPUs busy
    device_rate_hz: tuple[float, float] | None = None  # (median, slowest) device's own reading rate
    malformed: int = 0
    notes: tuple[str, ...] = ()
    timeline: tuple[tuple[float, str], ...] = ()
    restart: RestartStorm | None = None  # the broker-restart storm (None: not run)

    @property
    def rss_per_device_bytes(self) -> int:
        return self.fleet_memory.get("VmRSS", 0) // max(self.devices, 1)

    def violations(self, profile: LoadProfile) -> list[str]:
        """Every threshold of ``profile`` this run broke, in words; empty means it held."""
        found = []
        if self.loss.ratio > profile.max_loss:
            found.append(
                f"loss {self.loss.lost} of {self.loss.expected} readings ({self.loss.ratio:.2%}) > max_loss "
                f"{profile.max_loss:.2%} (silent: {self.loss.silent}, counted by the devices: {self.loss.visible}; "
                f"e.g. {dict(list(self.loss.worst.items())[:3])})"
            )
        ratio = self.throughput_msgs_per_s / self.expected_msgs_per_s if self.expected_msgs_per_s else 0.0
        if ratio < profile.min_throughput_ratio:
            found.append(
                f"throughput {self.throughput_msgs_per_s:.1f} msgs/s is {ratio:.1%} of the nominal "
                f"{self.expected_msgs_per_s:.1f} < min_throughput_ratio {profile.min_throughput_ratio:.0%}"
            )
        if self.latency.p99_s is None:
            found.append(f"no latency measured ({self.latency.basis})")
        elif self.latency.p99_s > profile.max_p99_latency_s:
            found.append(f"p99 latency {self.latency.p99_s:.3f} s > max_p99_latency_s {profile.max_p99_latency_s} s")
        if self.storm is not None:
            if self.storm.recovery_s is None:
                found.append(f"{len(self.storm.not_back)} devices never published again after the storm, e.g. {list(self.storm.not_back[:5])}")
            elif self.storm.recovery_s > profile.max_storm_recovery_s:
                found.append(f"storm recovery {self.storm.recovery_s:.2f} s > max_storm_recovery_s {profile.max_storm_recovery_s} s")
        if self.restart is not None:
            found += [f"broker restart: {v}" for v in self.restart.violations()]
        if self.broker_dropped is not None and self.broker_dropped > profile.max_broker_dropped:
            found.append(f"broker dropped {self.broker_dropped} messages > max_broker_dropped {profile.max_broker_dropped}")
        if self.loss.reboots:
            found.append(f"{self.loss.reboots} device reboots during the run")
        if self.malformed:
            found.append(f"{self.malformed} malformed messages")
        return found

    def summary(self) -> str:
        storm = "not run" if self.storm is None else (
            f"{self.storm.recovery_s:.2f} s" if self.storm.recovery_s is not None else f"{len(self.storm.not_back)} devices not back"
        )
        latency = (
            "n/a" if self.latency.p99_s is None or self.latency.p50_s is None
            else f"p50 {self.latency.p50_s * 1000:.1f} ms, p99 {self.latency.p99_s * 1000:.1f} ms"
        )  # fmt: skip
        dropped = "unknown" if self.broker_dropped is None else str(self.broker_dropped)
        return (
            f"{self.devices} devices × {self.rate_hz:g} Hz on {self.broker}: {self.throughput_msgs_per_s:.1f} msgs/s "
            f"(expected {self.expected_msgs_per_s:.1f}); latency {latency}; loss {self.loss.lost}/{self.loss.expected} "
            f"(silent {self.loss.silent if self.loss.silent is not None else 'unknown'}); storm recovery {storm}; "
            f"broker dropped {dropped}; fleet {self.fleet_cpu_cores:.2f} cores, "
            f"{self.rss_per_device_bytes / 1024:.0f} KiB RSS per device"
            + (f"; {self.restart.summary()}" if self.restart is not None else "")
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["broker_dropped"] = "unknown" if self.broker_dropped is None else self.broker_dropped
        if self.loss.visible is None:
            data["loss"]["visible"] = data["loss"]["silent"] = "unknown"
        data["rss_per_device_bytes"] = self.rss_per_device_bytes
        data["timeline"] = [[round(t, 3), event] for t, event in self.timeline]
        if self.restart is not None:
            data["restart"]["reconnect_rate"] = [[t, r] for t, r in self.restart.rate()]
        data["summary"] = self.summary()
        return data


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(readings: Mapping[str, Sequence[Reading]], since: float, until: float) -> Latency:
    """End-to-end latency of the readings received in ``[since, until]`` (monotonic)."""
    per_device = {
        d: [r.received - r.taken for r in rs if since <= r.received_mono <= until] for d, rs in readings.items()
    }
    samples = [v for vs in per_device.values() for v in vs]
    if not samples:
        return Latency("no readings received in the window", 0)
    basis = "host receive time - device timestamp (clocks agree)"
    if min(samples) < -CLOCK_TOLERANCE_S:
        skew = -min(samples)
        samples = [v - min(vs) for vs in per_device.values() if vs for v in vs]
        basis = (
            f"device clocks differ from the host's (a reading arrived {skew:.2f} s before it was taken): "
            "relative to each device's fastest reading"
        )
    return Latency(basis, len(samples), percentile(samples, 50), percentile(samples, 99), max(samples))


def device_rates(
    readings: Mapping[str, Sequence[Reading]], since: float, until: float
) -> tuple[float, float] | None:
    """The rate the devices took readings at (by their own timestamps) in the window: the
    median device's and the slowest one's. Below the configured rate, the devices
    themselves fell behind (a loaded fleet process); at it, any shortfall in throughput
    is on the way to the collector."""
    rates = []
    for rs in readings.values():
        taken = sorted(r.taken for r in rs if since <= r.received_mono <= until)
        if len(taken) >= 2 and taken[-1] > taken[0]:
            rates.append((len(taken) - 1) / (taken[-1] - taken[0]))
    if not rates:
        return None
    return statistics.median(rates), min(rates)


def loss(readings: Mapping[str, Sequence[Reading]], health: Mapping[str, tuple[float, dict[str, Any]]]) -> Loss:
    expected = received = duplicates = reboots = 0
    worst: dict[str, list[int]] = {}
    for device, rs in readings.items():
        boots: dict[int, list[int]] = {}
        for r in rs:
            boots.setdefault(r.boot, []).append(r.seq)
        reboots += max(0, len(boots) - 1)
        for seqs in boots.values():
            distinct = set(seqs)
            expected += max(distinct) + 1
            received += len(distinct)
            duplicates += len(seqs) - len(distinct)
            missing = sorted(set(range(max(distinct) + 1)) - distinct)
            if missing:
                worst.setdefault(device, []).extend(missing[:10])
    lost = expected - received
    visible: int | None = None
    if all(d in health for d in readings):
        visible = sum(int(health[d][1].get("dropped_readings") or 0) for d in readings)
    ranked = dict(sorted(worst.items(), key=lambda item: -len(item[1]))[:10])
    return Loss(
        expected=expected,
        received=received,
        lost=lost,
        ratio=lost / expected if expected else 0.0,
        visible=visible,
        silent=None if visible is None else max(0, lost - visible),
        duplicates=duplicates,
        reboots=reboots,
        worst=ranked,
    )
