"""What a guard's JUnit testcase says happened, and whether that counts as catching a defect.

A guard *catches* its defect when it fails, or errors because of the device (it never
came online, it timed out: a ``SessionError``). An error that says the rig, its port, the
broker or the flasher failed (a rig taken out of the run, an error of one of
``hil.report.INFRASTRUCTURE_ERRORS``) is *broken*: the defect image was never really
judged, so a broken run proves nothing and must not count as caught.

Which words say "infrastructure" is read from the testcase's message, the last
exception's ``Type: message`` (what Allure's categories match too), and from the
``hil_rig_taken_out`` property the plugin puts on each test of a rig taken out.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from hil.report import INFRASTRUCTURE_ERRORS

TAKEN_OUT_PROPERTY = "hil_rig_taken_out"
INFRASTRUCTURE = re.compile(
    r"\b(?:" + "|".join(map(re.escape, INFRASTRUCTURE_ERRORS)) + r")\b|taken out of this run"
)
CAUGHT = frozenset({"failed", "error"})


def classify(case: ET.Element) -> str:
    """passed, failed, error, skipped or broken (an error or failure of the infrastructure)."""
    kinds = [child for child in case if child.tag in ("failure", "error", "skipped")]
    if not kinds:
        return "passed"
    first = kinds[0]
    if first.tag == "skipped":
        return "skipped"
    properties = {p.get("name") for p in case.iter("property")}
    if TAKEN_OUT_PROPERTY in properties or INFRASTRUCTURE.search(first.get("message") or ""):
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
