"""Pictures for the report, where people would rather look than read: plain SVG text
(no plotting library, nothing to install on a lab host), attached to the tests that
produce the data.

* ``accuracy_chart``: the error of each reading against its true value, with the
  accuracy band: a sensor sweep at a glance, the points outside the band in red.
* ``timeline_chart``: lanes of spans and instants over time: a reconnect (outage,
  attempts, recovery, queued readings delivered) or an OTA (download, reboot, self-test,
  verdict).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 640, 400, 56
COLOURS = ("#3b6fb6", "#2e9d5b", "#c77b1b", "#8a4fb0", "#b03a48", "#4f8f99")


@dataclass(frozen=True)
class Span:
    lane: str
    start: float
    end: float
    label: str = ""


@dataclass(frozen=True)
class Instant:
    lane: str
    at: float
    label: str = ""


def _svg(body: Sequence[str], width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
        f'<rect width="{width}" height="{height}" fill="white"/>'
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round numbers (1, 2 or 5 times a power of ten) spanning [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + step * i for i in range(int((high - first) / step + 1e-9) + 1)]


def accuracy_chart(points: Sequence[tuple[float, float]], band: float, *, title: str, unit: str) -> str:
    """The error (reported - true, y) at each true value (x), with the ±``band`` accuracy
    strip shaded: over a whole range an error of one unit is invisible on a reported-vs-
    true plot, and obvious here. Points outside the band are red."""
    if not points:
        raise ValueError("accuracy_chart needs at least one point")
    trues = [true for true, _ in points]
    errors = [reported - true for true, reported in points]
    x_low, x_high = min(trues), max(trues)
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 1, x_high + 1
    limit = max(band * 1.5, *(abs(e) * 1.1 for e in errors))
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def x(value: float) -> float:
        return MARGIN + (value - x_low) / (x_high - x_low) * plot_w

    def y(error: float) -> float:
        return HEIGHT - MARGIN - (error + limit) / (2 * limit) * plot_h

    body = [
        f'<rect x="{MARGIN}" y="{y(band):.1f}" width="{plot_w}" height="{y(-band) - y(band):.1f}" fill="#dfeedd"/>',
        f'<line x1="{MARGIN}" y1="{y(0):.1f}" x2="{WIDTH - MARGIN}" y2="{y(0):.1f}" stroke="#888" stroke-dasharray="4 3"/>',
        f'<rect x="{MARGIN}" y="{MARGIN}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>',
    ]
    for tick in _ticks(x_low, x_high):
        body.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - MARGIN + 14}" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(-limit, limit, 4):
        body.append(f'<text x="{MARGIN - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:+g}</text>')
    outside = 0
    for true, error in zip(trues, errors, strict=True):
        miss = abs(error) > band
        outside += miss
        colour = "#c0392b" if miss else "#2c5aa0"
        body.append(
            f'<circle cx="{x(true):.1f}" cy="{y(error):.1f}" r="3.5" fill="{colour}">'
            f"<title>true {true:g}, reported {true + error:g}</title></circle>"
        )
    body.append(
        f'<text x="{WIDTH / 2:.0f}" y="{HEIGHT - 12}" text-anchor="middle">true value ({escape(unit)}); '
        f"band ±{band:g}; {len(points)} points, {outside} outside</text>"
    )
    body.append(
        f'<text x="14" y="{HEIGHT / 2:.0f}" transform="rotate(-90 14 {HEIGHT / 2:.0f})" '
        f'text-anchor="middle">reported - true ({escape(unit)})</text>'
    )
    return _svg(body, WIDTH, HEIGHT, title)


def timeline_chart(spans: Sequence[Span], instants: Sequence[Instant], *, title: str) -> str:
    """One lane per name (in order of first appearance); time in seconds from the earliest
    event; spans as bars, instants as ticks with their labels."""
    events = [*(s.start for s in spans), *(s.end for s in spans), *(i.at for i in instants)]
    if not events:
        raise ValueError("timeline_chart needs at least one span or instant")
    lanes: list[str] = []
    for lane in [*(s.lane for s in spans), *(i.lane for i in instants)]:
        if lane not in lanes:
            lanes.append(lane)
    start, end = min(events), max(events)
    duration = max(end - start, 1e-3)
    label_w, lane_h = 130, 34
    height = 2 * MARGIN + lane_h * len(lanes)
    plot_w = WIDTH - label_w - MARGIN

    def x(at: float) -> float:
        return label_w + (at - start) / duration * plot_w

    def top(lane: str) -> float:
        return MARGIN + lanes.index(lane) * lane_h

    body = []
    narrow: list[str] = []  # spans too short to hold their label: named in order below the axis
    for lane in lanes:
        body.append(f'<text x="{label_w - 8}" y="{top(lane) + lane_h / 2 + 4:.1f}" text-anchor="end">{escape(lane)}</text>')
        body.append(
            f'<line x1="{label_w}" y1="{top(lane) + lane_h:.1f}" x2="{WIDTH - MARGIN}" y2="{top(lane) + lane_h:.1f}" '
            'stroke="#eee"/>'
        )
    for span in spans:
        colour = COLOURS[lanes.index(span.lane) % len(COLOURS)]
        left, right = x(span.start), max(x(span.end), x(span.start) + 2)
        body.append(
            f'<rect x="{left:.1f}" y="{top(span.lane) + 8:.1f}" width="{right - left:.1f}" height="{lane_h - 16}" '
            f'fill="{colour}" opacity="0.75"><title>{escape(span.label)} {span.end - span.start:.2f} s</title></rect>'
        )
        if span.label and right - left > 6 * len(span.label) + 6:  # fits inside (about 6 px a character)
            body.append(
                f'<text x="{left + 3:.1f}" y="{top(span.lane) + lane_h / 2 + 4:.1f}" fill="white">'
                f"{escape(span.label)}</text>"
            )
        elif span.label:
            narrow.append(f"{span.label} {span.end - span.start:.2f} s" if span.end > span.start else span.label)
    for instant in instants:
        at = x(instant.at)
        body.append(
            f'<line x1="{at:.1f}" y1="{top(instant.lane) + 4:.1f}" x2="{at:.1f}" '
            f'y2="{top(instant.lane) + lane_h - 4:.1f}" stroke="#222" stroke-width="2"/>'
        )
        if instant.label:
            body.append(f'<text x="{at + 3:.1f}" y="{top(instant.lane) + 12:.1f}">{escape(instant.label)}</text>')
    axis_y = MARGIN + lane_h * len(lanes) + 16
    for tick in _ticks(0, duration):
        body.append(f'<text x="{x(start + tick):.1f}" y="{axis_y}" text-anchor="middle">{tick:g} s</text>')
    if narrow:
        height += 20
        body.append(f'<text x="{label_w}" y="{axis_y + 20}">{escape(" · ".join(narrow))}</text>')
    return _svg(body, WIDTH, height, title)


def phases(lane: str, events: Sequence[tuple[float, str]]) -> list[Span]:
    """Consecutive events as spans on one lane, each from its time to the next event's and
    named by it; the last event is an instant's worth (a verdict, not a phase)."""
    ordered = sorted(events)
    spans = [Span(lane, at, ordered[i + 1][0], label) for i, (at, label) in enumerate(ordered[:-1])]
    if ordered:
        at, label = ordered[-1]
        spans.append(Span(lane, at, at, label))
    return spans
