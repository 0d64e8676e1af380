"""The ``hil`` command. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _firmware_build(args: argparse.Namespace) -> int:
    from hil.firmware.catalog import FirmwareError, build_images, load_recipes

    try:
        book = load_recipes(Path(args.recipes)) if args.recipes else load_recipes()
        names = args.recipe or sorted(book.recipes)
        written = build_images(book, names, Path(args.out))
    except FirmwareError as exc:
        print(f"hil firmware build: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _rigs(args: argparse.Namespace) -> int:
    if args.rigs_command == "check":
        return _rigs_check(args)
    if args.rigs_command in ("lock", "release", "wait"):
        return _rigs_lease(args)
    import json

    from hil.rig.errors import RigError
    from hil.rig.reservation import who_holds
    from hil.rig.rigfile import default_rigs_dir, load_rigs

    try:
        rigs = load_rigs(args.rigs_dir or default_rigs_dir())
    except RigError as exc:
        print(f"hil rigs: {exc}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    for rig in rigs:
        holder = who_holds(rig, lock_dir=args.lock_dir)
        rows.append(
            {
                "name": rig.name,
                "kind": rig.kind,
                "chip": rig.chip,
                "port": rig.port or ("(the acquired place's)" if rig.kind == "labgrid" else "(started by the session)"),
                "tags": list(rig.tags),
                "capabilities": sorted(rig.capabilities),
                "held_by": None if holder is None else holder.describe(),
                "twin_of": rig.twin_of,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([16, *(len(row["name"]) for row in rows)])
    for row in rows:
        held = f"held by {row['held_by']}" if row["held_by"] else "free"
        twin = f"; virtual twin of {row['twin_of']}" if row["twin_of"] else ""
        print(f"{row['name']:<{width}} {row['kind']:<8} {row['chip']:<9} {held}")
        print(f"{'':<{width}} port {row['port']}; tags {', '.join(row['tags']) or '-'}{twin}")
        print(f"{'':<{width}} capabilities {', '.join(row['capabilities'])}")
    return 0


def _rigs_check(args: argparse.Namespace) -> int:
    import contextlib

    from hil.rig.check import check_rigs
    from hil.rig.errors import RigError, UnknownRig
    from hil.rig.rigfile import default_rigs_dir, load_rigs

    try:
        rigs = load_rigs(args.rigs_dir or default_rigs_dir())
    except RigError as exc:
        print(f"hil rigs check: {exc}", file=sys.stderr)
        return 2
    failed = False
    try:
        with contextlib.closing(check_rigs(rigs, args.name, lock_dir=args.lock_dir)) as results:
            for result in results:
                print(result.line(), flush=True)
                failed = failed or result.failed
    except UnknownRig as exc:
        print(f"hil rigs check: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _duration(text: str) -> float:
    """``2h``, ``30m``, ``90s``, ``1h30m`` or plain seconds, for ``--for`` and ``--timeout``."""
    import math
    import re

    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration like 2h, 30m, 90s or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not math.isfinite(total) or total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration > 0")
    return total


def _rigs_lease(args: argparse.Namespace) -> int:
    """``hil rigs lock | release | wait NAME``: a lease on a rig beyond one process
    (`hil.rig.reservation`, leases): who holds it, until when."""
    import time

    from hil.rig.errors import NoRigAvailable, RigError
    from hil.rig.reservation import Reservation
    from hil.rig.rigfile import default_rigs_dir, load_rigs

    command = f"hil rigs {args.rigs_command}"
    try:
        rigs = load_rigs(args.rigs_dir or default_rigs_dir())
    except RigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    names = [rig.name for rig in rigs]
    if args.name not in names:
        from hil.rig.errors import suggest

        pool = [rig.name for rig in rigs if rig.pool == args.name]
        hint = f"{args.name!r} is a pool: name one of its rigs ({', '.join(pool)})" if pool else suggest(args.name, names)
        print(f"{command}: no rig named {args.name!r}; {hint}", file=sys.stderr)
        return 2
    reservation = Reservation(args.lock_dir)

    def stamp(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))

    try:
        if args.rigs_command == "lock":
            if args.wait:
                waited = reservation.wait_free(args.name, args.wait)
                if waited is not None:
                    print(f"{command}: {args.name} is still held by {waited.describe()} after {args.wait:g} s",
                          file=sys.stderr)  # fmt: skip
                    return 1
            lease = reservation.lock(args.name, args.duration)
            assert lease.until is not None
            print(f"{args.name} locked by {lease.user} on {lease.host} until {stamp(lease.until)} "
                  f"(sessions of {lease.user} on {lease.host} may use it; others wait); "
                  f"release it with: hil rigs release {args.name}")  # fmt: skip
            return 0
        if args.rigs_command == "release":
            ended = reservation.release_lease(args.name, anyone=args.force)
            holder = reservation.who_holds(args.name)
            if ended is None and holder is None:
                print(f"{args.name} was not locked; it is free")
            elif ended is not None:
                print(f"{args.name} released (was locked by {ended.user} on {ended.host})")
            if holder is not None:  # a session's flock: it ends with its process only
                print(f"{command}: {args.name} is held by a session: {holder.describe()}; "
                      "it lets go when that process ends", file=sys.stderr)  # fmt: skip
                return 1
            return 0
        still = reservation.wait_free(args.name, args.timeout)
    except NoRigAvailable as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    except RigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    if still is not None:
        print(f"{command}: {args.name} still held by {still.describe()} after {args.timeout:g} s", file=sys.stderr)
        return 1
    print(f"{args.name} is free")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from hil.reporting.gate import GateError, load_profile, override, run_gate, verdict_table
    from hil.reporting.progress import Progress

    try:
        profile = override(
            load_profile(args.profile, Path(args.gates_dir)),
            firmware=args.firmware,
            broker=args.broker,
            rig=args.rig,
            rig_tag=args.rig_tag,
        )
        out = Path(args.out or f"gate-results/{profile.name}")
        print(f"hil gate {profile.name}: {profile.description or profile.path}", flush=True)
        result = run_gate(profile, out, progress=Progress(sys.stdout))
    except GateError as exc:
        print(f"hil gate: {exc}", file=sys.stderr)
        return 2
    print()
    print(verdict_table(result))
    print(f"summary: {out / 'summary.json'}; JUnit: {out}/junit-*.xml; pytest's output: {out}/pytest-*.log; "
          f"Allure results: {out / 'allure-results'}")  # fmt: skip
    _gate_report(out, profile.name, result.verdict)
    return 0 if result.verdict == "go" else 1


def _gate_report(out: Path, profile: str, verdict: str) -> None:
    """The gate's HTML report, its history kept in OUT/history; a report that cannot be
    made is said, and leaves the verdict (the exit code) as it is."""
    from hil.reporting.html_report import ReportError, gate_report

    try:
        index, _ = gate_report(out, profile=profile, verdict=verdict)
    except ReportError as exc:
        print(f"report: not made: {exc}", file=sys.stderr)
        return
    print(f"report: {index} (history: {out / 'history'})")


def _report(args: argparse.Namespace) -> int:
    from hil.reporting.html_report import ReportError, generate, write_clause_page

    results = [Path(r) for r in args.results]
    try:
        index = generate(results, Path(args.out), name=args.name, history=Path(args.history) if args.history else None)
    except ReportError as exc:
        print(f"hil report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    clauses = write_clause_page(results, Path(args.out))
    if clauses is not None:
        print(f"clauses: {clauses}")
    return 0


def _clauses(args: argparse.Namespace) -> int:
    """``pytest PATHS --clauses`` in a process of its own: the plugin collects (``hil``
    never imports the plugin or the tests), ``hil.reporting.clause_matrix`` prints."""
    import subprocess

    command = [sys.executable, "-m", "pytest", *args.paths, "--clauses", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(command, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    from hil.bench.commands import add_bench_commands, add_sim_commands
    from hil.sim.commands import add_simulator_commands

    parser = argparse.ArgumentParser(
        prog="hil",
        description="Hardware-in-the-loop testing for ESP32-C3 firmware: virtual boards, "
        "firmware images, flashing and rigs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("sim", help="the virtual ESP32-C3 rig")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    add_simulator_commands(sim_sub)  # board, fleet: the simulator's own processes (hil.sim)
    add_sim_commands(sim_sub)  # up, down, status: boards in the background (hil.bench)

    fw = sub.add_parser("firmware", help="firmware images for the virtual rig")
    fw_sub = fw.add_subparsers(dest="firmware_command", required=True, metavar="SUBCOMMAND")
    build = fw_sub.add_parser(
        "build",
        help="build the virtual rig's images from recipes",
        description="Build bootloader.bin, partition-table.bin, ota_data_initial.bin, one "
        "<recipe>.bin per app recipe and flash_args (esptool @file syntax, baseline app) "
        "into --out. Builds are reproducible: the same recipe gives the same bytes.",
    )
    build.add_argument("recipe", nargs="*", help="recipe names (default: all)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument(
        "--recipes",
        default=None,
        help="recipe book (default: the virtual rig's, firmware/recipes.toml)",
    )
    build.set_defaults(func=_firmware_build)

    root = Path(__file__).resolve().parent.parent
    rigs = sub.add_parser(
        "rigs",
        help="the rig inventory: capabilities and who holds each reservation",
        description="List the rigs of the inventory (rigs/*.toml): kind, chip, port, tags, "
        "capabilities, and whether a session holds it (pid, host, user, xdist worker, CI job).",
    )
    rigs.add_argument("--rigs-dir", default=None, help="rig inventory directory (default: ./rigs, else the packaged virtual rig)")
    rigs.add_argument("--lock-dir", help="reservation lock directory (default: $HIL_LOCK_DIR or the system one)")
    rigs.add_argument("--json", action="store_true", help="machine-readable output")
    rigs.set_defaults(func=_rigs, rigs_command=None)
    rigs_sub = rigs.add_subparsers(dest="rigs_command", metavar="SUBCOMMAND")
    check = rigs_sub.add_parser(
        "check",
        help="check a rig without flashing it: port, chip, MAC, power, sensor",
        description="Check everything about a rig that can be checked without flashing, one "
        "line per check (ok, FAIL with the fix, or skip where it does not apply): reserved, "
        "port present and free, the chip answers esptool with the rig's reset method and flash "
        "baud, chip id and MAC as the rig file says, the power backend reachable, the sensor "
        "answering. Stops at the first failure and exits 1 (2: a bad inventory or an unknown "
        "name). A virtual rig's board is started for the check and stopped after it.",
    )
    check.add_argument(
        "name", nargs="?", default=None,
        help="a rig or pool of the inventory (default: the rig a bare session takes, the virtual one)",
    )  # fmt: skip
    # Also after the subcommand (hil rigs check NAME --rigs-dir DIR); SUPPRESS keeps a value
    # given before it (hil rigs --rigs-dir DIR check NAME).
    check.add_argument("--rigs-dir", default=argparse.SUPPRESS, help="rig inventory directory")
    check.add_argument("--lock-dir", default=argparse.SUPPRESS, help="reservation lock directory")
    lease_note = (
        "A lease is a record in the lock directory, not a process: sessions of other users or "
        "hosts are refused the rig until it ends or is released; the leaseholder's own sessions "
        "(same user on the same host) may use it. It ends by itself at its time, so a cancelled "
        "job's rig comes back."
    )
    lock = rigs_sub.add_parser(
        "lock",
        help="hold a rig for a while (default 2 h), beyond one process: a lease that expires",
        description="Lock rig NAME for --for (default 2h) for you (this user on this host). " + lease_note
        + " Locking it again extends it. Refused, naming the holder, when a session or someone "
        "else's lease holds it (--wait S waits for it first). Example: hil rigs lock devkitm-1 --for 30m",
    )  # fmt: skip
    lock.add_argument("name", help="a rig of the inventory")
    lock.add_argument("--for", dest="duration", type=_duration, default=7200.0, metavar="DURATION",
                      help="how long: 2h, 30m, 90s, 1h30m (default 2h)")  # fmt: skip
    lock.add_argument("--wait", type=_duration, metavar="DURATION", help="wait up to this long for it to come free")
    release = rigs_sub.add_parser(
        "release",
        help="end your lease on a rig now",
        description="Release the lease 'hil rigs lock' took on NAME. " + lease_note
        + " A session's hold ends only with its process (the holder is named). Example: hil rigs release devkitm-1",
    )  # fmt: skip
    release.add_argument("name", help="a rig of the inventory")
    release.add_argument("--force", action="store_true", help="release another user's lease too")
    wait = rigs_sub.add_parser(
        "wait",
        help="wait until a rig is free (no session, no one else's lease)",
        description="Wait until no session and no other user's lease holds NAME, then exit 0; "
        "exit 1 naming the holder after --timeout. Example: hil rigs wait devkitm-1 --timeout 10m && hil rigs lock devkitm-1",
    )  # fmt: skip
    wait.add_argument("name", help="a rig of the inventory")
    wait.add_argument("--timeout", type=_duration, metavar="DURATION", help="give up after this long (default: wait on)")
    for lease_parser in (lock, release, wait):  # also after the subcommand, as for check
        lease_parser.add_argument("--rigs-dir", default=argparse.SUPPRESS, help="rig inventory directory")
        lease_parser.add_argument("--lock-dir", default=argparse.SUPPRESS, help="reservation lock directory")

    gate = sub.add_parser(
        "gate",
        help="run a validation gate profile and decide go / no-go",
        description="Run the tests a gate profile (gates/PROFILE.toml) selects, on its rig, "
        "broker and firmware; re-run tests broken by infrastructure errors (never failed "
        "ones) up to the profile's retries; show progress as tests finish (counts, done/total, "
        "an ETA from the previous run's durations; pytest's own output goes to OUT/pytest-N.log); "
        "write JUnit XML, Allure results and summary.json (schema: hil/reporting/summary.schema.json; "
        "verdict, counts per outcome and suite, thresholds, start and end, durations of the run and "
        "of every test, commit, host, firmware, rigs, broker) into --out; print a verdict table; write "
        "the HTML report (OUT/report/index.html, titled with the gate and verdict; needs the Allure 3 CLI) "
        "with its history kept in OUT/history, so each run's report shows the trend. "
        "Exit 0 on go, 1 on no-go, 2 on a profile error. "
        "For a staging broker give --broker mqtts://HOST:PORT and its credentials in "
        "HIL_BROKER_CA_FILE, HIL_BROKER_CLIENT_CERT_FILE, HIL_BROKER_CLIENT_KEY_FILE, "
        "HIL_BROKER_USERNAME, HIL_BROKER_PASSWORD.",
    )
    gate.add_argument("profile", help="profile name (gates/NAME.toml) or a path to a .toml profile")
    gate.add_argument("--gates-dir", default=str(root / "gates"), help="where profiles live")
    gate.add_argument("--out", help="results directory (default: gate-results/PROFILE)")
    gate.add_argument("--firmware", help="override the profile's firmware (recipe name or manifest)")
    gate.add_argument("--broker", help="override the profile's broker (embedded, mosquitto or a URI)")
    gate.add_argument("--rig", help="override the profile's rig")
    gate.add_argument("--rig-tag", help="override the profile's rig tag")
    gate.set_defaults(func=_gate)

    report = sub.add_parser(
        "report",
        help="turn Allure results into an HTML report (Allure 3, no Java)",
        description="Generate the HTML report of one or more Allure results directories "
        "(pytest --alluredir DIR; hil gate writes OUT/allure-results) with the Allure 3 CLI "
        "that setup.sh installs. Open OUT/index.html in a browser. With --history DIR the report "
        "shows the runs reported before it with the same DIR (trend charts, each test's history) "
        "and adds this one; hil gate keeps its own in OUT/history.",
    )
    report.add_argument("results", nargs="+", help="Allure results directories")
    report.add_argument("--out", default="hil-report", help="output directory (default: hil-report)")
    report.add_argument(
        "--name",
        help="the report's title (default: the gate and its verdict for a gate's results, from the "
        "summary.json beside them, else 'HIL report')",
    )
    report.add_argument(
        "--history",
        metavar="DIR",
        help="keep the report history in DIR (history.jsonl, made if missing): give the same DIR every run",
    )
    report.set_defaults(func=_report)

    clauses = sub.add_parser(
        "clauses",
        help="the device-contract clause matrix: clause -> the tests that assert it",
        description="Collect the tests (nothing runs) and print, section by section, each "
        "clause of docs/device-contract.md with the tests that name it in "
        "@pytest.mark.clause(...); a normative clause with none is marked NO TEST. The same as "
        "`pytest PATHS --clauses`. Example: hil clauses tests/hil",
    )
    clauses.add_argument("paths", nargs="*", default=["tests/hil"], help="test paths (default: tests/hil)")
    clauses.set_defaults(func=_clauses)

    add_bench_commands(sub)  # flash, provision, monitor, sensor, power, broker (hil.bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
