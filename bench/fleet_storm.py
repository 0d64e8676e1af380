"""Benchmark: the broker restarted under a whole fleet (issue #17, 4; acceptance: 5000 devices).

One run starts a mosquitto sized for the fleet (`hil.services.broker.BrokerLimits`: a
descriptor per device, the queue limit the storm's backlog needs, persistence as asked),
then ``hil sim fleet`` with ``--devices`` boards over ``--processes`` shards, every board
reaching the broker through the load run's fault proxy, a reading every ``--interval``
seconds. After a steady window of ``--duration`` seconds the broker is stopped, kept down
``--outage`` seconds and started again (`hil.load.storm`): printed are the attempts the
devices made while it was down against the contract's backoff, the time until every
device was online again and the reconnect rate over time, whether the offline queues
drained in order, and the run's loss (seq gaps) and broker drops. ``--chart FILE`` writes
the reconnect chart (SVG).

Before anything starts, `hil.load.limits.check_host` says whether this host can take the
fleet (descriptors here, in the broker and per shard), with the figure and the fix.

Run: ``.venv/bin/python bench/fleet_storm.py [--devices 5000] [--interval 10] [--duration 30]
[--outage 5] [--no-persistence] [--processes auto] [--chart storm.svg]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.load.limits import needs
from hil.load.run import run_load
from hil.load.storm import reconnect_chart
from hil.load.target import LoadTarget, broker_limits, device_ids
from hil.reporting.gate import LoadProfile
from hil.services.broker import MosquittoBroker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000, help="devices in the fleet (default 5000)")
    parser.add_argument("--interval", type=int, default=10, help="each device's measurement interval in s (default 10)")
    parser.add_argument("--duration", type=float, default=30.0, help="steady window before the storm, s (default 30)")
    parser.add_argument("--outage", type=float, default=5.0, help="how long the broker stays down, s (default 5)")
    parser.add_argument("--no-persistence", action="store_true", help="the broker without persistence")
    parser.add_argument("--processes", default="auto", help="hil sim fleet --processes (default auto)")
    parser.add_argument("--chart", type=Path, help="write the reconnect chart (SVG) here")
    args = parser.parse_args(argv)
    shape = LoadProfile(
        devices=args.devices,
        rate_hz=1.0 / args.interval,
        duration_s=args.duration,
        max_p99_latency_s=0.25,
        broker_restart_outage_s=args.outage,
        broker_persistence=not args.no_persistence,
    )
    # The collector's queue must hold the storm's backlog (checked before the run): sized from it.
    profile = LoadProfile(**{**shape.__dict__, "max_queued_messages": max(10_000, 2 * needs(shape, via_proxy=True).storm_backlog)})
    print(
        f"bench fleet storm: {args.devices} devices, a reading every {args.interval} s, broker down {args.outage:g} s "
        f"(persistence {'off' if args.no_persistence else 'on'}, max_queued_messages {profile.max_queued_messages}), "
        f"on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="hil-bench-storm-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker", log_types=("error", "warning", "notice"))
        ids = device_ids(args.devices)
        for device in ids:
            broker.add_device(device)
        broker.apply_limits(broker_limits(profile))
        broker.start()
        try:
            # Through the fault proxy (the storm's partitions) and restartable (the storm).
            target = dataclasses.replace(LoadTarget.direct(broker, ids), via_proxy=True, restartable=broker)
            started = time.monotonic()
            result = run_load(
                target, profile, workdir=Path(tmp) / "fleet", storm=False, processes=args.processes, progress=print
            )
        finally:
            broker.kill()
    print(f"\n{result.summary()}\n(wall {time.monotonic() - started:.0f} s, load average {os.getloadavg()[0]:.2f})")
    restart = result.restart
    if restart is None:
        print("no restart storm: " + "; ".join(result.notes))
        return 1
    print(
        f"   broker down {restart.outage_s:.1f} s; devices held {restart.held_s:.1f} s until the collector was back\n"
        f"   attempts while down: {restart.attempts_in_outage} (the contract's backoff allows {restart.max_attempts})\n"
        f"   every device online {restart.all_online_s} s after release (bound {restart.bound_s:.1f} s); "
        f"published again after {restart.recovery_s} s\n"
        f"   reconnects/s per 1 s: {[round(r) for _, r in restart.rate(1.0)]}\n"
        f"   out of order: {len(restart.out_of_order)} devices; queues not drained: {len(restart.not_drained)}\n"
        f"   loss {result.loss.lost} of {result.loss.expected}; broker dropped {result.broker_dropped}"
    )
    if args.chart:
        args.chart.write_text(reconnect_chart(restart, bin_s=1.0))
        print(f"   chart: {args.chart}")
    problems = [*restart.violations(), *(["loss"] if result.loss.lost else []), *(["broker drops"] if result.broker_dropped else [])]
    print(f"   => {'HELD' if not problems else 'DID NOT HOLD: ' + '; '.join(problems)}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
