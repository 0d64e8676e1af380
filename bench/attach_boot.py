"""Benchmark: attach, flash, reset and wait for ``App version:``, ours against pytest-embedded.

All on one virtual board's ``rfc2217://`` port (``hil sim board --realistic-timing``: the
UART paced at its baud rate, SPI NOR work at typical durations; ``--instant`` without),
with the same images (bootloader, partition table, otadata, baseline app) and the same
esptool. Each figure is the median of ``--repeat`` runs, from the start of the step
(the ``pytest`` subprocess for the pytest variants) to the moment ``expect`` returns:

* **pytest-embedded, esp,idf**: ``pytest --embedded-services esp,idf --port rfc2217://...
  --target esp32c3 --app-path DIR`` with a test whose ``dut.expect("App version:")``
  writes a timestamp. It flashes from ``DIR/build/flasher_args.json`` (written here, in
  ESP-IDF v5's layout, for our images) through esptool as a library, every file, every
  session; ``ESPBAUD`` is set to the flash baud rate (its default is 921600).
* **ours, full**: `Console` (open) + `Flasher` on the borrowed port, every file written
  (``skip_unchanged=False``: the same work as pytest-embedded) + ``Console.expect``,
  in this process.
* **pytest-embedded with our pyserial**: the two pytest-embedded variants again in a
  second venv whose ``serial`` is this environment's pyserial-labgrid (the labgrid
  extra brings it: pyserial 3.5 with RFC 2217 fixes, among them no reconfiguration of
  the port when only the read timeout changes). Stock pyserial's RFC 2217 client
  renegotiates every line setting (≥0.1 s, polled) whenever the read timeout changes;
  pytest-embedded set its port's timeout to 0.05 s and shares the port with esptool,
  which sets its own around every command and back. Run only when this environment has
  pyserial-labgrid; it tells the framework's cost from the pyserial's.
* **ours, new app**: the same, as the session flashes: a new app build on the board's
  previous firmware (another app in flash before each run), unchanged regions skipped.
* **ours, pytest + dut fixture**: ``pytest`` (the hil plugin, loaded by its pytest11 entry point) with a test asking for
  our ``dut`` fixture, on a rig of kind ``rfc2217`` naming the board's port, a new app
  build on the board as above. The fixture also starts the broker (mosquitto), writes the
  provisioning NVS and waits until the device is online over MQTT: shown as the time to
  the ``App version:`` line and the time until the test body runs.
* **attach + reset only** (no flashing): pytest-embedded's ``esp`` service (esptool
  connects, which syncs the ROM loader, then a hard reset) against ``Console`` +
  ``hard_reset`` + ``expect``.

Also shown: the start-up of an empty pytest run in each environment (and in the project's
venv without our plugin: its other plugins, labgrid's among them, cost most of it), which
the pytest variants pay once per session. pytest-embedded runs in a venv of its own (bench/peers.py;
installed from PyPI on first use). Run: ``.venv/bin/python bench/attach_boot.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import has_our_pyserial, idf_build_dir, peer_versions, peers_python

from hil.device import contract
from hil.firmware.catalog import cached_build
from hil.link.console import Console
from hil.link.flasher import Flasher
from hil.rig.virtual_board import VirtualBoardProcess

ROOT = Path(__file__).resolve().parent.parent
APP_OFFSET = 0x10000
OTHER_APP = "v1_1_0.bin"  # what "the previous build" on the board is
BOOT_TIMEOUT_S = 60

PEER_TEST = """
import json, os, time

def test_attach_and_boot(dut):
    setup_done = time.monotonic()
    dut.expect("App version:", timeout=60)
    returned = time.monotonic()
    with open(os.environ["BENCH_STAMP"], "w") as f:
        json.dump({"setup_done": setup_done, "expect_returned": returned}, f)
"""

OURS_TEST = """
import json, os, time
from hil.device import contract

def test_attach_and_boot(dut):
    body = time.monotonic()
    lines = [r for r in dut.console.records() if contract.APP_VERSION.search(r.text)]
    with open(os.environ["BENCH_STAMP"], "w") as f:
        json.dump({"app_version_line": lines[-1].monotonic, "test_body": body}, f)
"""

EMPTY_TEST = "def test_nothing():\n    pass\n"


@dataclass
class Runs:
    label: str
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def add(self, seconds: float, **extra: float) -> None:
        self.seconds.append(seconds)
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(value)

    def line(self) -> str:
        spread = (
            f"  (min {min(self.seconds):.2f}, max {max(self.seconds):.2f})"
            if len(self.seconds) > 1
            else ""
        )
        more = "".join(f"  {k} {statistics.median(v):.2f} s" for k, v in self.extra.items())
        return f"{self.label:<44} {self.median:7.2f} s{spread}{more}"


def run_pytest(
    python: Path, args: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path
) -> float:
    """Run pytest in a subprocess; returns its start (monotonic). Fails loudly with its output."""
    started = time.monotonic()
    result = subprocess.run(
        [str(python), "-m", "pytest", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    log.write_text(result.stdout)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise RuntimeError(
            f"pytest {' '.join(args)} exited {result.returncode} (log {log}):\n{tail}"
        )
    return started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median shown)")
    parser.add_argument(
        "--instant", action="store_true", help="board without realistic timing (as in CI)"
    )
    parser.add_argument(
        "--baud",
        type=int,
        default=115200,
        help="flash baud rate for both (ESPBAUD for pytest-embedded, flash_baud for ours); "
        "the dut-fixture variant always flashes at 115200",
    )
    parser.add_argument(
        "--workdir", help="keep the logs and files here (default: a temp dir, removed)"
    )
    args = parser.parse_args(argv)
    firmware = cached_build()
    files = [
        (0x0, firmware / "bootloader.bin"),
        (0x8000, firmware / "partition-table.bin"),
        (0xD000, firmware / "ota_data_initial.bin"),
        (APP_OFFSET, firmware / "baseline.bin"),
    ]
    python = peers_python()
    print(f"peers: {peer_versions(python)}")
    # This environment's `serial` may be pyserial-labgrid (the labgrid extra): then
    # pytest-embedded runs a second time with it, to tell the framework from the pyserial.
    python_ours = peers_python(our_pyserial=True) if has_our_pyserial() else None
    if python_ours is not None:
        print(f"peers with our pyserial: {peer_versions(python_ours)}")
    print(
        f"board: hil sim board{'' if args.instant else ' --realistic-timing'}; "
        f"flash at {args.baud} Bd; images {sum(p.stat().st_size for _, p in files)} bytes in {len(files)} files"
    )
    flash_baud = None if args.baud == 115200 else args.baud

    with tempfile.TemporaryDirectory(prefix="hil-bench-attach-") as tmpname:
        tmp = Path(args.workdir).resolve() if args.workdir else Path(tmpname)
        tmp.mkdir(parents=True, exist_ok=True)
        app_path = idf_build_dir(firmware, tmp / "idf-app")
        peer_dir, ours_dir, empty_dir = tmp / "peer", tmp / "ours", tmp / "empty"
        for directory, text in (
            (peer_dir, PEER_TEST),
            (ours_dir, OURS_TEST),
            (empty_dir, EMPTY_TEST),
        ):
            directory.mkdir()
            (directory / "test_attach.py").write_text(text)
        stamp = tmp / "stamp.json"
        logs = tmp / "logs"
        logs.mkdir()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HIL_"))}

        with VirtualBoardProcess(tmp / "board", realistic_timing=not args.instant) as board:
            assert board.endpoints is not None
            url = board.endpoints.serial
            setup = Flasher(flash_baud=flash_baud)
            setup.flash(url, files)  # the baseline on the board from here on

            def previous_build() -> None:
                """Untimed: another app where the new build goes, as before a CI run."""
                setup.flash(url, [(APP_OFFSET, firmware / OTHER_APP)], after="no-reset")

            peer_env = {**base_env, "ESPBAUD": str(args.baud), "BENCH_STAMP": str(stamp)}
            peer_common = [
                "-p",
                "no:cacheprovider",
                "-q",
                "-s",
                "--port",
                url,
                "--target",
                "esp32c3",
            ]

            def peer(services: str, runs: Runs, n: int, interpreter: Path = python) -> None:
                extra = (
                    ["--app-path", str(app_path), "--skip-check-coredump", "y"]
                    if "idf" in services
                    else []
                )
                started = run_pytest(
                    interpreter,
                    [*peer_common, "--embedded-services", services, *extra,
                     "--root-logdir", str(tmp / "pe-logs"), "--cache-dir", str(tmp / "pe-cache"), "test_attach.py"],
                    cwd=peer_dir, env=peer_env, log=logs / f"peer-{services}-{interpreter.parent.parent.name}-{n}.log",
                )  # fmt: skip
                marks = json.loads(stamp.read_text())
                runs.add(
                    marks["expect_returned"] - started,
                    **{"(setup)": marks["setup_done"] - started},
                )

            def ours_inprocess(runs: Runs, n: int, *, skip_unchanged: bool) -> None:
                started = time.monotonic()
                with Console(url, logs / f"ours-{n}.log") as console:
                    with console.borrow() as port:
                        flasher = Flasher(flash_baud=flash_baud)
                        flasher.flash(port, files, skip_unchanged=skip_unchanged)
                    console.expect(contract.APP_VERSION, timeout=BOOT_TIMEOUT_S)
                    runs.add(time.monotonic() - started)

            rigs = tmp / "rigs"
            rigs.mkdir()
            (rigs / "bench.toml").write_text(
                'name = "bench-attach"\nkind = "rfc2217"\nchip = "esp32c3"\n'
                f'port = "{url}"\nreset = "classic"\n'
                'network = { ssid = "hil-lab", broker_host = "127.0.0.1" }\ncapabilities = []\ntags = ["bench"]\n'
            )
            ours_env = {
                **base_env,
                "PYTHONPATH": str(ROOT),
                "HIL_WIFI_PASSWORD": "hil-lab-password",  # the virtual AP's
                "HIL_LOCK_DIR": str(tmp / "locks"),
                "BENCH_STAMP": str(stamp),
            }

            def ours_fixture(runs: Runs, n: int) -> None:
                started = run_pytest(
                    Path(sys.executable),
                    ["-p", "no:cacheprovider", "-q", "--rigs-dir", str(rigs),
                     "--rig-tag", "bench", "--hil-log-dir", str(tmp / "hil-logs"), "test_attach.py"],
                    cwd=ours_dir, env=ours_env, log=logs / f"ours-dut-{n}.log",
                )  # fmt: skip
                marks = json.loads(stamp.read_text())
                runs.add(
                    marks["app_version_line"] - started,
                    **{"(dut ready)": marks["test_body"] - started},
                )

            def ours_reset(runs: Runs, n: int) -> None:
                started = time.monotonic()
                with Console(url, logs / f"ours-reset-{n}.log") as console:
                    console.hard_reset()
                    console.expect(contract.APP_VERSION, timeout=BOOT_TIMEOUT_S)
                    runs.add(time.monotonic() - started)

            def empty(runs: Runs, python_: Path, plugin: list[str], env: dict[str, str]) -> None:
                started = time.monotonic()
                run_pytest(python_, [*plugin, "-p", "no:cacheprovider", "-q", "test_attach.py"],
                           cwd=empty_dir, env=env, log=logs / "empty.log")  # fmt: skip
                runs.add(time.monotonic() - started)

            pe_full = Runs("pytest-embedded esp,idf: flash+reset+expect")
            ours_full = Runs("ours in process, full write")
            pe_full_ours = Runs("  the same with our pyserial")
            pe_reset_ours = Runs("  the same with our pyserial")
            ours_new = Runs("ours in process, new app build")
            ours_dut = Runs("ours pytest + dut fixture, new app build")
            pe_reset = Runs("pytest-embedded esp: attach+reset+expect")
            ours_rst = Runs("ours Console: attach+reset+expect")
            pe_empty = Runs("empty pytest run, pytest-embedded venv")
            ours_empty = Runs("empty pytest run, ours (the hil plugin, loaded by its entry point)")
            venv_empty = Runs("empty pytest run, project venv, no plugin")

            def new_app(n: int) -> None:
                previous_build()
                ours_inprocess(ours_new, n, skip_unchanged=True)

            def new_app_dut(n: int) -> None:
                previous_build()
                ours_fixture(ours_dut, n)

            ours_python = Path(sys.executable)
            jobs: list[tuple[str, Callable[[int], None]]] = [
                ("pytest-embedded esp,idf", lambda n: peer("esp,idf", pe_full, n)),
                ("ours full", lambda n: ours_inprocess(ours_full, n, skip_unchanged=False)),
                ("ours new app", new_app),
                ("ours dut fixture", new_app_dut),
                ("pytest-embedded esp", lambda n: peer("esp", pe_reset, n)),
                ("ours reset", lambda n: ours_reset(ours_rst, n)),
                ("empty peers", lambda n: empty(pe_empty, python, [], base_env)),
                ("empty venv", lambda n: empty(venv_empty, ours_python, [], base_env)),
                (
                    "empty ours",
                    lambda n: empty(ours_empty, ours_python, [], ours_env),
                ),
            ]
            if python_ours is not None:
                jobs[1:1] = [
                    (
                        "pytest-embedded esp,idf, our pyserial",
                        lambda n: peer("esp,idf", pe_full_ours, n, python_ours),
                    )
                ]
                jobs.append(
                    (
                        "pytest-embedded esp, our pyserial",
                        lambda n: peer("esp", pe_reset_ours, n, python_ours),
                    )
                )
            failures: dict[str, str] = {}
            # Interleaved (variant A, B, C ... then again) so a drift of the host hits all alike.
            for n in range(args.repeat):
                for name, job in jobs:
                    if name in failures:
                        continue
                    try:
                        job(n)
                    except Exception as exc:  # say exactly why, never fake a number
                        failures[name] = f"{type(exc).__name__}: {exc}"
                    print(f"  run {n + 1}/{args.repeat}: {name} done", flush=True)

    print()
    table = [
        pe_full,
        pe_full_ours,
        ours_full,
        ours_new,
        ours_dut,
        pe_reset,
        pe_reset_ours,
        ours_rst,
        pe_empty,
        venv_empty,
        ours_empty,
    ]
    for runs in table:
        if runs.seconds:
            print(runs.line())
    for name, why in failures.items():
        print(f"FAILED {name}: {textwrap.indent(why, '    ').strip()}")
    print()
    print("ratios (medians; < 1: ours takes less time):")

    def ratio(label: str, a: Runs, b: Runs) -> None:
        if a.seconds and b.seconds:
            print(f"  {label:<52} = {a.median / b.median:.2f}")

    ratio("ours full write / pytest-embedded (same work)", ours_full, pe_full)
    ratio("ours full write / pytest-embedded with our pyserial", ours_full, pe_full_ours)
    ratio("ours new app build / pytest-embedded", ours_new, pe_full)
    ratio("ours pytest+dut to App version / pytest-embedded", ours_dut, pe_full)
    ratio("ours attach+reset / pytest-embedded esp attach+reset", ours_rst, pe_reset)
    ratio("ours attach+reset / the same with our pyserial", ours_rst, pe_reset_ours)
    ratio("empty pytest run: ours / pytest-embedded venv", ours_empty, pe_empty)
    ratio("empty pytest run: ours / project venv without it", ours_empty, venv_empty)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
