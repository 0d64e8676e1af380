"""What a guard's JUnit testcase says happened, and whether that counts as catching a defect.

A guard *catches* its defect when it fails, or errors because of the device (it never
came online, it timed out: a plain ``SessionError``). A test that infrastructure stopped
(its rig, port, broker, board process or flasher failed, or its rig was taken out of the
run) is *broken*: the defect image was never really judged, so a broken run proves
nothing and must not count as caught.

Which is which the plugin decides by type (``hil.errors.classify``, and the rig's health
after a failure) and writes on the testcase as properties: ``hil_outcome = broken``
(``hil.reporting.report.BROKEN_PROPERTY``) and, for a rig taken out, ``hil_rig_taken_out``. The
message's words count for nothing: a device's failure may quote any error name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from hil.reporting.report import BROKEN_PROPERTY

TAKEN_OUT_PROPERTY = "hil_rig_taken_out"
CAUGHT = frozenset({"failed", "error"})


def classify(case: ET.Element) -> str:
    """passed, failed, error, skipped or broken (an error or failure of the infrastructure)."""
    kinds = [child for child in case if child.tag in ("failure", "error", "skipped")]
    if not kinds:
        return "passed"
    first = kinds[0]
    if first.tag == "skipped":
        return "skipped"
    properties = {(p.get("name"), p.get("value")) for p in case.iter("property")}
    if BROKEN_PROPERTY in properties or any(name == TAKEN_OUT_PROPERTY for name, _ in properties):
        return "broken"
    return "failed" if first.tag == "failure" else "error"


def junit_outcomes(path: Path) -> dict[str, str]:
    """``classname::name`` -> outcome (see ``classify``), from pytest's JUnit XML."""
    return {f"{case.get('classname')}::{case.get('name')}": classify(case) for case in ET.parse(path).iter("testcase")}


def skip_reasons(path: Path) -> dict[str, str]:
    """``classname::name`` -> the reason pytest gave, for every skipped testcase."""
    reasons: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        for skipped in case.iter("skipped"):
            reasons[f"{case.get('classname')}::{case.get('name')}"] = skipped.get("message") or ""
    return reasons


def verdict(outcomes: dict[str, str]) -> str:
    """One defect image's verdict: caught (every guard failed or errored on the device),
    broken (any guard was stopped by infrastructure) or missed."""
    if any(outcome == "broken" for outcome in outcomes.values()):
        return "broken"
    return "caught" if outcomes and all(o in CAUGHT for o in outcomes.values()) else "missed"
