"""Is a periodic message really periodic? The spacing of consecutive messages of one boot.

DEVICE_CONTRACT.md §4 publishes readings every ``measurement_interval_s``, health every
``heartbeat_interval_s`` and metrics every ``status_report_interval_s``. "A message arrived"
says nothing about the period: a doubled or halved one passes. `spacing_problems` judges a
run of consecutive messages of one boot by two clocks:

- the device's own (the payload's ``timestamp``, ``uptime_s`` ...): when it produced each
  message, free of broker and network delays;
- the receive times: what a subscriber sees, which is what the contract promises.

The bounds, the same for every periodic topic (`Tolerance`):

- the mean spacing over the run within ``mean`` (a fraction) of the interval: a period off by
  a tenth fails, while the jitter of the two end points is spread over every gap of the run;
- no single gap longer than ``max_ratio`` × the interval (a skipped period is a gap of 2×),
  nor shorter than ``min_ratio`` × the interval (two in one period, a burst);
- on the receive clock each single gap may also be stretched or shrunk by ``latency_s``:
  one message delivered late makes one gap longer and the next one shorter by the same delay.

``latency_s`` is the rig's declared delivery jitter (broker on the LAN or loopback, host
scheduling): it must stay below half an interval, or a doubled period could hide in it.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_TOLERANCE", "Tolerance", "gaps", "queued_before_connect", "spacing_problems", "wait_timeout"]


@dataclass(frozen=True)
class Tolerance:
    mean: float = 0.10
    max_ratio: float = 1.5
    min_ratio: float = 0.5
    latency_s: float = 0.25

    def __post_init__(self) -> None:
        if (
            not 0 < self.mean < 1
            or not 0 <= self.min_ratio < 1 < self.max_ratio
            or self.latency_s < 0
        ):
            raise ValueError(f"nonsensical tolerance {self}")


DEFAULT_TOLERANCE = Tolerance()


def gaps(times: Sequence[float]) -> list[float]:
    """The differences between consecutive times."""
    return [b - a for a, b in itertools.pairwise(times)]


def _judge(
    what: str, times: Sequence[float], interval_s: float, tol: Tolerance, slack_s: float
) -> list[str]:
    spaced = gaps(times)
    shown = ", ".join(f"{g:.3f}" for g in spaced)
    problems: list[str] = []
    if any(g < 0 for g in spaced):
        return [f"{what}: times go backwards within one boot ({shown} s)"]
    mean = statistics.fmean(spaced)
    if abs(mean - interval_s) > tol.mean * interval_s:
        problems.append(
            f"{what}: mean spacing {mean:.3f} s, configured {interval_s:g} s ± {tol.mean:.0%} (gaps {shown} s)"
        )
    high, low = tol.max_ratio * interval_s + slack_s, tol.min_ratio * interval_s - slack_s
    long = [g for g in spaced if g > high]
    short = [g for g in spaced if g < low]
    if long:
        problems.append(
            f"{what}: gap(s) above {high:.3f} s ({tol.max_ratio:g}× the interval): gaps {shown} s"
        )
    if short:
        problems.append(
            f"{what}: gap(s) below {low:.3f} s ({tol.min_ratio:g}× the interval): gaps {shown} s"
        )
    return problems


def spacing_problems(
    interval_s: float,
    *,
    device_times: Sequence[float],
    received_times: Sequence[float] | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    what: str = "messages",
) -> list[str]:
    """What is wrong with the spacing of consecutive messages of one boot (empty: nothing).

    ``device_times`` are the device's own times of the messages (seconds, any origin),
    ``received_times`` when the subscriber got them (same order); at least three messages.
    """
    if interval_s <= 0:
        raise ValueError(f"interval {interval_s} must be positive")
    if len(device_times) < 3 or (
        received_times is not None and len(received_times) != len(device_times)
    ):
        raise ValueError("need at least three messages, with as many receive times as device times")
    problems = _judge(f"{what} (device clock)", device_times, interval_s, tolerance, 0.0)
    if received_times is not None:
        problems += _judge(
            f"{what} (received)", received_times, interval_s, tolerance, tolerance.latency_s
        )
    return problems


def wait_timeout(interval_s: float, count: int, tolerance: Tolerance = DEFAULT_TOLERANCE) -> float:
    """How long ``count`` consecutive messages may take to arrive at the worst spacing the
    tolerance allows, from any moment (the first may be up to one long gap away)."""
    return count * (tolerance.max_ratio * interval_s + tolerance.latency_s) + 5.0



def queued_before_connect(
    device_times: Sequence[float], received_times: Sequence[float], tolerance: Tolerance = DEFAULT_TOLERANCE
) -> int:
    """How many of one boot's first messages waited for the broker connection: what the
    device produced before it was connected goes out in one burst when it connects (C3.10),
    so its receive times say when the connection came up, not the period. A message's delay
    is its receive time less its device time (the two clocks' offset plus the delivery); the
    run's smallest is a prompt message's, and a leading message later than that by more than
    ``latency_s`` was held back. Only the leading ones are skipped: a late message further on
    is a fault of the cadence, for `spacing_problems` to see.

    A board that connects within a fraction of an interval holds back nothing (0); a C3
    takes seconds to join Wi-Fi, get an address and connect to the broker."""
    if len(device_times) != len(received_times):
        raise ValueError("need as many receive times as device times")
    delays = [r - d for d, r in zip(device_times, received_times, strict=True)]
    if not delays:
        return 0
    prompt = min(delays)
    held = 0
    while held < len(delays) and delays[held] > prompt + tolerance.latency_s:
        held += 1
    return held
