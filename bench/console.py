"""Benchmark: the serial console, ours (`hil.link.console.Console`) against pytest-embedded's
``Dut.expect`` (pexpect on its per-DUT log file), on the same byte source.

The source is not a board: neither the virtual board's control endpoint nor its firmware
model has a way to make the app print as fast as it can (its UART output is the boot log
and a few lines per second), so the source is a separate process (this script with ``--source``)
writing as fast as the reader takes the bytes, into a **pty** in raw mode (both consumers
open its ``/dev/pts/N`` as a serial device) or over **RFC 2217**. ESP-IDF-style
log lines (``I (1234) bench: ...``, 80 bytes with CRLF). Both consumers run in processes
of their own, the source in a third one.

Not a ``socket://`` source: pytest-embedded's reader takes ``read_all()`` every 50 ms,
and pyserial's ``socket://`` port reports ``in_waiting`` as 0 or 1, so it reads one byte
per 50 ms there (20 bytes/s; tried, measured, unusable); on a tty ``in_waiting`` is real.

Each measurement is made twice: on a pty, and on an RFC 2217 server on 127.0.0.1 (the
source process serves ``rfc2217://127.0.0.1:PORT`` itself with pyserial's
``PortManager``; how lab hosts serve boards, and how the virtual rig's ports are
reached). (ser2net in front of the pty does not do: it cannot set a pty's DTR, so it
never acknowledges the client's modem-line requests.) Measured in one run:

* **ingest**: ``--megabytes`` (ours) or ``--peer-megabytes`` (pytest-embedded, slower)
  of lines then ``BENCH-END``; bytes per second from the first byte written to the moment
  ``expect("BENCH-END")`` returns. pytest-embedded with ``expect_exact`` (pexpect's
  plain-string search, linear) and, on ``--regex-megabytes`` for both sides, with
  ``expect`` (a regex, what ``dut.expect("...")`` does: pexpect re-searches its whole
  buffer at every read, so it gets slower as the output grows).
* **latency**: ``--samples`` lines ``LAT <n> <send time>`` on a quiet line, spaced
  about ``--interval`` s apart; each consumer waits in ``expect`` for the next one and
  records when it returned. Latency = return - send (one monotonic clock for all
  processes: Linux CLOCK_MONOTONIC). Also the CPU time the consumer's process used while
  waiting, per second of waiting.

pytest-embedded runs as its users run it: ``pytest --embedded-services serial --port
/dev/pts/N`` in a venv of its own (bench/peers.py), the timestamps taken in the test.
Run: ``.venv/bin/python bench/console.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path

from serial import rfc2217

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import peer_versions, peers_python

from hil.link.console import Console

LINE_BYTES = 80
END = b"BENCH-END\r\n"

PEER_TEST = r"""
import json, os, re, time

def _ready():
    open(os.environ["BENCH_READY"], "w").close()

def _stamp(data):
    with open(os.environ["BENCH_STAMP"], "w") as f:
        json.dump(data, f)

def test_ingest(dut):
    _ready()
    if os.environ["BENCH_EXPECT"] == "exact":
        dut.expect_exact("BENCH-END", timeout=1800)
    else:
        dut.expect("BENCH-END", timeout=1800)
    _stamp({"returned": time.monotonic()})

def test_latency(dut):
    pattern = re.compile(rb"LAT (\d+) (\d+)\r?\n")
    samples, cpu, waited = [], 0.0, 0.0
    _ready()
    for _ in range(int(os.environ["BENCH_SAMPLES"])):
        cpu0, wall0 = time.process_time(), time.monotonic()
        m = dut.expect(pattern, timeout=30)
        now = time.monotonic_ns()
        cpu += time.process_time() - cpu0
        waited += time.monotonic() - wall0
        samples.append((now - int(m.group(2))) / 1e9)
    _stamp({"latency": samples, "cpu": cpu, "waited": waited})
"""


# -- the source (its own process) -------------------------------------------------------
def flood_bytes(megabytes: float) -> bytes:
    lines = []
    count = max(int(megabytes * 1e6) // LINE_BYTES, 1)
    for i in range(count):
        head = f"I ({i * 3 % 10_000_000}) bench: reading seq={i:09d} t=21.50 h=40.00 p=1001.20 "
        lines.append(head.ljust(LINE_BYTES - 2, "x") + "\r\n")
    return "".join(lines).encode() + END


class _NoLines:
    """What pyserial's RFC 2217 `PortManager` drives: settings are kept, modem lines lead
    nowhere, what the client sends is dropped (a UART whose far end only talks)."""

    baudrate, bytesize, parity, stopbits = 115200, 8, "N", 1
    xonxoff = rtscts = dtr = rts = break_condition = False
    cts = dsr = ri = cd = False

    def reset_input_buffer(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass


class _Rfc2217Link:
    """One client on 127.0.0.1 spoken to in RFC 2217 (pyserial's server side)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.conn: socket.socket | None = None
        self.accepted = threading.Event()
        self.lock = threading.Lock()
        self.manager: rfc2217.PortManager | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def write(self, data: bytes) -> None:  # the PortManager's replies, and the data
        assert self.conn is not None
        with self.lock:
            self.conn.sendall(data)

    def _serve(self) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.manager = rfc2217.PortManager(_NoLines(), self)
        self.accepted.set()
        while True:
            try:
                data = self.conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            b"".join(self.manager.filter(data))  # answers negotiations through write()

    def send(self, data: bytes) -> None:
        self.accepted.wait()
        assert self.manager is not None
        self.write(b"".join(self.manager.escape(data)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()


def serve(spec: dict[str, object]) -> None:
    """Open the source (a raw pty, or an RFC 2217 server on 127.0.0.1), print the URL to
    open, wait for ``go`` on stdin, write, wait for ``stop`` on stdin (the reader is done:
    never cut it off mid-read), report as JSON."""
    data = flood_bytes(float(spec["megabytes"])) if spec["mode"] == "flood" else b""  # type: ignore[arg-type]
    link: _Rfc2217Link | None = None
    if spec.get("transport") == "rfc2217":
        link = _Rfc2217Link()
        print(link.url, flush=True)

        def send(chunk: bytes) -> int:
            assert link is not None
            link.send(chunk)
            return len(chunk)
    else:
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass as a UART bridge passes them
        print(os.ttyname(slave), flush=True)

        def send(chunk: bytes) -> int:
            return os.write(master, chunk)  # blocks while the reader lags

    if sys.stdin.readline().strip() != "go":
        return
    report: dict[str, object] = {}
    if spec["mode"] == "flood":
        view = memoryview(data)
        first = time.monotonic()
        while view:
            written = send(bytes(view[: 1 << 16]))
            view = view[written:]
        report = {"first": first, "sent_at": time.monotonic(), "bytes": len(data)}
    else:
        rng = random.Random(7)
        interval = float(spec["interval"])  # type: ignore[arg-type]
        for i in range(int(spec["samples"])):  # type: ignore[call-overload]
            time.sleep(interval * (0.8 + 0.4 * rng.random()))
            send(f"LAT {i} {time.monotonic_ns()}\r\n".encode())
        report = {"samples": int(spec["samples"])}  # type: ignore[call-overload]
    while sys.stdin.readline().strip() != "stop":
        pass
    if link is not None:
        link.close()
    else:
        os.close(master)
        os.close(slave)
    print(json.dumps(report), flush=True)


class Source:
    """``bench/console.py --source SPEC`` as a child process; ``url`` is its pty."""

    def __init__(self, **spec: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--source", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith(("/dev/", "rfc2217://")):
            raise RuntimeError(f"the source did not start: {self.url!r}")

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._say("go")

    def report(self) -> dict[str, float]:
        """Tell the source the reader is done; its report."""
        self._say("stop")
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=60)
        return json.loads(line)  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- consumers ---------------------------------------------------------------------------
def ours_ingest(megabytes: float, transport: str, tmp: Path) -> float:
    source = Source(mode="flood", megabytes=megabytes, transport=transport)
    try:
        with Console(source.url, tmp / "ours.log") as console:
            source.go()
            console.expect(r"BENCH-END", timeout=1800)
            returned = time.monotonic()
        report = source.report()
    finally:
        source.kill()
    return report["bytes"] / (returned - report["first"])


def ours_latency(
    samples: int, interval: float, transport: str, tmp: Path
) -> tuple[list[float], float]:
    source = Source(mode="latency", samples=samples, interval=interval, transport=transport)
    pattern = re.compile(r"LAT (\d+) (\d+)")
    latencies: list[float] = []
    cpu = waited = 0.0
    try:
        with Console(source.url, tmp / "ours-latency.log") as console:
            source.go()
            for _ in range(samples):
                cpu0, wall0 = time.process_time(), time.monotonic()
                match = console.expect(pattern, timeout=30)
                now = time.monotonic_ns()
                cpu += time.process_time() - cpu0
                waited += time.monotonic() - wall0
                latencies.append((now - int(match.group(2))) / 1e9)
        source.report()
    finally:
        source.kill()
    return latencies, cpu / waited


class Peer:
    """pytest-embedded's ``serial`` service in a pytest subprocess (its own venv)."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.dir = workdir / "peer"
        self.dir.mkdir()
        (self.dir / "test_console.py").write_text(PEER_TEST)
        self.stamp = workdir / "stamp.json"
        self.runs = 0

    def run(self, test: str, source: Source, **env: str) -> dict[str, object]:
        """Run one test against the source; ``go`` once the test body runs (the DUT's
        reader has been running since its fixture was set up)."""
        self.runs += 1
        log = self.dir / f"pytest-{self.runs}.log"
        ready = self.dir / "ready"
        ready.unlink(missing_ok=True)
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(self.python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
                 "--embedded-services", "serial", "--port", source.url,
                 "--root-logdir", str(self.dir / "logs"), "--cache-dir", str(self.dir / "cache"),
                 f"test_console.py::{test}"],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "BENCH_STAMP": str(self.stamp), "BENCH_READY": str(ready), **env},
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 120
                while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                source.go()
                returncode = proc.wait(timeout=3600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"pytest-embedded run exited {returncode} (log {log}):\n{tail}")
        return json.loads(self.stamp.read_text())  # type: ignore[no-any-return]

    def ingest(self, megabytes: float, how: str, transport: str) -> float:
        source = Source(mode="flood", megabytes=megabytes, transport=transport)
        try:
            marks = self.run("test_ingest", source, BENCH_EXPECT=how)
            report = source.report()
        finally:
            source.kill()
        return report["bytes"] / (float(marks["returned"]) - report["first"])  # type: ignore[arg-type]

    def latency(self, samples: int, interval: float, transport: str) -> tuple[list[float], float]:
        source = Source(mode="latency", samples=samples, interval=interval, transport=transport)
        try:
            marks = self.run("test_latency", source, BENCH_SAMPLES=str(samples))
            source.report()
        finally:
            source.kill()
        lat = [float(x) for x in marks["latency"]]  # type: ignore[attr-defined]
        return lat, float(marks["cpu"]) / float(marks["waited"])  # type: ignore[arg-type]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


TRANSPORTS = ("pty", "rfc2217")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--megabytes", type=float, default=4.0, help="ingest volume for ours (MB)")
    parser.add_argument(
        "--peer-megabytes",
        type=float,
        default=1.0,
        help="ingest volume for pytest-embedded's expect_exact (MB)",
    )
    parser.add_argument(
        "--regex-megabytes",
        type=float,
        default=0.2,
        help="ingest volume for the regex expect, both sides (MB)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="ingest runs per consumer (median shown)"
    )
    parser.add_argument("--samples", type=int, default=50, help="latency samples per consumer")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between latency lines")
    parser.add_argument("--transport", choices=TRANSPORTS, action="append", help="default: both")
    args = parser.parse_args(argv)
    if args.source:
        serve(json.loads(args.source))
        return 0

    python = peers_python()
    print(f"peers: {peer_versions(python)}")
    print(
        f"source: a process writing {LINE_BYTES}-byte log lines as fast as they are read (no "
        "board: the firmware model has no way to print at full speed), into a raw pty and "
        "from an RFC 2217 server on 127.0.0.1 (pyserial's PortManager; lab hosts and the "
        "virtual rig serve ports as RFC 2217)"
    )
    mb = 1e6
    lines: list[str] = []
    ratios: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hil-bench-console-") as tmpname:
        tmp = Path(tmpname)
        peer = Peer(python, tmp)
        for transport in args.transport or TRANSPORTS:
            ours_rates: list[float] = []
            exact_rates: list[float] = []
            for n in range(args.repeat):
                ours_rates.append(ours_ingest(args.megabytes, transport, tmp))
                exact_rates.append(peer.ingest(args.peer_megabytes, "exact", transport))
                print(f"  {transport}: ingest run {n + 1}/{args.repeat} done", flush=True)
            ours_small = ours_ingest(args.regex_megabytes, transport, tmp)
            regex_rate = peer.ingest(args.regex_megabytes, "regex", transport)
            ours_lat, ours_cpu = ours_latency(args.samples, args.interval, transport, tmp)
            peer_lat, peer_cpu = peer.latency(args.samples, args.interval, transport)
            print(f"  {transport}: done", flush=True)
            ours_rate, exact_rate = statistics.median(ours_rates), statistics.median(exact_rates)
            lines += [
                f"{transport}: ingest (median of {args.repeat})",
                f"  ours Console.expect, {args.megabytes:g} MB                 {ours_rate / mb:8.2f} MB/s",
                f"  pytest-embedded expect_exact, {args.peer_megabytes:g} MB        {exact_rate / mb:8.2f} MB/s",
                f"{transport}: ingest, regex pattern, {args.regex_megabytes:g} MB (one run each)",
                f"  ours Console.expect                        {ours_small / mb:8.2f} MB/s",
                f"  pytest-embedded expect                     {regex_rate / mb:8.2f} MB/s",
                f"{transport}: latency, line sent -> expect returned ({args.samples} lines, ~{args.interval:g} s apart)",
            ]
            for label, lat, cpu in (
                ("ours Console.expect", ours_lat, ours_cpu),
                ("pytest-embedded expect", peer_lat, peer_cpu),
            ):
                lines.append(
                    f"  {label:<24} p50 {pct(lat, 0.5) * 1000:7.2f} ms  p90 {pct(lat, 0.9) * 1000:7.2f} ms  "
                    f"max {max(lat) * 1000:7.2f} ms  CPU while waiting {cpu * 100:5.1f} % of a core"
                )
            ratios += [
                f"  {transport}: ingest, ours / pytest-embedded expect_exact   = {ours_rate / exact_rate:.2f}",
                f"  {transport}: ingest, ours / pytest-embedded expect (regex) = {ours_small / regex_rate:.2f}",
                f"  {transport}: latency p50, ours / pytest-embedded           = "
                f"{pct(ours_lat, 0.5) / pct(peer_lat, 0.5):.3f}",
                f"  {transport}: latency p90, ours / pytest-embedded           = "
                f"{pct(ours_lat, 0.9) / pct(peer_lat, 0.9):.3f}",
            ]
            if peer_cpu > 0:
                ratios.append(
                    f"  {transport}: CPU while waiting, ours / pytest-embedded     = {ours_cpu / peer_cpu:.3f}"
                )
    print()
    print("\n".join(lines))
    print(
        "  (CPU: the consumer's process; pytest-embedded's listener and queue-manager processes not counted)"
    )
    print()
    print("ratios (ingest > 1: ours takes more bytes/s; latency and CPU < 1: ours less):")
    print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
