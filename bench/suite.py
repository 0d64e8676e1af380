"""Benchmark: the wall time of ``pytest tests/hil`` against the waits the device imposes.

Runs the HIL suites once on the virtual rig (about 7 minutes; ``--from DIR`` re-reads
a previous run's ``DIR`` instead), with bench/suite_probe.py loaded as a pytest plugin.
The probe changes nothing: it times, per test, every outermost call through which a test
waits for the device (a console line, MQTT messages, a board mode, connections through
the fault proxy) and every call that does the rig's work (flashing, starting the broker
and the board, power requests). The device's own schedule (the session's FAST_INTERVALS:
1 s readings, 5 s heartbeats, 5 s watchdog and sensor timeouts, 20 s OTA self-test; the
1 s·2^k reconnect backoff; boot and connect) is what those waits wait for, so their sum is
the time a perfect framework would still need; the rest of the wall time is the
framework's (and pytest's, and the tests' own code).

A wait's time includes the framework's latency in noticing what it waited for (under a
millisecond for the console, a loopback MQTT hop for messages): the device's share is
slightly overstated, the framework's understated. Waits that end in a timeout are the
tests' negative checks ("no reading for 6 s"): device time too, shown apart.

Prints the breakdown and the ratios. Run: ``.venv/bin/python bench/suite.py``
(``--out DIR`` keeps the JUnit XML, the probe's records and the HIL logs; ``--from DIR``
analyses them again without running; extra arguments after ``--`` go to pytest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent


def run_suite(out: Path, extra: Sequence[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])),
        "BENCH_WAITS": str(out / "waits.jsonl"),
    }
    command = [
        sys.executable, "-m", "pytest", "tests/hil", "-p", "suite_probe", "-q", "-p", "no:cacheprovider",
        "--junitxml", str(out / "junit.xml"), "--hil-log-dir", str(out / "hil-logs"), *extra,
    ]  # fmt: skip
    print(f"running: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    with (out / "pytest.log").open("w") as log:
        result = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    wall = time.monotonic() - started
    (out / "wall.json").write_text(json.dumps({"process_wall_s": wall, "exit": result.returncode}))
    print(f"pytest exited {result.returncode} after {wall:.1f} s; its output: {out / 'pytest.log'}")
    return result.returncode


def analyse(out: Path) -> int:
    waits_file = out / "waits.jsonl"
    if not waits_file.exists():
        raise SystemExit(f"{waits_file}: no probe records (a run of this script writes them)")
    session: dict[str, float] = {}
    waits: list[dict[str, object]] = []
    phases: list[dict[str, object]] = []
    for line in waits_file.read_text().splitlines():
        item = json.loads(line)
        if "session" in item:
            session = item["session"]
        elif "wait" in item:
            waits.append(item["wait"])
        else:
            phases.append(item["phase"])
    process = json.loads((out / "wall.json").read_text()) if (out / "wall.json").exists() else {}
    junit = ET.parse(out / "junit.xml").getroot() if (out / "junit.xml").exists() else None
    suite = junit if junit is None or junit.tag == "testsuite" else junit.find("testsuite")
    counts = (
        {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        if suite is not None
        else {}
    )

    session_wall = float(session["end"]) - float(session["start"])
    by_category: dict[str, float] = defaultdict(float)
    negative = 0.0
    for w in waits:
        by_category[str(w["category"])] += float(w["seconds"])  # type: ignore[arg-type]
        if w["category"] == "device" and w["outcome"] == "timeout":
            negative += float(w["seconds"])  # type: ignore[arg-type]
    device = by_category.get("device", 0.0)
    rig_work = sum(v for k, v in by_category.items() if k != "device")
    rest = session_wall - device - rig_work

    if counts:
        print(
            f"run: {counts['tests']} tests, {counts['failures']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped (JUnit {out / 'junit.xml'})"
        )
    if process:
        print(
            f"pytest process wall time (start-up and collection included) {process['process_wall_s']:8.1f} s"
        )
    print(f"session wall time (first test setup to last teardown)       {session_wall:8.1f} s")
    print(f"  waiting for the device                                       {device:8.1f} s")
    print(f"    of which negative checks (waits that ran out, as meant)   {negative:8.1f} s")
    for category in sorted(k for k in by_category if k != "device"):
        print(f"  {category:<60} {by_category[category]:8.1f} s")
    print(f"  everything else (fixtures, test code, pytest, reports)       {rest:8.1f} s")

    per_test: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for p in phases:
        per_test[str(p["test"])]["wall"] += float(p["seconds"])  # type: ignore[arg-type]
    for w in waits:
        per_test[str(w["test"])][str(w["category"])] += float(w["seconds"])  # type: ignore[arg-type]
    print()
    print("tests with the most time outside device waits (wall, device, flashing, other):")
    ranked = sorted(
        ((t, v) for t, v in per_test.items() if v.get("wall")),
        key=lambda tv: tv[1]["wall"] - tv[1].get("device", 0.0),
        reverse=True,
    )
    for test, v in ranked[:8]:
        other = v["wall"] - v.get("device", 0.0) - v.get("flashing", 0.0)
        print(
            f"  {v['wall']:6.1f} s  {v.get('device', 0.0):6.1f}  {v.get('flashing', 0.0):5.1f}  {other:5.1f}  "
            f"{test.split('::')[-1][:80]}"
        )
    longest: dict[str, float] = defaultdict(float)
    for w in waits:
        if w["category"] == "device":
            longest[f"{w['call']} {w['what']}".strip()] += float(w["seconds"])  # type: ignore[arg-type]
    print()
    print("device waits by what was awaited (top 8):")
    for what, seconds in sorted(longest.items(), key=lambda kv: kv[1], reverse=True)[:8]:
        print(f"  {seconds:7.1f} s  {what[:100]}")

    print()
    print("ratios:")
    print(f"  session wall / device waits                     = {session_wall / device:.2f}")
    print(
        f"  framework share of the session wall time        = {(session_wall - device) / session_wall:.2f}"
    )
    print(f"    of which flashing and rig start-up            = {rig_work / session_wall:.2f}")
    print(f"    of which everything else                      = {rest / session_wall:.2f}")
    if process:
        total = float(process["process_wall_s"])
        print(f"  process wall / device waits                     = {total / device:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from", dest="previous", help="analyse the run kept in this directory; run nothing"
    )
    parser.add_argument("--out", help="keep the run's JUnit XML, probe records and HIL logs here")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = parser.parse_args(argv)
    if args.previous:
        return analyse(Path(args.previous))
    with tempfile.TemporaryDirectory(prefix="hil-bench-suite-") as tmpname:
        out = Path(args.out).resolve() if args.out else Path(tmpname)
        run_suite(out, args.pytest_args)
        analyse(out)  # a failing test does not make the timing meaningless; say it above
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
