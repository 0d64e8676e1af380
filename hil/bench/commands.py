"""The bench subcommands of ``hil``: argument parsing and printing only.

`hil.cli` calls `add_sim_commands` (``hil sim up|down|status``) and `add_bench_commands`
(``flash``, ``provision``, ``monitor``, ``sensor``, ``power``, ``broker``, ``mqtt``). The work is in
the modules next to this one. Bad input exits 2 with one line naming the problem; a rig or
process that fails exits 1; success exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from hil.bench.state import BenchError, BenchInputError, state_dir

if TYPE_CHECKING:  # esptool and the rig model are imported by the commands that use them
    from hil.bench.target import Target
    from hil.link.flasher import AfterReset, Flasher
    from hil.rig.backends import BootStrapPower
    from hil.rig.model import Rig

Handler = Callable[[argparse.Namespace], int]
FORMATTER = argparse.RawDescriptionHelpFormatter


def _guard(name: str, handler: Handler) -> Handler:
    """Turn the library's errors into one line on stderr and the exit code."""

    def run(args: argparse.Namespace) -> int:
        from hil.link.flash_errors import FlashError, FlashInputError

        try:
            return handler(args)
        except (BenchInputError, FlashInputError) as exc:
            print(f"hil {name}: {exc}", file=sys.stderr)
            return 2
        except (BenchError, FlashError) as exc:
            print(f"hil {name}: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # a port, bus or socket of the rig that is not there
            print(f"hil {name}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT
            print(f"hil {name}: interrupted", file=sys.stderr)
            return 130

    return run


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _state_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        help="bench state dir: what hil sim up / hil broker up started (default: $HIL_STATE_DIR, "
        "else ~/.cache/hil/bench)",
    )


def _target_options(parser: argparse.ArgumentParser, *, serial: bool) -> None:
    group = parser.add_argument_group("which board (default: board 0 of hil sim up)")
    if serial:
        group.add_argument("--port", help="serial port URL: /dev/ttyUSB0, rfc2217://HOST:PORT, ...")
    else:
        group.add_argument("--control", help="a virtual board's control endpoint, tcp://127.0.0.1:PORT")
    group.add_argument("--rig", help="a rig of the inventory (rigs/*.toml), reserved while the command runs")
    group.add_argument("--rigs-dir", help="rig inventory directory (default: rigs/)")
    group.add_argument("--lock-dir", help="rig reservation lock directory (default: $HIL_LOCK_DIR)")
    group.add_argument("--board", type=int, help="which board hil sim up started (default 0)")
    group.add_argument("--device", help="which board of a fleet (hil sim up --fleet), e.g. fleet-0003")
    _state_option(parser)


def _target(args: argparse.Namespace) -> Any:
    from hil.bench.target import DEFAULT_RIGS_DIR, Target

    if args.rig and (getattr(args, "port", None) or getattr(args, "control", None)):
        raise BenchInputError("give --rig or --port/--control, not both")
    return Target(
        state_dir=state_dir(args.state_dir),
        port=getattr(args, "port", None),
        control=getattr(args, "control", None),
        rig=args.rig,
        rigs_dir=Path(args.rigs_dir) if args.rigs_dir else DEFAULT_RIGS_DIR,
        board=args.board,
        device=args.device,
        lock_dir=Path(args.lock_dir) if args.lock_dir else None,
    )


def _parser(sub: Any, name: str, *, help: str, description: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, epilog=f"example:\n{example}", formatter_class=FORMATTER
    )
    return parser


# -- hil sim up | down | status --------------------------------------------------------------
def _print_sim(status: Any, *, title: str) -> None:
    from hil.bench.sim import PROBE_TIMEOUT_S, attach_hints

    out = _out()
    if status.kind is None:
        out.print(f"no virtual boards in {status.state_dir}")
        return
    out.print(f"[bold]{title}[/bold] ({status.kind}, state dir {status.state_dir})")
    for entry in status.items:
        alive = {
            "running": "[green]running[/green]",
            "stalled": f"[red]stalled[/red] (its control endpoint did not answer in {PROBE_TIMEOUT_S:g} s)",
        }.get(entry.get("state", ""), "[red]not running[/red]")
        label = f"fleet of {entry['count']}" if entry["name"] == "fleet" else f"mac {entry['mac']}"
        out.print(f"[bold]{entry['name']}[/bold]  pid {entry['pid']}  {label}  {alive}")
        for hint in attach_hints(entry, status.state_dir):
            out.print(f"  {hint}")


def _sim_up(args: argparse.Namespace) -> int:
    from hil.bench import sim

    if args.fleet is not None and args.count is not None:
        raise BenchInputError("give --count N (boards with serial ports) or --fleet N, not both")
    fleet = None
    if args.fleet is not None:
        fleet = sim.FleetRequest(
            count=args.fleet,
            broker_uri=args.broker_uri,
            credentials=Path(args.credentials) if args.credentials else None,
            config=args.config,
            app=args.app,
            ca_file=Path(args.ca_file) if args.ca_file else None,
        )
    status = sim.up(state_dir(args.state_dir), count=1 if args.count is None else args.count, fleet=fleet)
    if args.json:
        _json(status.to_json())
    else:
        _print_sim(status, title="virtual boards up")
        _out().print("stop them with: hil sim down" + (f" --state-dir {args.state_dir}" if args.state_dir else ""))
    return 0


def _sim_down(args: argparse.Namespace) -> int:
    from hil.bench import sim

    stopped = sim.down(state_dir(args.state_dir), purge=args.purge)
    if args.json:
        _json(stopped.to_json())
    elif stopped.kind is None:
        print(f"nothing to stop in {stopped.state_dir}")
    else:
        names = ", ".join(f"{e['name']} (pid {e['pid']})" for e in stopped.items)
        print(f"stopped {names}" + ("; flash removed" if args.purge else ""))
    return 0


def _sim_status(args: argparse.Namespace) -> int:
    from hil.bench import sim

    status = sim.status(state_dir(args.state_dir))
    if args.json:
        _json(status.to_json())
    else:
        _print_sim(status, title="virtual boards")
    return 0


def add_sim_commands(sim_sub: Any) -> None:
    up = _parser(
        sim_sub,
        "up",
        help="start virtual boards (or a fleet) in the background and say how to attach",
        description="Start virtual ESP32-C3 boards detached (they keep running after this command) "
        "and print, per board, its serial URL, control endpoint and the commands that reach it "
        "(hil flash, hil monitor, esptool, hil sensor, hil power). Boards start blank the first "
        "time; their flash is kept in STATE_DIR/boards/board-N between down and up. --fleet N "
        "runs N provisioned boards in one process (no serial ports) against --broker-uri, or "
        "against the broker of 'hil broker up --fleet-accounts N'.",
        example="  hil sim up                     # one board\n"
        "  hil sim up --count 2 --json     # two, machine-readable\n"
        "  hil broker up --fleet-accounts 20 && hil sim up --fleet 20",
    )
    up.add_argument("--count", type=int, help="how many boards, each with its serial port (default 1)")
    up.add_argument("--fleet", type=int, metavar="N", help="a fleet of N boards in one process instead")
    up.add_argument("--broker-uri", help="--fleet: the broker every board is provisioned with")
    up.add_argument("--credentials", help="--fleet: credentials JSON (see hil sim fleet --help)")
    up.add_argument("--config", help="--fleet: §5 settings as a JSON object")
    up.add_argument("--app", help="--fleet: app recipe (default: baseline)")
    up.add_argument("--ca-file", help="--fleet: CA (PEM) for an mqtts:// broker")
    up.add_argument("--json", action="store_true", help="print the boards as JSON")
    _state_option(up)
    up.set_defaults(func=_guard("sim up", _sim_up))

    down = _parser(
        sim_sub,
        "down",
        help="stop the virtual boards hil sim up started",
        description="Stop every board (or the fleet) hil sim up started in the state dir. Their "
        "flash stays, so the next 'hil sim up' boots what was flashed; --purge removes it.",
        example="  hil sim down\n  hil sim down --purge --state-dir /tmp/bench",
    )
    down.add_argument("--purge", action="store_true", help="also remove the boards' flash and identity")
    down.add_argument("--json", action="store_true", help="print what was stopped as JSON")
    _state_option(down)
    down.set_defaults(func=_guard("sim down", _sim_down))

    status = _parser(
        sim_sub,
        "status",
        help="list the virtual boards hil sim up started",
        description="List the boards (or the fleet) of the state dir: pid, whether it still runs, "
        "serial URL, control endpoint, and how to attach.",
        example="  hil sim status\n  hil sim status --json | jq -r '.items[0].serial'",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _state_option(status)
    status.set_defaults(func=_guard("sim status", _sim_status))


# -- hil broker up | down | status --------------------------------------------------------------
def _print_broker(status: Any, title: str) -> None:
    out = _out()
    if not status.record:
        out.print(f"no broker in {status.state_dir}")
        return
    state = "[green]running[/green]" if status.alive else "[red]not running[/red]"
    rec = status.record
    out.print(f"[bold]{title}[/bold]: {rec['broker']} (pid {rec['pid']}) {state}")
    table = Table(show_header=False, box=None, pad_edge=False)
    for kind, url in rec["urls"].items():
        what = {"plain": "username/password", "tls": "TLS, username/password", "mtls": "mutual TLS (client cert CN = user)"}
        table.add_row(f"  {kind}", url, what.get(kind, ""))
    out.print(table)
    out.print(f"  CA file           {rec['ca_file']}")
    out.print(f"  credentials file  {rec['credentials_file']}  (accounts: {rec['observer_user']} reads all; "
              f"{', '.join(rec['devices'][:5])}{' ...' if len(rec['devices']) > 5 else ''})")  # fmt: skip
    out.print(f"  log               {rec['log']}")


def _broker_up(args: argparse.Namespace) -> int:
    from hil.bench import broker

    devices = args.device or list(broker.DEFAULT_DEVICES)
    status = broker.up(state_dir(args.state_dir), devices=devices, fleet_accounts=args.fleet_accounts, kind=args.kind)
    if args.json:
        _json(status.to_json())
        return 0
    _print_broker(status, "broker up")
    first = status.record["devices"][0]
    sd = f" --state-dir {args.state_dir}" if args.state_dir else ""
    _out().print(
        f"provision a board for it: hil provision --device-id {first} --bench-broker{sd} "
        "--wifi-ssid hil-lab   (Wi-Fi password from $HIL_WIFI_PASSWORD)\n"
        f"stop it with: hil broker down{sd}"
    )
    return 0


def _broker_down(args: argparse.Namespace) -> int:
    import time

    from hil.bench import broker

    def announce(running: Any, waits_for: str) -> None:
        if not args.json:
            print(f"stopping {running.record['broker']} (pid {running.record['pid']}): {waits_for}", flush=True)

    started = time.monotonic()
    stopped = broker.down(state_dir(args.state_dir), announce=announce)
    if args.json:
        _json(stopped.to_json())
    elif not stopped.record:
        print(f"no broker in {stopped.state_dir}")
    else:
        print(f"stopped {stopped.record['broker']} (pid {stopped.record['pid']}) in {time.monotonic() - started:.1f} s")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from hil.bench import broker

    status = broker.status(state_dir(args.state_dir))
    if args.json:
        _json(status.to_json())
    else:
        _print_broker(status, "broker")
    return 0


def _add_broker(sub: Any) -> None:
    group = _parser(
        sub,
        "broker",
        help="a test broker for the bench (mosquitto: plain, TLS, mutual TLS)",
        description="Run the test broker the HIL sessions use, in the background, for a person at "
        "the bench: plain, TLS and mutual-TLS listeners on 127.0.0.1, a password file and an ACL "
        "(each device may use esp32/<its id>/#; the observer account reads everything). "
        "Passwords and keys are written to a credentials file (mode 0600), never printed.",
        example="  hil broker up --device bench-1\n  hil broker status --json\n  hil broker down",
    )
    bsub = group.add_subparsers(dest="broker_command", required=True, metavar="SUBCOMMAND")
    up = _parser(
        bsub,
        "up",
        help="start the broker in the background; print its URLs, CA and credentials file",
        description="Start the broker detached (it keeps running after this command) with an "
        "account per --device (password and client certificate) and, with --fleet-accounts N, "
        "for fleet-0000.. so that 'hil sim up --fleet N' can use it. Prints the URLs, the CA "
        "file and the credentials file (JSON: {device: {username, password, client_cert_file, "
        "client_key_file}}).",
        example="  hil broker up\n  hil broker up --device bench-1 --device bench-2 --fleet-accounts 50\n"
        "  mosquitto_sub -L $(hil broker status --json | jq -r .urls.plain)/'esp32/#' -u hil-observer -P ...",
    )
    up.add_argument("--device", action="append", help="a device account (repeatable; default: bench)")
    up.add_argument("--fleet-accounts", type=int, default=0, metavar="N", help="accounts fleet-0000.. for a fleet of N")
    up.add_argument("--kind", default="embedded", help="embedded (mosquitto, else amqtt), mosquitto or amqtt")
    up.add_argument("--json", action="store_true", help="print URLs and file paths as JSON")
    _state_option(up)
    up.set_defaults(func=_guard("broker up", _broker_up))
    down = _parser(
        bsub, "down", help="stop the bench broker",
        description="Stop the broker hil broker up started (cleanly: persistence saved). Says what it "
        "waits for (SIGTERM, then the broker closing its clients, saving and exiting; SIGKILL after "
        "10 s) and how long it took; about a second on a bench (bench/broker_down.py measures it).",
        example="  hil broker down",
    )  # fmt: skip
    down.add_argument("--json", action="store_true", help="print what was stopped as JSON")
    _state_option(down)
    down.set_defaults(func=_guard("broker down", _broker_down))
    status = _parser(
        bsub, "status", help="show the bench broker's URLs and files",
        description="Show whether the bench broker runs, its URLs, CA file and credentials file.",
        example="  hil broker status --json | jq -r .ca_file",
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _state_option(status)
    status.set_defaults(func=_guard("broker status", _broker_status))


# -- hil flash | provision ------------------------------------------------------------------------
def _flash_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-verify", action="store_true", help="skip the MD5 check of every file after writing")
    parser.add_argument("--force", action="store_true", help="write every file, even those already in flash")
    parser.add_argument("--no-reset", action="store_true", help="leave the chip in download mode afterwards")
    parser.add_argument("--json", action="store_true", help="print the flash report as JSON")


def _report(report: Any, args: argparse.Namespace) -> None:
    if args.json:
        _json(
            {
                "port": report.port,
                "seconds": round(report.seconds, 3),
                "verified": report.verified,
                "attempts": report.attempts,
                "files": [
                    {"name": f.name, "offset": f.offset, "size": f.size, "md5": f.md5, "skipped": f.skipped}
                    for f in report.files
                ],
            }
        )
        return
    out = _out()
    table = Table(title=f"flashed via {report.port}", title_justify="left")
    for column in ("offset", "file", "bytes", "result"):
        table.add_column(column)
    for f in report.files:
        result = "[dim]unchanged, skipped[/dim]" if f.skipped else "[green]written[/green]"
        table.add_row(f"0x{f.offset:06x}", Path(f.name).name, str(f.size), result)
    out.print(table)
    verified = "verified by MD5" if report.verified else "not verified (--no-verify)"
    out.print(f"{len(report.written)} written, {len(report.skipped)} skipped, {verified}, {report.seconds:.1f} s")


def _flash(args: argparse.Namespace) -> int:
    from hil.bench import flash, target
    from hil.link.flasher import Flasher

    files, version = flash.files_to_flash(args.manifest, args.recipe, args.files)
    if args.monitor and args.no_reset:
        raise BenchInputError("--monitor watches the new firmware boot; --no-reset would leave the chip in download mode")
    if not args.monitor and (args.elf or args.monitor_timeout is not None):
        raise BenchInputError("--elf and --monitor-timeout go with --monitor")
    if args.monitor_timeout is not None and args.monitor_timeout <= 0:
        raise BenchInputError(f"--monitor-timeout {args.monitor_timeout:g}: give a number of seconds > 0")
    if args.monitor:
        from hil.bench import monitor

        monitor.command(monitor.MonitorRequest(port="-", elf=Path(args.elf) if args.elf else None,
                                               timeout=args.monitor_timeout))  # fmt: skip  # bad input before flashing
    where = _target(args)
    err = Console(stderr=True, highlight=False)
    with target.reserved(where) as rig:
        port = target.serial_port(where, rig)
        Flasher().check(files)  # bad images are refused before the port is opened
        target.ensure_port_free(port, "Nothing was flashed.")
        if not args.json:
            _out().print(f"flashing {len(files)} file(s){f' (version {version})' if version else ''} to {port}")
        with flash.progress_bar(err) as progress, _rig_flashing(where, rig, args) as (flasher, after):
            report = flasher.flash(
                port,
                files,
                progress=None if args.json else progress,
                verify=not args.no_verify,
                skip_unchanged=not args.force,
                after=after,
            )
        _report(report, args)
        if not args.monitor:
            return 0
        return _monitor_after_flash(port, args)  # still reserved: --rig stays this person's


def _monitor_after_flash(port: str, args: argparse.Namespace) -> int:
    """``hil flash --monitor``: esp-idf-monitor on the port the flasher just let go, as
    ``idf.py flash monitor`` does, resetting the chip as it starts so that the whole boot
    of the new firmware is on screen (the flasher's own reset came before it listened)."""
    from hil.bench import monitor, target

    request = monitor.MonitorRequest(port=port, elf=Path(args.elf) if args.elf else None, timeout=args.monitor_timeout)
    target.ensure_port_free(port, "The firmware is flashed; no monitor was started.")
    print(f"hil flash: monitor on {port} (quit: Ctrl+])", file=sys.stderr, flush=True)
    return monitor.run(request)


@contextlib.contextmanager
def _rig_flashing(
    where: Target, rig: Rig | None, args: argparse.Namespace
) -> Iterator[tuple[Flasher, AfterReset]]:
    """The flasher for ``--rig`` as its rig file says (reset method, flash baud; a gpio rig's
    board power-cycled into download mode around the job), and the ``after`` to use; a
    plain flasher for --port or the board 'hil sim up' started."""
    from hil.bench import target
    from hil.link.flasher import Flasher
    from hil.rig.wiring import download_mode, rig_flasher

    after: AfterReset = "no-reset" if args.no_reset else "hard-reset"
    if rig is None:
        yield Flasher(), after
        return

    def boot_power() -> BootStrapPower:  # with the error mapping of --rig's other backends
        return target._backend(rig, lambda backends: backends.boot_power())

    with download_mode(rig, boot_power, after) as rig_after:
        yield rig_flasher(rig), rig_after


def _provision(args: argparse.Namespace) -> int:
    from hil.bench import flash, target

    request = flash.ProvisionRequest(
        device_id=args.device_id,
        broker=args.broker,
        wifi_ssid=args.wifi_ssid,
        wifi_password=flash.SecretSource(args.wifi_password_env, Path(args.wifi_password_file) if args.wifi_password_file else None,
                                         explicit=args.wifi_password_env != "HIL_WIFI_PASSWORD"),
        mqtt_user=args.mqtt_user,
        mqtt_password=flash.SecretSource(args.mqtt_password_env, Path(args.mqtt_password_file) if args.mqtt_password_file else None,
                                         explicit=args.mqtt_password_env != "HIL_MQTT_PASSWORD"),
        ca_file=args.ca_file,
        client_cert_file=args.client_cert_file,
        client_key_file=args.client_key_file,
        ota_pubkey_file=args.ota_pubkey_file,
        config=args.config,
        bench_broker=args.bench_broker,
        state_dir=state_dir(args.state_dir),
    )  # fmt: skip
    prov, config, described = flash.provisioning(request)
    out = _out()
    if args.out:
        path = flash.write_image(Path(args.out), prov, config)
        if not args.json:
            for line in described:
                out.print(f"  {line}")
            out.print(f"NVS image written to {path} (mode 0600: it holds the secrets)")
        else:
            _json({"out": str(path), "device_id": prov.device_id})
        return 0
    where = _target(args)
    with target.reserved(where) as rig:
        port = target.serial_port(where, rig)
        target.ensure_port_free(port, "Nothing was provisioned.")
        if not args.json:
            out.print(f"provisioning {port}:")
            for line in described:
                out.print(f"  {line}")
        with (
            flash.progress_bar(Console(stderr=True, highlight=False)) as progress,
            _rig_flashing(where, rig, args) as (flasher, after),
        ):
            report = flasher.provision(
                port,
                prov,
                config,
                progress=None if args.json else progress,
                verify=not args.no_verify,
                skip_unchanged=not args.force,
                after=after,
            )
        from hil.bench import controls

        controls.record_provisioning(where.state_dir, port, prov.device_id, config)  # for hil sensor set's note
    _report(report, args)
    return 0


def _add_flash(sub: Any) -> None:
    fl = _parser(
        sub,
        "flash",
        help="flash firmware: manifest, recipe or FILE@OFFSET; progress, skip-unchanged, verify",
        description="Flash a board with esptool (as a library): every file is checked before the "
        "port is opened (chip, image, offsets, partition fit); files already in flash are skipped "
        "(MD5 compare); each region is verified by MD5 after writing; the chip is reset into the "
        "new firmware. The board: --port URL, --rig NAME, or the one hil sim up started.",
        example="  hil flash --recipe baseline                       # the virtual rig's images\n"
        "  hil flash --recipe baseline --monitor             # then watch it boot (idf.py flash monitor)\n"
        "  hil flash --manifest firmware/env-monitor.toml --rig bench-1\n"
        "  hil flash --port rfc2217://127.0.0.1:4000 build/bootloader/bootloader.bin@0x0 "
        "build/partition_table/partition-table.bin@0x8000 build/app.bin@0x10000",
    )
    fl.add_argument("files", nargs="*", metavar="FILE@OFFSET", help="images and where they go, e.g. app.bin@0x10000")
    fl.add_argument("--manifest", help="a firmware manifest (TOML, see docs/firmware.md)")
    fl.add_argument("--recipe", help="a recipe of firmware/recipes.toml (virtual rig images), e.g. baseline")
    fl.add_argument("--monitor", action="store_true",
                    help="then watch the port with esp-idf-monitor (as idf.py flash monitor; the chip is reset as it starts)")  # fmt: skip
    fl.add_argument("--elf", help="--monitor: the app's ELF, for panic backtrace decoding")
    fl.add_argument("--monitor-timeout", type=float, metavar="S", help="--monitor: quit it after S seconds (scripts)")
    _flash_options(fl)
    _target_options(fl, serial=True)
    fl.set_defaults(func=_guard("flash", _flash))

    pr = _parser(
        sub,
        "provision",
        help="build the device's NVS provisioning image and flash it to the nvs partition",
        description="Build the provisioning NVS image (namespace 'device': id, Wi-Fi, broker, "
        "credentials, CA, client certificate and key, OTA key; optional §5 settings) and flash "
        "it to the nvs partition (0x9000), then reset. Secrets are read from environment "
        "variables (default $HIL_WIFI_PASSWORD, $HIL_MQTT_PASSWORD) or files, never from the "
        "command line, and never printed. --bench-broker takes the URI, account and CA from "
        "'hil broker up'. --out FILE writes the image instead of flashing it.",
        example="  HIL_WIFI_PASSWORD=hil-lab-password hil provision --device-id bench --bench-broker "
        "--wifi-ssid hil-lab\n"
        "  hil provision --port /dev/ttyUSB0 --device-id env-7 --broker mqtts://10.0.0.2:8883 "
        "--ca-file ca.pem --mqtt-user env-7 --mqtt-password-file ~/.secrets/env-7",
    )
    pr.add_argument("--device-id", required=True, help="the device id (MQTT topics esp32/<id>/...)")
    pr.add_argument("--broker", help="broker URI the device connects to: mqtt://HOST:PORT or mqtts://HOST:PORT")
    pr.add_argument(
        "--bench-broker", nargs="?", const="plain", choices=("plain", "tls", "mtls"),
        help="use the broker of 'hil broker up' (listener: plain, tls or mtls; default plain)",
    )  # fmt: skip
    pr.add_argument("--wifi-ssid", help="the access point to join (the virtual rig's: hil-lab)")
    pr.add_argument("--wifi-password-env", default="HIL_WIFI_PASSWORD", metavar="VAR", help="env var with the Wi-Fi password")
    pr.add_argument("--wifi-password-file", metavar="FILE", help="file with the Wi-Fi password")
    pr.add_argument("--mqtt-user", help="broker username")
    pr.add_argument("--mqtt-password-env", default="HIL_MQTT_PASSWORD", metavar="VAR", help="env var with the broker password")
    pr.add_argument("--mqtt-password-file", metavar="FILE", help="file with the broker password")
    pr.add_argument("--ca-file", help="CA certificate (PEM) the device trusts, for mqtts://")
    pr.add_argument("--client-cert-file", help="client certificate (PEM), for mutual TLS")
    pr.add_argument("--client-key-file", help="client key (PEM), for mutual TLS")
    pr.add_argument("--ota-pubkey-file", help="OTA signature public key (PEM)")
    pr.add_argument("--config", help='§5 factory settings as JSON, e.g. \'{"measurement_interval_s": 5}\'')
    pr.add_argument("--out", help="write the NVS image to this file (0600) instead of flashing it")
    _flash_options(pr)
    _target_options(pr, serial=True)
    pr.set_defaults(func=_guard("provision", _provision))


# -- hil monitor ------------------------------------------------------------------------------------
def _monitor(args: argparse.Namespace) -> int:
    from hil.bench import monitor, target

    where = _target(args)
    with target.reserved(where) as rig:
        request = monitor.MonitorRequest(
            port=target.serial_port(where, rig),
            elf=Path(args.elf) if args.elf else None,
            no_reset=args.no_reset,
            timeout=args.timeout,
            baud=args.baud,
            timestamps=args.timestamps,
        )
        monitor.command(request)  # bad input refused before anything runs
        monitor.check_port(request)
        target.ensure_port_free(request.port, "No monitor was started.")
        print(f"hil monitor: {request.port} (quit: Ctrl+])", file=sys.stderr, flush=True)
        return monitor.run(request)


def _add_monitor(sub: Any) -> None:
    mo = _parser(
        sub,
        "monitor",
        help="esp-idf-monitor on a board's serial port (local or rfc2217://)",
        description="Watch a board's serial output with esp-idf-monitor (as idf.py monitor): "
        "resets the chip on start (unless --no-reset), colours log levels, Ctrl+T menu, "
        "Ctrl+] quits. With --elf, panic backtraces are decoded to functions and lines (needs "
        "ESP-IDF's riscv32-esp-elf-gdb on PATH; the virtual rig's apps have no ELF, so their "
        "panics pass through undecoded). Without a terminal (scripts), esp-idf-monitor reads "
        "line commands from stdin; --timeout S stops it after S seconds.",
        example="  hil monitor                                   # board 0 of hil sim up\n"
        "  hil monitor --port rfc2217://labhost:4000 --elf build/env-monitor.elf\n"
        "  hil monitor --timeout 10 > boot.log            # capture a boot, then quit",
    )
    mo.add_argument("--elf", help="the running app's ELF, for panic backtrace and address decoding")
    mo.add_argument("--no-reset", action="store_true", help="do not reset the chip on start")
    mo.add_argument("--timeout", type=float, help="quit after this many seconds")
    mo.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    mo.add_argument("--timestamps", action="store_true", help="prefix each line with the time")
    _target_options(mo, serial=True)
    mo.set_defaults(func=_guard("monitor", _monitor))


# -- hil mqtt watch ---------------------------------------------------------------------------------
def _mqtt_watch(args: argparse.Namespace) -> int:
    from hil.bench import mqtt_watch

    request = mqtt_watch.WatchRequest(
        state_dir=state_dir(args.state_dir),
        device=args.device,
        topics=args.topic or (),
        broker=args.broker,
        credentials=Path(args.credentials).expanduser() if args.credentials else None,
        count=args.count,
        timeout=args.timeout,
        as_json=args.json,
    )
    return mqtt_watch.run(
        request,
        emit=lambda line: print(line, flush=True),
        note=lambda line: print(line, file=sys.stderr, flush=True),
    )


def _add_mqtt(sub: Any) -> None:
    group = _parser(
        sub,
        "mqtt",
        help="watch what the devices say over MQTT, live and readable",
        description="MQTT at the bench, as the test observer sees it.",
        example="  hil mqtt watch --device bench-1",
    )
    msub = group.add_subparsers(dest="mqtt_command", required=True, metavar="SUBCOMMAND")
    watch = _parser(
        msub,
        "watch",
        help="print each message live: time, device, topic, [retained], compact payload",
        description="Subscribe as the test observer and print one line per message: the time it "
        "arrived, the device, the topic after esp32/<id>/, [retained] for what the broker kept, "
        "and the payload compacted (JSON as key=value, numbers to two decimals; fields named like "
        "a password or token show ***). The login: --credentials FILE (the mosquitto_sub options "
        "file a --keep-on-failure run prints, or hil broker up's credentials.json), else the "
        "bench broker's (hil broker up, found in the state dir). Passwords are never printed. "
        "Ctrl-C or SIGTERM quits (exit 0); --count and --timeout stop it for scripts.",
        example="  hil mqtt watch --device bench-1               # the bench broker of hil broker up\n"
        "  hil mqtt watch --credentials /path/to/mosquitto_sub --device hil-virtual-0   # a kept rig\n"
        "  hil mqtt watch --topic 'esp32/+/status' --count 5 --json",
    )
    watch.add_argument("--device", help="only this device's topics (esp32/ID/#); default: every device (esp32/#)")
    watch.add_argument("--topic", action="append", metavar="FILTER", help="an MQTT topic filter instead (repeatable)")
    watch.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT (default: the login file's, else the bench broker's)")
    watch.add_argument("--credentials", metavar="FILE", help="login file: a mosquitto_sub options file or a credentials.json")
    watch.add_argument("--count", type=int, metavar="N", help="quit after N messages")
    watch.add_argument("--timeout", type=float, metavar="S", help="quit after S seconds")
    watch.add_argument("--json", action="store_true", help="one JSON object per message")
    _state_option(watch)
    watch.set_defaults(func=_guard("mqtt watch", _mqtt_watch))


# -- hil sensor | power -----------------------------------------------------------------------------
def _print_sensor(values: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        _json(values)
        return
    faults = values.get("faults")
    line = (
        f"temperature {values['temperature_c']:.2f} °C  humidity {values['humidity_pct']:.2f} %  "
        f"pressure {values['pressure_hpa']:.2f} hPa"
    )
    if faults is not None:
        line += f"  faults: {', '.join(faults) or 'none'}"
    print(line)


def _sensor(args: argparse.Namespace) -> int:
    from hil.bench import controls, target

    where = _target(args)
    note = None
    with target.reserved(where) as rig:
        sensor = target.sensor(where, rig)
        if args.sensor_command == "get":
            values = controls.sensor_get(sensor)
        elif args.sensor_command == "set":
            values = controls.sensor_set(
                sensor, temperature_c=args.temperature, humidity_pct=args.humidity, pressure_hpa=args.pressure
            )
            note = controls.reading_note(where.state_dir, _board_port(where, rig))
        else:
            values = controls.sensor_fault(sensor, args.fault, active=not args.clear)
    _print_sensor(values, args)
    if note is not None and not args.json:
        print(note)
    return 0


def _board_port(where: Target, rig: Rig | None) -> str | None:
    """The serial port of the board a control command acts on, where one is known (a
    --control URL alone names none): what `hil provision` recorded its settings under."""
    from hil.bench import target

    if where.control is not None:
        return None
    try:
        return target.serial_port(where, rig)
    except (BenchError, BenchInputError):
        return None


def _add_sensor(sub: Any) -> None:
    from hil.bench.controls import FAULTS

    group = _parser(
        sub,
        "sensor",
        help="read, set or fault the board's BME280 (virtual board or rig sensor backend)",
        description="The sensor emulator of a virtual board (its control endpoint), or a real "
        "rig's reference BME280 (read only).",
        example="  hil sensor get\n  hil sensor set --temperature 30 --humidity 55\n"
        "  hil sensor fault nack\n  hil sensor fault none",
    )
    ssub = group.add_subparsers(dest="sensor_command", required=True, metavar="SUBCOMMAND")
    get = _parser(
        ssub, "get", help="the environment the sensor is exposed to, and its faults",
        description="Print temperature, humidity, pressure and the active faults.",
        example="  hil sensor get --json",
    )  # fmt: skip
    set_ = _parser(
        ssub, "set", help="set temperature, humidity and/or pressure",
        description="Set any of the values; the others keep theirs. The board's next reading "
        "shows them (within the BME280's accuracy): says when, from the measurement_interval_s "
        "hil provision --config set on that board (else the firmware's default).",
        example="  hil sensor set --temperature 35.5\n  hil sensor set --humidity 80 --pressure 990",
    )  # fmt: skip
    set_.add_argument("--temperature", type=float, metavar="C", help="°C (-40..85)")
    set_.add_argument("--humidity", type=float, metavar="PCT", help="%% RH (0..100)")
    set_.add_argument("--pressure", type=float, metavar="HPA", help="hPa (300..1100)")
    fault = _parser(
        ssub, "fault", help="inject a sensor fault (or clear one, or all)",
        description=f"Inject a fault on the sensor's I2C side: {', '.join(FAULTS)}. "
        "'none' clears all; --clear clears the one named.",
        example="  hil sensor fault bus_held_low\n  hil sensor fault bus_held_low --clear\n  hil sensor fault none",
    )  # fmt: skip
    fault.add_argument("fault", metavar="FAULT", help=f"{', '.join(FAULTS)} or none")
    fault.add_argument("--clear", action="store_true", help="clear this fault instead of injecting it")
    for parser in (get, set_, fault):
        parser.add_argument("--json", action="store_true", help="print the sensor state as JSON")
        _target_options(parser, serial=False)
        parser.set_defaults(func=_guard(f"sensor {parser.prog.split()[-1]}", _sensor))


def _power(args: argparse.Namespace) -> int:
    from hil.bench import controls, target

    where = _target(args)
    with target.reserved(where) as rig:
        result = controls.power(target.power(where, rig), args.power_command, off_s=args.off_s)
    if args.json:
        _json(result)
    else:
        state = f": the board is powered {'on' if result['powered'] else 'off'}" if "powered" in result else ""
        print(f"power {args.power_command}{state}")
    return 0


def _add_power(sub: Any) -> None:
    group = _parser(
        sub,
        "power",
        help="switch the board's supply: on, off, cycle (rig power backend or virtual board)",
        description="The rig's power switch: a virtual board's control endpoint, a GPIO expander "
        "relay or a uhubctl hub port, as the rig file says.",
        example="  hil power cycle\n  hil power off --rig bench-1",
    )
    psub = group.add_subparsers(dest="power_command", required=True, metavar="SUBCOMMAND")
    for action, text in (("on", "power the board"), ("off", "cut the board's supply"), ("cycle", "off, wait, on")):
        parser = _parser(psub, action, help=text, description=f"{text[0].upper()}{text[1:]}.", example=f"  hil power {action}")
        parser.add_argument("--off-s", type=float, default=0.5, help="cycle: how long the supply stays off (s)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        _target_options(parser, serial=False)
        parser.set_defaults(func=_guard(f"power {action}", _power))


def add_bench_commands(sub: Any) -> None:
    """``hil flash``, ``provision``, ``monitor``, ``sensor``, ``power``, ``broker`` and ``mqtt``."""
    _add_flash(sub)
    _add_monitor(sub)
    _add_sensor(sub)
    _add_power(sub)
    _add_broker(sub)
    _add_mqtt(sub)
