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
    return 0 if result.verdict == "go" else 1


def _report(args: argparse.Namespace) -> int:
    from hil.reporting.html_report import ReportError, generate, write_clause_page

    results = [Path(r) for r in args.results]
    try:
        index = generate(results, Path(args.out), name=args.name)
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

    gate = sub.add_parser(
        "gate",
        help="run a validation gate profile and decide go / no-go",
        description="Run the tests a gate profile (gates/PROFILE.toml) selects, on its rig, "
        "broker and firmware; re-run tests broken by infrastructure errors (never failed "
        "ones) up to the profile's retries; show progress as tests finish (counts, done/total, "
        "an ETA from the previous run's durations; pytest's own output goes to OUT/pytest-N.log); "
        "write JUnit XML, Allure results and summary.json (schema: hil/reporting/summary.schema.json; "
        "verdict, counts per outcome and suite, thresholds, start and end, durations of the run and "
        "of every test, commit, host, firmware, rigs, broker) into --out; print a verdict table. "
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
        "that setup.sh installs. Open OUT/index.html in a browser.",
    )
    report.add_argument("results", nargs="+", help="Allure results directories")
    report.add_argument("--out", default="hil-report", help="output directory (default: hil-report)")
    report.add_argument("--name", default="HIL report", help="the report's title")
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
