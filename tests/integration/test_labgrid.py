"""A labgrid lab on 127.0.0.1: ``labgrid-coordinator``, two virtual boards each behind
ser2net (as a lab host serves a board's UART), a REST power switch for their supplies, and
a ``labgrid-exporter`` exporting each board's port (``NetworkSerialPort``) and outlet
(``NetworkPowerPort``, model ``rest``) as a group. Two places match the groups and carry
tags, made with ``labgrid-client`` as a lab admin makes them.

Through it: a labgrid rig reserves by tags, acquires, gets the port and power from the
place and releases; SIGTERM releases; a place left by a SIGKILLed session is taken back;
and the HIL smoke suite runs with ``-n 2``, each worker on its own place."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.processes import die_with_parent
from hil.rig.rigfile import load_rigs
from hil.rig.ser2net import Ser2net
from hil.rig.virtual_board import VirtualBoardProcess
from hil.rig.virtual_pdu import VirtualPdu
from hil.services.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
READY_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.labgrid,
    pytest.mark.skipif(
        importlib.util.find_spec("labgrid") is None,
        reason="labgrid is not installed: pip install -e '.[labgrid]' (the dev extra includes it)",
    ),
    pytest.mark.skipif(
        shutil.which("ser2net") is None, reason="ser2net is not installed (setup.sh installs it)"
    ),
]


def _tool(name: str) -> str:
    """labgrid's console scripts, next to this interpreter (the venv's bin)."""
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


class Daemon:
    """A labgrid daemon in its own process group; its output goes to a log and ``ready``
    is set when a line contains ``marker``."""

    def __init__(
        self, args: list[str], log: Path, marker: str, *, env: dict[str, str], cwd: Path
    ) -> None:
        self.log = log
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, args=(marker,), daemon=True)
        self._reader.start()

    def _read(self, marker: str) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                if marker in line:
                    self.ready.set()

    def wait_ready(self, what: str) -> None:
        if not self.ready.wait(READY_S):
            raise AssertionError(
                f"{what} not ready in {READY_S:.0f} s (exit {self.proc.poll()}): {self.log.read_text()[-2000:]}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)


@dataclass
class Lab:
    coordinator: str
    env: dict[str, str]
    ports: dict[str, str]  # place -> the ser2net URL of its board
    boards: dict[str, VirtualBoardProcess]  # place -> board
    root: Path

    def client(self, *args: str) -> str:
        result = subprocess.run(
            [_tool("labgrid-client"), "-x", self.coordinator, *args],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"labgrid-client {' '.join(args)}: {result.stdout}{result.stderr}"
        )
        return result.stdout

    def acquired_by(self) -> dict[str, str | None]:
        """Each place and the owner name of whoever holds it (None: free)."""
        from hil.rig.labgrid import GrpcCoordinator

        coordinator = GrpcCoordinator(self.coordinator, "test/observer,main,pid0")
        try:
            return {p.name: p.acquired for p in coordinator.places()}
        finally:
            coordinator.close()

    def rig_file(self, directory: Path, tags: str, capabilities: str = "[]") -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "lab.toml").write_text(
            'name = "lab-c3"\nkind = "labgrid"\nchip = "esp32c3"\nreset = "classic"\ntags = ["lab"]\n'
            f"capabilities = {capabilities}\n"
            'network = { ssid = "hil-lab", broker_host = "127.0.0.1" }\n'
            f'[labgrid]\ntags = {{ {tags} }}\ncoordinator = "{self.coordinator}"\n'
        )
        return directory


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("labgrid")
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "LG_COORDINATOR": address, "PYTHONUNBUFFERED": "1"}
    started: list[Daemon] = []
    boards: dict[str, VirtualBoardProcess] = {}
    with contextlib.ExitStack() as stack:
        for index in range(2):
            board = VirtualBoardProcess(root / f"board{index}")
            stack.callback(board.stop)
            board.start()
            boards[f"board{index}"] = board
        lab_host = Ser2net(
            root / "ser2net",
            {name: b.endpoints.serial for name, b in boards.items() if b.endpoints},
        )
        stack.enter_context(lab_host)
        pdu = stack.enter_context(
            VirtualPdu({i: b.control for i, b in enumerate(boards.values()) if b.control})
        )
        stack.callback(lambda: [d.stop() for d in reversed(started)])
        coordinator = Daemon(
            [_tool("labgrid-coordinator"), "-l", address],
            root / "coordinator.log",
            "listening on",
            env=env,
            cwd=root,
        )
        started.append(coordinator)
        coordinator.wait_ready("labgrid-coordinator")
        config = root / "exporter.yaml"
        config.write_text(
            "".join(
                textwrap.dedent(
                    f"""\
                    {name}:
                      NetworkSerialPort:
                        host: 127.0.0.1
                        port: {served.port}
                        speed: 115200
                        protocol: rfc2217
                      NetworkPowerPort:
                        model: rest
                        host: '{pdu.url_template}'
                        index: {index}
                    """
                )
                for index, (name, served) in enumerate(zip(boards, lab_host.ports, strict=True))
            )
        )
        exporter = Daemon(
            [_tool("labgrid-exporter"), "-c", address, "-n", "lab-host", "--hostname", "127.0.0.1", str(config)],
            root / "exporter.log", "add resource board1/NetworkPowerPort", env=env, cwd=root,
        )  # fmt: skip
        started.append(exporter)
        exporter.wait_ready("labgrid-exporter")
        the_lab = Lab(address, env, {}, {}, root)
        # The exporter has sent its resources; wait until the coordinator lists them all.
        deadline = time.monotonic() + READY_S
        while (listed := the_lab.client("resources")).count("lab-host/board") < 4:
            assert time.monotonic() < deadline, f"the coordinator lists only: {listed}"
            time.sleep(0.2)  # no event to wait on across processes; labgrid-client polls too
        for index, name in enumerate(boards):
            place = f"c3-{index}"
            the_lab.client("-p", place, "create")
            the_lab.client("-p", place, "add-match", f"lab-host/{name}/*")
            the_lab.client("-p", place, "set-tags", "board=esp32c3", "lab=hil")
            the_lab.ports[place] = lab_host.url(name)
            the_lab.boards[place] = boards[name]
        yield the_lab


def test_a_labgrid_rig_reserves_acquires_powers_and_releases_a_place(
    lab: Lab, tmp_path: Path
) -> None:
    from hil.rig.labgrid import reserve_place

    (rig,) = load_rigs(lab.rig_file(tmp_path / "rigs", 'board = "esp32c3", lab = "hil"'))
    held = reserve_place(rig, timeout=10)
    try:
        assert held.rig.port == lab.ports[held.place]
        assert "power_control" in held.rig.capabilities and held.power is not None
        assert lab.acquired_by()[held.place] == held.owner and f"pid{os.getpid()}" in held.owner
        assert held.place in lab.client("who")
        board = lab.boards[held.place]
        assert board.control is not None
        held.power.off()  # through labgrid's NetworkPowerDriver, the exporter's outlet, the switch
        assert board.control.state()["powered"] is False
        held.power.on()
        assert board.control.state()["powered"] is True
    finally:
        held.release()
    assert lab.acquired_by()[held.place] is None
    assert "Reservation" not in lab.client("reservations")


def _holder(lab: Lab, rigs: Path) -> subprocess.Popen[str]:
    """A child process that holds a place (as a test session would) until it is killed."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from hil.rig.labgrid import reserve_place
        from hil.rig.rigfile import load_rigs
        held = reserve_place(load_rigs({str(rigs)!r})[0], timeout=10)
        print(json.dumps([held.place, held.owner]), flush=True)
        time.sleep(120)
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=lab.env, stdout=subprocess.PIPE, text=True
    )


def test_sigterm_releases_the_place(lab: Lab, tmp_path: Path) -> None:
    child = _holder(lab, lab.rig_file(tmp_path / "rigs", 'name = "c3-0"'))
    try:
        assert child.stdout is not None
        place, owner = json.loads(child.stdout.readline())
        assert place == "c3-0" and lab.acquired_by()["c3-0"] == owner
        child.send_signal(signal.SIGTERM)  # a cancelled CI job
        assert child.wait(30) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    assert lab.acquired_by()["c3-0"] is None


def test_a_place_left_by_a_killed_session_is_taken_back_by_the_next(
    lab: Lab, tmp_path: Path
) -> None:
    from hil.rig.labgrid import reserve_place

    rigs = lab.rig_file(tmp_path / "rigs", 'name = "c3-1"')
    child = _holder(lab, rigs)
    try:
        assert child.stdout is not None
        _, owner = json.loads(child.stdout.readline())
        child.kill()  # SIGKILL: nothing released
        child.wait()
        assert lab.acquired_by()["c3-1"] == owner  # the coordinator keeps it for the dead
    finally:
        child.kill()
        child.wait()
    held = reserve_place(load_rigs(rigs)[0], timeout=10)
    try:
        assert held.place == "c3-1" and held.stale_places == ("c3-1",)
    finally:
        held.release()
    assert lab.acquired_by()["c3-1"] is None


def test_the_smoke_suite_runs_with_two_workers_on_two_places(lab: Lab, tmp_path: Path) -> None:
    rigs = lab.rig_file(tmp_path / "rigs", 'board = "esp32c3"', capabilities='["network_faults"]')
    env = {
        **lab.env,
        "HIL_WIFI_PASSWORD": "hil-lab-password",  # the virtual AP's; a real lab's comes from CI secrets
        "HIL_CACHE_DIR": str(tmp_path / "cache"),
        "HIL_LOCK_DIR": str(tmp_path / "locks"),
        "CI_JOB_ID": "4242",  # the places' owner names the job
    }
    logs = tmp_path / "logs"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-n", "2", "-p", "no:cacheprovider", "-q", "-rs",
         "--rigs-dir", str(rigs), "--rig-tag", "lab", "--hil-log-dir", str(logs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    # The online and partition tests ran on the labgrid rigs; the sensor test needs the virtual sensor.
    assert (
        "2 passed, 1 skipped" in result.stdout
        and "lacks capabilities ['sensor_emulation']" in result.stdout
    ), output
    records = {
        worker.name: json.loads(next(worker.glob("session-*.json")).read_text())
        for worker in sorted(logs.iterdir())
    }
    assert set(records) == {"gw0", "gw1"}, records
    places = {record["rig"] for record in records.values()}
    assert places == {"c3-0", "c3-1"} and all(
        r["rig_kind"] == "labgrid" for r in records.values()
    ), records
    # Each worker's owner name says which worker and which CI job held the place.
    acquired = [
        line
        for line in (lab.root / "coordinator.log").read_text().splitlines()
        if "place acquired by" in line
    ]
    for worker in ("gw0", "gw1"):
        assert any(f",{worker},pid" in line and line.endswith(",job=4242") for line in acquired), (
            acquired
        )
    # Both places were released when the workers' sessions ended.
    assert lab.acquired_by() == {"c3-0": None, "c3-1": None}
    assert "Reservation" not in lab.client("reservations")
    print(f"smoke with -n 2 on two labgrid places: {time.monotonic() - started:.1f} s")
