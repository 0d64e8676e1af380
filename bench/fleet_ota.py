"""Benchmark: one OTA update offered to every device of a fleet at once (issue #17, 5).

One run starts a mosquitto (an account per device) and an OTA server, then ``hil sim
fleet`` with ``--devices`` boards provisioned with the signer's key, and offers every
device the baseline rebuilt as ``--version`` at the same moment (`hil.load.ota`):
downloads paced to ``--rate`` bytes/s each (0: full speed), the first one cut after
``--cut`` bytes so that at least one device resumes with a Range request. Each device
must install, reboot, pass its self-test and come back online on the new version; the
ones that do not are listed with what they said.

Run: ``.venv/bin/python bench/fleet_ota.py [--devices 1000] [--rate 65536] [--cut 20000]
[--processes auto] [--app RECIPE]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.load.ota import run_fleet_ota
from hil.load.target import LoadTarget, device_ids
from hil.services.broker import BrokerLimits, MosquittoBroker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="devices in the fleet (default 1000)")
    parser.add_argument("--version", default="1.1.0", help="the update's version (default 1.1.0)")
    parser.add_argument("--rate", type=int, default=64 * 1024, help="bytes/s per download, 0: full speed (default 64 KiB/s)")
    parser.add_argument("--cut", type=int, default=20_000, help="cut the first download after this many bytes, 0: none")
    parser.add_argument("--processes", default="auto", help="hil sim fleet --processes (default auto)")
    parser.add_argument("--app", help="recipe the fleet runs and is updated to (default: the baseline)")
    args = parser.parse_args(argv)
    print(f"bench fleet OTA: {args.devices} devices, {args.rate or 'full speed'} B/s per download, on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="hil-bench-ota-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        ids = device_ids(args.devices)
        for device in ids:
            broker.add_device(device)
        broker.apply_limits(BrokerLimits(clients=args.devices + 8))
        broker.start()
        try:
            target = LoadTarget.direct(broker, ids)
            started = time.monotonic()
            result = run_fleet_ota(
                target,
                args.devices,
                workdir=Path(tmp) / "ota",
                version=args.version,
                app=args.app,
                bytes_per_s=args.rate or None,
                cut_after=args.cut or None,
                processes=args.processes,
                progress=print,
            )
        finally:
            broker.kill()
    print(f"\n{result.summary()}\n(wall {time.monotonic() - started:.0f} s, load average {os.getloadavg()[0]:.2f})")
    for device, why in sorted(result.failures.items())[:50]:
        print(f"   {device}: {why}")
    if len(result.failures) > 50:
        print(f"   ... and {len(result.failures) - 50} more")
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
