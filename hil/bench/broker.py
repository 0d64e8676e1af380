"""``hil broker up|down|status``: the test broker, at the bench, for as long as a person needs it.

The broker is the one test sessions use (`hil.services.broker.MosquittoBroker`: plain, TLS and mutual
TLS listeners on loopback, password file, ACL; amqtt where mosquitto is missing). A session
owns its broker; at the bench nobody holds a Python object for hours, so ``up`` starts a
small keeper process, detached (``python -m hil.bench.broker serve``), that owns the broker
and stops it cleanly on SIGTERM (``down``); if the keeper is killed outright, the broker
goes with it (parent-death signal, `hil.processes`).

Secrets never reach the terminal: passwords and client keys are written to
``<state dir>/broker/credentials.json`` and ``devices/<id>.key`` (mode 0600 from creation,
in a 0700 dir, as are the broker's own key and password file under ``work/``); what is
printed is their paths, the URLs and the CA file.

The log (``<state dir>/logs/<kind>-broker.log``) says who connected and subscribed, not
every message (`hil.services.broker.CONNECTION_LOG_TYPES`), and is capped: mosquitto cannot rotate
its log, so the keeper does, logrotate's "copytruncate" way. At start the previous log
moves to ``.1``; while running, once it passes `LOG_CAP_BYTES` it is copied to ``.1`` and
truncated (mosquitto writes with O_APPEND, so it carries on at the new end). At most about
twice the cap is on disk, and nothing needs restarting or signalling the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.bench.state import (
    STOP_TIMEOUT_S,
    BenchInputError,
    item,
    locked,
    processes,
    read_record,
    spawn_detached,
    write_record,
)
from hil.processes import exit_with_owner
from hil.secret import write_private
from hil.services.broker import (
    CONNECTION_LOG_TYPES,
    EMBEDDED_BROKERS,
    OBSERVER_USER,
    BrokerError,
    broker_class,
)

RECORD = "broker.json"
DEFAULT_DEVICES = ("bench",)
MAX_FLEET_ACCOUNTS = 10_000
LOG_CAP_BYTES = 4 * 1024 * 1024
LOG_CHECK_S = 2.0


@dataclass(frozen=True)
class BrokerStatus:
    state_dir: Path
    record: dict[str, Any]  # the keeper's hello: urls, ca_file, credentials_file, ... ({} if none)
    alive: bool

    def to_json(self) -> dict[str, Any]:
        return {"state_dir": str(self.state_dir), "running": self.alive, **self.record}


def status(directory: Path) -> BrokerStatus:
    record = read_record(directory / RECORD)
    if record is None:
        return BrokerStatus(directory, {}, False)
    entry = record["items"][0]
    alive = processes(record)[0].alive()
    return BrokerStatus(directory, {k: v for k, v in entry.items() if k != "process"}, alive)


def accounts(devices: Sequence[str], fleet_accounts: int) -> list[str]:
    """The device accounts to create: the named ones, then fleet-0000.. for ``hil sim up --fleet``."""
    if not 0 <= fleet_accounts <= MAX_FLEET_ACCOUNTS:
        raise BenchInputError(f"--fleet-accounts {fleet_accounts}: give 0..{MAX_FLEET_ACCOUNTS}")
    names = list(dict.fromkeys([*devices, *(f"fleet-{n:04d}" for n in range(fleet_accounts))]))
    for name in names:
        problem = device_id_problem(name)
        if problem:
            raise BenchInputError(f"--device {name!r}: {problem}")
    return names


def device_id_problem(name: str) -> str | None:
    """Why ``name`` cannot be a device id, or None. A device id is one MQTT topic level
    (§4: esp32/{id}/...), a broker account and a line of mosquitto's password and ACL
    files, which separate fields by spaces: so no '/', '#', '+', whitespace or control
    characters, and not the observer's account."""
    if not name or any(c in name for c in "/#+") or any(c.isspace() or not c.isprintable() for c in name):
        return "a device id is a non-empty MQTT topic level (no '/', '#', '+', spaces or control characters)"
    if name == OBSERVER_USER:
        return f"{OBSERVER_USER!r} is the test observer's account, not a device id"
    return None


def up(
    directory: Path, *, devices: Sequence[str] = DEFAULT_DEVICES, fleet_accounts: int = 0, kind: str = "embedded"
) -> BrokerStatus:
    if kind not in EMBEDDED_BROKERS:
        raise BenchInputError(f"--kind {kind!r}: use one of {', '.join(EMBEDDED_BROKERS)}")
    names = accounts(devices, fleet_accounts)
    with locked(directory):
        current = status(directory)
        if current.alive:
            raise BenchInputError(
                f"a broker already runs from {directory} ({current.record['urls']['plain']}); "
                "run 'hil broker down' first, or give another --state-dir"
            )
        (directory / RECORD).unlink(missing_ok=True)  # stale, if anything
        # A killed keeper's accounts and keys (0600 meanwhile): gone before new ones are made.
        shutil.rmtree(directory / "broker", ignore_errors=True)
        args = [sys.executable, "-m", "hil.bench.broker", "serve", "--dir", str(directory / "broker"), "--kind", kind]
        for name in names:
            args += ["--device", name]
        proc, hello = spawn_detached(args, directory / "logs", "broker")
        write_record(directory / RECORD, {"items": [item(proc, hello)]})
    return status(directory)


STOP_WAITS_FOR = (
    "SIGTERM, then waiting for it to close its clients' connections, save its persistence and "
    f"exit (up to {STOP_TIMEOUT_S:g} s, then SIGKILL)"
)
"""What `down` waits for, said before it waits (a broker with many clients takes a moment)."""


def down(directory: Path, announce: Callable[[BrokerStatus, str], None] | None = None) -> BrokerStatus:
    """Stop the bench broker of ``directory``; ``announce(status, what)`` is told what the
    stop waits for before it waits (the broker is alive then)."""
    with locked(directory):
        current = status(directory)
        record = read_record(directory / RECORD)
        if record is not None:
            if announce is not None and current.alive:
                announce(current, STOP_WAITS_FOR)
            for proc in processes(record):
                proc.stop()
            (directory / RECORD).unlink()
        # Its accounts, keys and CA were for this run only: nothing secret stays behind.
        shutil.rmtree(directory / "broker", ignore_errors=True)
    return current


# -- the keeper process ----------------------------------------------------------------------
def _private_write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, text)


def cap_log(path: Path, cap: int = LOG_CAP_BYTES) -> bool:
    """Rotate ``path`` to ``path.1`` once it is over ``cap`` bytes (copy, then truncate in
    place: the broker keeps its O_APPEND descriptor and writes on at the start). Lines
    written between the copy and the truncation are lost; a bench log can afford that."""
    try:
        if path.stat().st_size <= cap:
            return False
        shutil.copyfile(path, path.with_name(path.name + ".1"))
        os.truncate(path, 0)
    except FileNotFoundError:
        return False
    return True


def serve(workdir: Path, kind: str, devices: Sequence[str]) -> int:
    """Run the broker until SIGTERM/SIGINT. First stdout line: JSON (urls, files, pid)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    exit_with_owner()  # its SIGTERM waits, blocked, for the sigwait below like any other
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    try:
        log_path = workdir.parent / "logs" / f"{kind}-broker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if log_path.exists():  # a new broker, a new log; the last one's kept as .1
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
        broker = broker_class(kind)(workdir / "work", log_path=log_path, log_types=CONNECTION_LOG_TYPES)
        creds: dict[str, dict[str, str]] = {
            OBSERVER_USER: {"username": OBSERVER_USER, "password": broker.observer_password.reveal()}
        }
        for device in devices:
            account = broker.add_device(device)
            cert, key = workdir / "devices" / f"{device}.crt", workdir / "devices" / f"{device}.key"
            _private_write(cert, account.client_cert_pem)
            _private_write(key, account.client_key_pem.reveal())
            creds[device] = {
                "username": account.username,
                "password": account.password.reveal(),
                "client_cert_file": str(cert),
                "client_key_file": str(key),
            }
        _private_write(workdir / "credentials.json", json.dumps(creds, indent=2) + "\n")
        ca_file = workdir / "ca.pem"
        ca_file.write_text(broker.ca_pem)
        broker.start()
    except BrokerError as exc:
        print(f"hil broker up: {exc}", file=sys.stderr)
        return 1
    try:
        hello = {
            "pid": os.getpid(),
            "broker": broker.name,
            "features": sorted(broker.features),
            "urls": {name: broker.uri(name) for name in broker.listeners},
            "ca_file": str(ca_file),
            "credentials_file": str(workdir / "credentials.json"),
            "devices": list(devices),
            "observer_user": OBSERVER_USER,
            "log": str(broker.log_path),
        }
        print(json.dumps(hello), flush=True)
        while signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, LOG_CHECK_S) is None:
            cap_log(broker.log_path)
    finally:
        broker.stop()
    return 0


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.bench.broker")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the bench broker in the foreground (hil broker up starts this)")
    run.add_argument("--dir", required=True)
    run.add_argument("--kind", default="embedded", choices=EMBEDDED_BROKERS)
    run.add_argument("--device", action="append", default=[])
    args = parser.parse_args(argv)
    return serve(Path(args.dir), args.kind, args.device)


if __name__ == "__main__":
    sys.exit(_main())


__all__ = ["BrokerStatus", "accounts", "cap_log", "down", "serve", "status", "up"]
