"""The house rule for HIL suites, enforced: wait for events, never for a fixed time.

A fixed sleep in a HIL test is either too short on a loaded lab host (flaky) or too long
everywhere (slow); the fixtures offer ``wait_for``/``expect`` with timeouts instead."""

from __future__ import annotations

import re
from pathlib import Path

HIL_SUITES = Path(__file__).resolve().parents[1] / "hil"
FIXED_SLEEP = re.compile(r"\b(?:time\.|asyncio\.)?sleep\s*\(|from\s+(?:time|asyncio)\s+import[^\n]*\bsleep\b")


def test_no_hil_test_sleeps_for_a_fixed_time() -> None:
    offenders = [
        f"{path.relative_to(HIL_SUITES.parent)}:{number}: {line.strip()}"
        for path in sorted(HIL_SUITES.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FIXED_SLEEP.search(line)
    ]
    assert not offenders, "fixed sleeps in HIL suites (await an event instead):\n" + "\n".join(offenders)


def test_the_rule_sees_the_forms_a_sleep_takes() -> None:
    for line in ("time.sleep(2)", "await asyncio.sleep(0.5)", "sleep (1)", "from time import monotonic, sleep"):
        assert FIXED_SLEEP.search(line), line
    for line in ("mqtt.wait_for(topic, timeout=5)", "asleep = False", "console.expect(SLEEPING)"):
        assert not FIXED_SLEEP.search(line), line
