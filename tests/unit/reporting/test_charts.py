"""The report's pictures are well-formed SVG that show what they claim."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from hil.reporting.charts import Instant, Span, accuracy_chart, timeline_chart

NS = {"svg": "http://www.w3.org/2000/svg"}


def test_the_accuracy_chart_marks_points_outside_the_band() -> None:
    points = [(20.0, 20.3), (25.0, 24.6), (30.0, 32.5)]  # the last is 2.5 °C off
    svg = ET.fromstring(accuracy_chart(points, 1.0, title="temperature sweep", unit="°C"))
    dots = svg.findall("svg:circle", NS)
    assert len(dots) == 3
    assert [d.get("fill") for d in dots].count("#c0392b") == 1
    text = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "temperature sweep" in text and "3 points, 1 outside" in text and "band ±1" in text


def test_a_timeline_has_a_lane_per_name_and_escapes_labels() -> None:
    spans = [Span("broker", 10.0, 14.0, "down"), Span("queue", 14.5, 15.0, "3 queued delivered")]
    instants = [Instant("device", 11.0, "attempt 1"), Instant("device", 12.5, "attempt <2>")]
    raw = timeline_chart(spans, instants, title="reconnect")
    svg = ET.fromstring(raw)
    labels = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert labels[1:4] == ["broker", "queue", "device"]
    assert "attempt <2>" in labels and "&lt;2&gt;" in raw
    assert len(svg.findall("svg:rect", NS)) == 3  # background + two spans
    assert "5 s" in labels  # the axis runs from the first event to the last


def test_empty_data_is_refused() -> None:
    with pytest.raises(ValueError):
        accuracy_chart([], 1.0, title="t", unit="u")
    with pytest.raises(ValueError):
        timeline_chart([], [], title="t")


def test_phases_run_from_each_event_to_the_next() -> None:
    from hil.reporting.charts import phases

    spans = phases("ota", [(3.0, "verifying"), (1.0, "downloading"), (4.5, "success")])
    assert [(s.label, s.start, s.end) for s in spans] == [
        ("downloading", 1.0, 3.0),
        ("verifying", 3.0, 4.5),
        ("success", 4.5, 4.5),
    ]
    assert phases("ota", []) == []
