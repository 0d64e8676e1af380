"""Benchmark: how many virtual devices a fleet carries on this host, and what each costs.

One run starts a mosquitto (an account per device), then ``hil sim fleet`` with
``--devices`` boards over ``--processes`` shard processes (default ``auto``: one per
core, none with fewer than 250 boards), each publishing a reading every ``--interval``
seconds (default 1), straight to the broker (no fault proxy: nothing else in this
process competes for the CPU), for ``--duration`` seconds, and measures with
`hil.load.run` from outside:

* whether it held: every reading arrived (no seq gap on any device), the broker dropped
  nothing (mosquitto's ``$SYS/broker/publish/messages/dropped``), and the readings
  arrived at the rate the devices should publish (≥ 98 % of devices ÷ interval);
* **devices per core**: devices ÷ the CPU the fleet's processes used over the window
  (CPU seconds per wall second, all their threads): how many devices one fully used core
  carries at that interval;
* **memory per device**, over the fleet's processes: anonymous memory ÷ devices, in all
  and beyond what the shards held before they made their first board (their
  interpreters: a cost per process); and the resident pages of the boards' flash
  mappings (the shared base image and each board's overlay, from /proc/PID/smaps) ÷
  devices.

With ``--find``, a run that does not hold is followed by smaller ones (bisecting down to
a multiple of ``--step``) until one holds, and the largest count that held is reported.
Results are printed; the numbers in bench/RESULTS.md come from this script.

Run: ``.venv/bin/python bench/fleet.py [--devices 1000] [--interval 1] [--duration 60]
[--processes auto] [--find]``
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.load.limits import OBSERVERS
from hil.load.results import LoadResult
from hil.load.run import run_load
from hil.load.target import LoadTarget, device_ids
from hil.reporting.gate import LoadProfile
from hil.services.broker import BrokerLimits, MosquittoBroker

MIN_RATE = 0.98  # of the expected readings per second, for a run to count as "held"
KIB = 1024


@dataclass(frozen=True)
class Run:
    devices: int
    result: LoadResult
    broker_cpu_s: float
    bench_cpu_s: float
    wall_s: float
    load_average: float  # the machine's 1-minute load average when the run ended
    processes: str

    def per_device(self, key: str) -> float:
        """``fleet_memory[key]`` ÷ devices, in KiB."""
        return self.result.fleet_memory.get(key, 0) / self.devices / KIB

    @property
    def anon_per_device_beyond_processes(self) -> float:
        """Anonymous KiB per device beyond what the shard processes held before their boards."""
        memory = self.result.fleet_memory
        return (memory.get("RssAnon", 0) - memory.get("AnonBeforeBoards", 0)) / self.devices / KIB

    @property
    def held(self) -> bool:
        r = self.result
        return (
            r.loss.lost == 0
            and r.broker_dropped == 0
            and r.throughput_msgs_per_s >= MIN_RATE * r.expected_msgs_per_s
            and not r.loss.reboots
        )

    @property
    def devices_per_core(self) -> float:
        cores = self.result.fleet_cpu_cores
        return self.devices / cores if cores > 0 else float("inf")


def cpu_of(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(devices: int, duration: float, workdir: Path, *, interval: int = 1, processes: str = "auto") -> Run:
    broker = MosquittoBroker(workdir / "broker")
    ids = device_ids(devices)
    for device in ids:
        broker.add_device(device)
    broker.apply_limits(BrokerLimits(clients=devices + OBSERVERS))  # a descriptor per device, checked first
    broker.start()
    try:
        pid = broker._proc.pid if broker._proc is not None else 0  # the bench reads its CPU
        broker_cpu = cpu_of(pid)
        target = LoadTarget.direct(broker, ids)
        profile = LoadProfile(devices=devices, rate_hz=1.0 / interval, duration_s=duration, broker_restart_outage_s=0)
        own = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        result = run_load(
            target, profile, workdir=workdir / f"fleet-{devices}", storm=False, processes=processes, progress=print
        )
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        return Run(
            devices=devices,
            result=result,
            broker_cpu_s=cpu_of(pid) - broker_cpu,
            bench_cpu_s=(after.ru_utime + after.ru_stime) - (own.ru_utime + own.ru_stime),
            wall_s=wall,
            load_average=os.getloadavg()[0],
            processes=processes,
        )
    finally:
        broker.kill()


def report(run: Run) -> None:
    r = run.result
    memory = r.fleet_memory
    print(
        f"\n== {run.devices} devices × {r.rate_hz:g} msg/s for {r.window_s:.1f} s, --processes {run.processes} "
        f"(fleet up after {r.startup_s:.1f} s)"
    )
    print(
        f"   readings: {r.readings_in_window} in the window = {r.throughput_msgs_per_s:.1f} msgs/s "
        f"(expected {r.expected_msgs_per_s:.0f}, {r.throughput_msgs_per_s / r.expected_msgs_per_s:.1%})"
    )
    print(
        f"   loss: {r.loss.lost} of {r.loss.expected} readings (seq gaps), devices' own drop count "
        f"{r.loss.visible}, duplicates {r.loss.duplicates}, reboots {r.loss.reboots}; broker dropped "
        f"{'unknown' if r.broker_dropped is None else r.broker_dropped}"
    )
    if r.device_rate_hz is not None:
        median, slowest = r.device_rate_hz
        print(f"   the devices' own reading rate (their timestamps): median {median:.3f}/s, slowest {slowest:.3f}/s")
    if r.latency.p50_s is not None and r.latency.p99_s is not None:
        print(f"   latency (device timestamp -> observer): p50 {r.latency.p50_s * 1000:.1f} ms, p99 {r.latency.p99_s * 1000:.1f} ms")
    print(
        f"   CPU: fleet {r.fleet_cpu_cores:.2f} cores over the window ({r.fleet_cpu_s:.1f} s in all); "
        f"mosquitto {run.broker_cpu_s:.1f} s, this process (observer) {run.bench_cpu_s:.1f} s, over {run.wall_s:.0f} s"
    )
    print(
        f"   contention: the fleet's threads waited {r.fleet_cpu_wait_s:.1f} s for a CPU in the window; "
        f"load average at the end {run.load_average:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"   memory: fleet RSS {memory.get('VmRSS', 0) / 2**20:.0f} MiB over {memory.get('Processes', 1)} "
        f"processes (sum of peaks {memory.get('VmHWM', 0) / 2**20:.0f}, anonymous {memory.get('RssAnon', 0) / 2**20:.0f} "
        f"of which {memory.get('AnonBeforeBoards', 0) / 2**20:.0f} before the boards, file pages "
        f"{memory.get('RssFile', 0) / 2**20:.0f}, of which flash {memory.get('FlashPages', 0) / 2**20:.1f})"
    )
    for note in r.notes:
        print(f"   note: {note}")
    print(f"   => {'HELD' if run.held else 'DID NOT HOLD'} (zero loss, no broker drops, ≥ {MIN_RATE:.0%} of the rate)")


def ratios(run: Run) -> None:
    r = run.result
    memory = r.fleet_memory
    print(
        f"\nfleet ratios, {run.devices} devices (--processes {run.processes}) at {r.rate_hz:g} msg/s each, "
        "measured in one run:"
    )
    print(f"  devices per core:   {run.devices_per_core:.0f}  ({run.devices} devices / {r.fleet_cpu_cores:.2f} cores used)")
    print(
        f"  memory per device:  {r.rss_per_device_bytes / KIB:.0f} KiB RSS; "
        f"{run.per_device('RssAnon'):.0f} KiB anonymous "
        f"({run.anon_per_device_beyond_processes:.0f} beyond the processes' own "
        f"{memory.get('AnonBeforeBoards', 0) / 2**20:.0f} MiB); "
        f"{run.per_device('FlashPages'):.1f} KiB of flash pages"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="devices in the fleet process (default 1000)")
    parser.add_argument("--duration", type=float, default=60.0, help="steady window in seconds (default 60)")
    parser.add_argument("--interval", type=int, default=1, help="each device's measurement interval in s (default 1)")
    parser.add_argument("--processes", default="auto", help="hil sim fleet --processes: a number or auto (default)")
    parser.add_argument("--find", action="store_true", help="if it does not hold, bisect down to a count that does")
    parser.add_argument("--step", type=int, default=50, help="--find's resolution in devices (default 50)")
    args = parser.parse_args(argv)
    if not 1 <= args.devices <= 10_000 or args.duration < 2 or args.interval < 1:
        parser.error("--devices 1..10000, --duration >= 2 and --interval >= 1")
    print(
        f"bench fleet: {args.devices} devices, a reading every {args.interval} s each, {args.duration:g} s, "
        f"--processes {args.processes}, on {os.cpu_count()} cores"
    )
    once = functools.partial(run_once, interval=args.interval, processes=args.processes)
    with tempfile.TemporaryDirectory(prefix="hil-bench-fleet-") as tmp:
        first = once(args.devices, args.duration, Path(tmp))
        report(first)
        best = first if first.held else None
        if args.find and not first.held:
            low, high = 0, args.devices  # held at low (0 trivially), not at high
            while high - low > args.step:
                middle = max(args.step, (low + high) // 2 // args.step * args.step)
                if middle in (low, high):
                    break
                attempt = once(middle, args.duration, Path(tmp))
                report(attempt)
                if attempt.held:
                    low, best = middle, attempt
                else:
                    high = middle
        if best is None:
            print(f"\nno run held; the {args.devices}-device run's figures:")
            ratios(first)
            return 1
        ratios(best)
        if best is not first:
            print(f"  ({args.devices} devices did not hold; {best.devices} is the largest count that did)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
