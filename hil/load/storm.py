"""The broker-restart storm: the broker under a full fleet stopped, kept down, and started
again; every device must come back with the contract's backoff and jitter (C3.6, C3.7),
and its offline queue must drain in order with nothing lost (C3.10).

What is measured, from outside (the fault proxy every device connects through, and the
collector on the broker):

* **attempts while the broker was down**: the proxy logs each connection it could not
  take upstream (``upstream ... failed``); with the contract's backoff a device makes
  at most `max_attempts` in the outage (delays 1, 2, 4 ... s, each at least 80 % of its
  nominal value). A fleet that reconnects without backoff hammers the broker and shows
  here.
* **time to all-online**: from the moment the devices can reach the broker again until
  every one has announced ``online`` (the rate over time, in ``reconnects``, is the
  report's chart). Its bound is the contract's: the longest delay that can be pending
  when the broker returns (+20 % jitter), plus ``max_storm_recovery_s`` for the fleet to
  connect and publish.
* **order**: a reading received after one with a higher ``seq`` of the same boot, that
  is not a re-send of one already received, was reordered (a queue drained newest first).
  Loss (seq gaps) is the run's; a queue dropped on the floor shows there.

The collector is a client of the same broker: it is gone while the broker is, and may
come back after a device that then publishes its backlog to nobody. So once the broker
listens again the proxy refuses the devices (a down broker's ECONNREFUSED, as before)
until the collector has subscribed again; that hold is measured (``held_s``) and the
time to all-online counts from its end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hil.device.contract import RECONNECT_BACKOFF_S, RECONNECT_JITTER

if TYPE_CHECKING:  # the collector imports the target, which imports this
    from hil.load.collector import Reading

HOLD_PARTITION_S = 600.0
"""The proxy's partition while the collector comes back: lifted (healed) as soon as it has."""
ATTEMPT_FAILED = "upstream"  # the proxy's timeline: "conn N: upstream HOST:PORT failed: ..."


class RestartableBroker(Protocol):
    """The embedded broker as the storm drives it (`hil.services.broker.MosquittoBroker`)."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


@dataclass(frozen=True)
class RestartStorm:
    devices: int
    outage_s: float  # broker stopped -> listening again
    held_s: float  # listening -> the devices let through (the collector subscribed again)
    attempts_in_outage: int  # connection attempts the proxy could not take upstream
    max_attempts: int  # the contract's bound on them for this fleet and outage
    all_online_s: float | None  # let through -> every device online again (None: not all)
    bound_s: float  # the contract's bound on all_online_s (backoff + max_storm_recovery_s)
    recovery_s: float | None  # let through -> every device also published again
    not_back: tuple[str, ...] = ()
    reconnects: tuple[float, ...] = ()  # each device's first online, s after the devices were let through
    out_of_order: Mapping[str, Sequence[int]] = field(default_factory=dict)  # device -> seqs received late
    not_drained: tuple[str, ...] = ()  # devices that had not published twice more by the deadline
    listen_overflows: int | None = None
    """Connections the kernel dropped at a full accept queue during the storm, host-wide
    (/proc/net/netstat ListenOverflows; None: not on Linux). mosquitto listens with a
    backlog of 100 (the proxy's is somaxconn-sized): a burst of reconnects beyond a full
    queue waits for SYN retransmits (1 s, 3 s, ...), which is where a slow tail of
    reconnects comes from."""

    def violations(self) -> list[str]:
        """What broke the contract, in words; empty means the storm held."""
        found = []
        if self.attempts_in_outage > self.max_attempts:
            found.append(
                f"{self.attempts_in_outage} connection attempts in the {self.outage_s:.1f} s outage > "
                f"{self.max_attempts} the contract's backoff allows {self.devices} devices (C3.6)"
            )
        if self.all_online_s is None:
            found.append(f"{len(self.not_back)} devices never came back online, e.g. {list(self.not_back[:5])}")
        elif self.all_online_s > self.bound_s:
            found.append(
            f"every device online after {self.all_online_s:.2f} s > the bound {self.bound_s:.2f} s"
            + (f" ({self.listen_overflows} SYNs dropped at full accept queues meanwhile)" if self.listen_overflows else "")
        )
        if self.out_of_order:
            found.append(
                f"{len(self.out_of_order)} devices delivered readings out of order (C3.10), e.g. "
                f"{dict(list(self.out_of_order.items())[:3])}"
            )
        if self.not_drained:
            found.append(f"{len(self.not_drained)} devices did not drain their queue, e.g. {list(self.not_drained[:5])}")
        return found

    def rate(self, bin_s: float = 0.5) -> list[tuple[float, float]]:
        """Reconnects per second over time: (bin start, devices/s) from the devices' release."""
        return reconnect_rate(self.reconnects, bin_s)

    def summary(self) -> str:
        online = "not all" if self.all_online_s is None else f"{self.all_online_s:.2f} s"
        overflows = "" if self.listen_overflows is None else f"; {self.listen_overflows} SYNs dropped at full accept queues"
        return (
            f"broker restart under {self.devices} devices: down {self.outage_s:.1f} s, "
            f"{self.attempts_in_outage} attempts meanwhile (contract allows {self.max_attempts}); all online "
            f"{online} after release (bound {self.bound_s:.1f} s), peak {peak_rate(self.reconnects):.0f} reconnects/s; "
            f"{len(self.out_of_order)} devices out of order{overflows}"
        )


def _delay(attempt: int) -> float:
    """The nominal delay after failed attempt ``attempt`` (0-based): 1, 2, 4 ... s, capped."""
    first, cap = RECONNECT_BACKOFF_S
    return min(first * float(1 << min(attempt, 30)), cap)


def max_attempts(outage_s: float) -> int:
    """The most attempts one device may make in ``outage_s`` from losing its connection:
    one at once (allowed, not required), then one after each delay at its shortest
    (nominal × (1 − jitter))."""
    attempts, at = 1, 0.0
    while True:
        at += _delay(attempts - 1) * (1 - RECONNECT_JITTER)
        if at > outage_s:
            return attempts
        attempts += 1


def longest_pending_delay(since_loss_s: float) -> float:
    """The longest wait a device can still have before its next attempt, ``since_loss_s``
    after it lost the broker: the longest delay (+jitter) that can have begun by then."""
    longest, started, attempt = 0.0, 0.0, 0
    while started <= since_loss_s:
        delay = _delay(attempt)
        longest = max(longest, delay * (1 + RECONNECT_JITTER))
        started += delay * (1 - RECONNECT_JITTER)
        attempt += 1
    return longest


def reconnect_rate(reconnects: Sequence[float], bin_s: float = 0.5) -> list[tuple[float, float]]:
    """(bin start, reconnects per second) from 0 to the last reconnect, every bin listed."""
    if not reconnects:
        return []
    bins = [0] * (math.floor(max(0.0, max(reconnects)) / bin_s) + 1)
    for at in reconnects:
        bins[math.floor(max(0.0, at) / bin_s)] += 1
    return [(index * bin_s, count / bin_s) for index, count in enumerate(bins)]


def peak_rate(reconnects: Sequence[float], bin_s: float = 0.5) -> float:
    return max((rate for _, rate in reconnect_rate(reconnects, bin_s)), default=0.0)


def out_of_order(readings: Mapping[str, Sequence[Reading]], since: float) -> dict[str, list[int]]:
    """Per device, the seqs received after a higher seq of the same boot had been (from
    ``since`` on; the list is in arrival order), leaving out re-sends of seqs already
    received (QoS 1 duplicates are not reordering)."""
    late: dict[str, list[int]] = {}
    for device, rs in readings.items():
        highest: dict[int, int] = {}
        seen: set[tuple[int, int]] = set()
        for r in rs:
            key = (r.boot, r.seq)
            if r.received_mono >= since and key not in seen and r.seq < highest.get(r.boot, -1):
                late.setdefault(device, []).append(r.seq)
            seen.add(key)
            highest[r.boot] = max(highest.get(r.boot, -1), r.seq)
    return {d: seqs[:10] for d, seqs in late.items()}


def failed_attempts(timeline: Sequence[tuple[float, str]], since: float, until: float) -> int:
    """Connections the proxy could not take upstream between ``since`` and ``until`` (monotonic)."""
    return sum(1 for at, event in timeline if since <= at <= until and ATTEMPT_FAILED in event and "failed" in event)


def listen_overflows(netstat: Path = Path("/proc/net/netstat")) -> int | None:
    """The host's count of connections dropped at a full accept queue (TcpExt
    ListenOverflows), or None where there is no such file."""
    try:
        lines = [line.split() for line in netstat.read_text().splitlines() if line.startswith("TcpExt:")]
        return int(dict(zip(lines[0], lines[1], strict=True))["ListenOverflows"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def wait_seconds(seconds: float) -> None:
    """The outage itself: the scenario keeps the broker down this long (nothing to await)."""
    time.sleep(seconds)


# -- the chart ---------------------------------------------------------------------------
WIDTH, HEIGHT, MARGIN = 640, 360, 56


def reconnect_chart(storm: RestartStorm, *, bin_s: float = 0.5) -> str:
    """Reconnects per second (bars) and the share of the fleet online (line) over time
    since the devices were let through; the contract's bound as a dashed line."""
    rate = storm.rate(bin_s)
    span = max(storm.bound_s, max(storm.reconnects, default=0.0)) * 1.05 or 1.0
    top = max((r for _, r in rate), default=1.0) or 1.0
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def x(at: float) -> float:
        return MARGIN + at / span * plot_w

    def y(share: float) -> float:
        return HEIGHT - MARGIN - share * plot_h

    body = [f'<rect x="{MARGIN}" y="{MARGIN}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>']
    for start, value in rate:
        body.append(
            f'<rect x="{x(start):.1f}" y="{y(value / top):.1f}" width="{max(1.0, x(start + bin_s) - x(start) - 1):.1f}" '
            f'height="{y(0) - y(value / top):.1f}" fill="#3b6fb6"><title>{start:g}-{start + bin_s:g} s: '
            f"{value:g} reconnects/s</title></rect>"
        )
    ordered = sorted(storm.reconnects)
    if ordered:
        points = " ".join(f"{x(at):.1f},{y((i + 1) / storm.devices):.1f}" for i, at in enumerate(ordered))
        body.append(f'<polyline points="{x(0):.1f},{y(0):.1f} {points}" fill="none" stroke="#2e9d5b" stroke-width="2"/>')
    body.append(
        f'<line x1="{x(storm.bound_s):.1f}" y1="{MARGIN}" x2="{x(storm.bound_s):.1f}" y2="{HEIGHT - MARGIN}" '
        f'stroke="#b03a48" stroke-dasharray="5 3"/>'
        f'<text x="{x(storm.bound_s) - 4:.1f}" y="{MARGIN + 12}" text-anchor="end" fill="#b03a48">bound {storm.bound_s:.1f} s</text>'
    )
    for tick in range(int(span) + 1):
        if tick % max(1, round(span / 8)) == 0:
            body.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - MARGIN + 14}" text-anchor="middle">{tick}</text>')
    body += [
        f'<text x="{MARGIN - 6}" y="{y(1) + 4:.1f}" text-anchor="end">{top:.0f}/s</text>',
        f'<text x="{MARGIN - 6}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>',
        f'<text x="{WIDTH - MARGIN + 4}" y="{y(1) + 4:.1f}" fill="#2e9d5b">100 %</text>',
        f'<text x="{WIDTH / 2:.0f}" y="{HEIGHT - 14}" text-anchor="middle">s after the devices could reach the broker '
        f"again (down {storm.outage_s:.1f} s, held {storm.held_s:.1f} s); bars: reconnects/s, line: share online</text>",
    ]
    title = escape(storm.summary())
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'font-family="sans-serif" font-size="11"><rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>'
        f'<text x="{WIDTH / 2:.0f}" y="18" text-anchor="middle" font-size="12">{escape(f"broker restart: {storm.devices} devices back online")}</text>'
        f"<title>{title}</title>" + "".join(body) + "</svg>"
    )
