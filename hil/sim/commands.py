"""``hil sim board`` and ``hil sim fleet``: the simulator's own processes, as commands.

``hil.cli`` builds the ``hil sim`` group from this module (what runs a virtual board) and
``hil.bench.commands`` (boards in the background for a bench session: up, down, status).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hil.sim.profiles import PROFILES


def _sim_board(args: argparse.Namespace) -> int:
    from hil.sim.process import BoardOptions, run_board

    return run_board(
        BoardOptions(
            state_dir=Path(args.state_dir),
            mac=args.mac,
            pty=args.pty,
            realistic_timing=args.realistic_timing,
            profile=args.profile,
            usb_jtag=args.usb_jtag,
        )
    )


def _sim_fleet(args: argparse.Namespace) -> int:
    from hil.sim.fleet import FleetError, FleetOptions, parse_config, parse_processes, run_fleet
    from hil.sim.fleet_shards import parse_shard

    try:
        config = parse_config(args.config) if args.config is not None else {}
        processes = parse_processes(args.processes)
        shard = parse_shard(args.shard, args.count) if args.shard is not None else None
    except (FleetError, ValueError) as exc:
        print(f"hil sim fleet: {exc}", file=sys.stderr)
        return 2
    return run_fleet(
        FleetOptions(
            count=args.count,
            state_dir=Path(args.state_dir),
            broker_uri=args.broker_uri,
            credentials=Path(args.credentials) if args.credentials else None,
            config=config,
            app=args.app,
            ca_file=Path(args.ca_file) if args.ca_file else None,
            ota_pubkey=Path(args.ota_pubkey) if args.ota_pubkey else None,
            processes=processes,
            shard=shard,
        )
    )


def add_simulator_commands(sub: Any) -> None:
    """Add ``board`` and ``fleet`` to the ``hil sim`` subcommands."""
    board = sub.add_parser(
        "board",
        help="run one virtual board in the foreground",
        description="Run one virtual ESP32-C3 devkit until SIGTERM/SIGINT. The first stdout "
        "line is JSON: serial (rfc2217://127.0.0.1:PORT or the pty path), control "
        "(tcp://127.0.0.1:PORT, JSON lines), pid, mac, state_dir. Flash it with "
        "`esptool --port <serial> write-flash @flash_args`.",
    )
    board.add_argument("--state-dir", required=True, help="where the 4 MB flash and identity live")
    board.add_argument("--mac", help="base MAC address (default: stable per state dir), e.g. 58:cf:79:01:02:03")
    board.add_argument(
        "--pty",
        action="store_true",
        help="serve UART0 on a pty instead of RFC 2217 (resets then come from the control endpoint)",
    )
    board.add_argument(
        "--realistic-timing",
        action="store_true",
        help="take a real chip's time: UART paced at the baud rate (10 bits/byte), SPI flash "
        "program/erase and MD5 at datasheet durations (for benchmarks; off by default: slow)",
    )
    board.add_argument(
        "--profile",
        default="default",
        choices=sorted(PROFILES),
        help="how real the board is: 'default' (as fast as the host; a reset closes the firmware's "
        "connections) or 'real-board' (a C3's boot, UART, flash, Wi-Fi, DHCP, DNS, TLS and MQTT "
        "connect times with seeded jitter, and power cuts and resets that kill TCP silently: the "
        "broker waits out 1.5 x keepalive). Figures: hil/sim/profiles.py, docs/virtual-rig.md",
    )
    board.add_argument(
        "--usb-jtag",
        action="store_true",
        help="the chip's own USB-Serial-JTAG port instead of a devkit's UART bridge: reset by "
        "esptool's --before usb-reset (its classic DTR/RTS pulse boots the app), the port leaves "
        "on a power cut and comes back ~1 s after power-on, output is held while nobody reads "
        "(docs/virtual-rig.md)",
    )
    board.set_defaults(func=_sim_board)

    fleet = sub.add_parser(
        "fleet",
        help="run many provisioned boards' firmware in one process or a few (load and fleet work)",
        description="Run COUNT virtual boards until SIGTERM/SIGINT, each with its own flash "
        "(programmed afresh at every start: the images all boards share, bootloader, "
        "partition table and app, held once in DIR/flash-base-*.bin, read-only; its own "
        "provisioning and later writes in DIR/<device id>/flash.overlay), identity and "
        "sensor, and no serial port. Device ids are fleet-0000, fleet-0001, ... The first "
        "stdout line is JSON: pid, count, device_ids, state_dir, control (tcp://127.0.0.1:PORT, "
        'JSON lines: {"cmd":"state"}, or any board command with "device": ID), shards. With '
        "--processes N the boards run in N shard processes behind that one line and endpoint; "
        'a shard that dies prints {"event": "shard_died", ...} on stdout and stops the fleet (exit 3).',
    )
    fleet.add_argument("--count", required=True, type=int, help="how many boards")
    fleet.add_argument("--state-dir", required=True, help="where the boards' flash files live")
    fleet.add_argument("--broker-uri", required=True, help="what every board is provisioned with: mqtt://HOST:PORT or mqtts://HOST:PORT")
    fleet.add_argument(
        "--credentials",
        help='JSON file {"fleet-0000": {"username": ..., "password": ...}, ...} with an entry '
        "per device (default: no username, for a broker that allows anonymous clients)",
    )
    fleet.add_argument(
        "--config",
        help='§5 settings every board is provisioned with, as a JSON object, e.g. \'{"measurement_interval_s": 1}\'',
    )
    fleet.add_argument("--app", help="app recipe every board runs (default: the baseline recipe)")
    fleet.add_argument("--ca-file", help="CA certificate (PEM) the boards trust, for mqtts:// brokers")
    fleet.add_argument("--ota-pubkey", help="public key (PEM) the boards check OTA offers with (default: none, every offer refused)")
    fleet.add_argument(
        "--processes",
        default="1",
        help="processes to run the boards in: a number, or 'auto' (one per core, none with fewer "
        "than 250 boards); default 1",
    )
    fleet.add_argument("--shard", help=argparse.SUPPRESS)  # INDEX:START:STOP, set by the fleet for its shards
    fleet.set_defaults(func=_sim_fleet)
