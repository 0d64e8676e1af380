"""Benchmark: what flashing costs on a virtual board, ours against the esptool command.

One run measures, on one board per transport (medians of ``--repeat`` runs):

* **full**: the baseline set (bootloader, partition table, otadata, app), every file
  written (``skip_unchanged=False``), with our `Flasher`;
* **unchanged**: the same set again, every region found unchanged by MD5 and skipped;
* the same two with pyserial's stock RFC 2217 client (``fast_rfc2217=False``), to show
  what its per-command renegotiation of the read timeout costs;
* **esptool CLI**: ``esptool --port URL write-flash`` with the same files, as a subprocess
  (its interpreter start-up is measured on its own and shown);
* full and unchanged on a pty board (no RFC 2217, no reset): the cost without a network
  serial client.

Then prints the ratios. Run: ``/work/venv/bin/python bench/flash.py [--repeat N]``.

The virtual board writes flash as fast as the host can copy bytes (no UART pacing), so
the data itself costs next to nothing here and a job's time is its fixed part: opening
the port, resetting, syncing, uploading the stub, the final reset. On a real UART at
460800 Bd the compressed data alone costs what the "wire model" line shows, on top.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.firmware import cached_build
from hil.flashing import Flasher, FlashReport
from hil.virtual_board import VirtualBoardProcess

Files = list[tuple[int, Path]]


def baseline(firmware: Path) -> Files:
    return [
        (0x0, firmware / "bootloader.bin"),
        (0x8000, firmware / "partition-table.bin"),
        (0xD000, firmware / "ota_data_initial.bin"),
        (0x10000, firmware / "baseline.bin"),
    ]


class Timing:
    def __init__(self, label: str) -> None:
        self.label = label
        self.runs: list[float] = []
        self.reports: list[FlashReport] = []

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def line(self) -> str:
        spread = (
            f"min {min(self.runs):6.2f}  max {max(self.runs):6.2f}" if len(self.runs) > 1 else ""
        )
        phases = ""
        if self.reports:
            r = self.reports[len(self.reports) // 2]
            files = sum(f.seconds for f in r.files)
            rest = r.seconds - r.connect_seconds - files - r.verify_seconds
            phases = (
                f"  [connect {r.connect_seconds:.2f}  files {files:.3f}  verify "
                f"{r.verify_seconds:.3f}  reset+close {rest:.2f}; written "
                f"{len(r.written)}/{len(r.files)}]"
            )
        return f"{self.label:<34} {self.median:7.2f} s  {spread}{phases}"


def measure(label: str, repeat: int, job: Callable[[], FlashReport | None]) -> Timing:
    timing = Timing(label)
    for _ in range(repeat):
        started = time.monotonic()
        report = job()
        timing.runs.append(time.monotonic() - started)
        if report is not None:
            timing.reports.append(report)
    return timing


def esptool_cli(port: str, files: Files) -> None:
    args: list[str] = []
    for offset, path in files:
        args += [f"0x{offset:x}", str(path)]
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "--port", port, "write-flash", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or result.stdout.count("Hash of data verified.") != len(files):
        raise SystemExit(f"esptool write-flash failed:\n{result.stdout}\n{result.stderr}")


def cli_startup() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "esptool", "version"], capture_output=True, check=True)
    return time.monotonic() - started


def wire_seconds(files: Files, baud: int) -> float:
    """Model, not measured: the compressed data at `baud` with 10 bits per byte."""
    sent = sum(len(zlib.compress(path.read_bytes(), 9)) for _, path in files)
    return sent * 10 / baud


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per fast measurement")
    parser.add_argument(
        "--slow-repeat", type=int, default=1, help="runs of the esptool CLI and stock-port ones"
    )
    args = parser.parse_args(argv)
    files = baseline(cached_build())
    total = sum(path.stat().st_size for _, path in files)
    print(f"baseline set: {len(files)} files, {total} bytes")

    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        with VirtualBoardProcess(Path(tmp) / "rfc2217") as board:
            assert board.endpoints is not None
            url = board.endpoints.serial
            fast, stock = Flasher(), Flasher(fast_rfc2217=False)
            fast.flash(url, files)  # warm up: the baseline is on the board from here on
            full = measure(
                "ours, full (RFC 2217)",
                args.repeat,
                lambda: fast.flash(url, files, skip_unchanged=False),
            )
            unchanged = measure(
                "ours, unchanged (RFC 2217)", args.repeat, lambda: fast.flash(url, files)
            )
            stock_full = measure(
                "ours, stock pyserial, full",
                args.slow_repeat,
                lambda: stock.flash(url, files, skip_unchanged=False),
            )
            stock_unchanged = measure(
                "ours, stock pyserial, unchanged",
                args.slow_repeat,
                lambda: stock.flash(url, files),
            )
            cli = measure(
                "esptool write-flash CLI", args.slow_repeat, lambda: esptool_cli(url, files)
            )
        startup = cli_startup()

        with VirtualBoardProcess(Path(tmp) / "pty", pty=True) as board:
            assert board.endpoints is not None and board.control is not None
            board.control.request("download")
            pty = board.endpoints.serial
            direct = Flasher(before="no-reset")
            direct.flash(pty, files, after="no-reset")
            pty_full = measure(
                "ours, full (pty, no reset)",
                args.repeat,
                lambda: direct.flash(pty, files, skip_unchanged=False, after="no-reset"),
            )
            pty_unchanged = measure(
                "ours, unchanged (pty, no reset)",
                args.repeat,
                lambda: direct.flash(pty, files, after="no-reset"),
            )

    print()
    for timing in (full, unchanged, stock_full, stock_unchanged, cli, pty_full, pty_unchanged):
        print(timing.line())
    print(f"{'(esptool CLI interpreter start-up)':<34} {startup:7.2f} s")
    print()
    print("ratios (medians):")
    print(f"  unchanged/full, ours over RFC 2217        = {unchanged.median / full.median:.2f}")
    print(
        f"  unchanged/full, ours on a pty             = {pty_unchanged.median / pty_full.median:.2f}"
    )
    files_full = sum(f.seconds for f in full.reports[len(full.reports) // 2].files)
    files_unchanged = sum(f.seconds for f in unchanged.reports[len(unchanged.reports) // 2].files)
    print(f"  unchanged/full, per-file work only        = {files_unchanged / files_full:.2f}")
    print(f"  ours full / esptool CLI full              = {full.median / cli.median:.2f}")
    print(f"  ours unchanged / esptool CLI full         = {unchanged.median / cli.median:.3f}")
    print(f"  fast RFC 2217 / stock pyserial, full      = {full.median / stock_full.median:.2f}")
    print(
        f"  fast RFC 2217 / stock pyserial, unchanged = {unchanged.median / stock_unchanged.median:.2f}"
    )
    print()
    print(
        f"wire model (not measured): the compressed set takes {wire_seconds(files, 460800):.2f} s "
        f"at 460800 Bd, {wire_seconds(files, 115200):.2f} s at 115200 Bd on a real UART"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
