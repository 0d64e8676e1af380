"""Ports for listeners that restart on the same port: outside the ephemeral range, one
holder per port on the host."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hil.services.ports import (
    PortsExhausted,
    candidate_range,
    ephemeral_range,
    release_port,
    reserve_port,
)


def test_ports_come_from_outside_the_kernels_ephemeral_range() -> None:
    assert candidate_range((32768, 60999)) == range(10_000, 32768)
    assert candidate_range((10_500, 60999)) == range(61000, 65536)  # too little room below
    low, high = ephemeral_range()
    port = reserve_port()
    try:
        assert not low <= port <= high, (port, low, high)
        with socket.create_server(("127.0.0.1", port)):  # free to listen on
            pass
    finally:
        release_port(port)


def test_another_process_never_gets_a_port_this_one_holds(tmp_path: Path) -> None:
    port = reserve_port(locks=tmp_path)
    only = f"range({port}, {port + 1})"
    other = subprocess.run(
        [sys.executable, "-c", f"from pathlib import Path; from hil.services.ports import reserve_port; "
         f"print(reserve_port(candidates={only}, locks=Path({str(tmp_path)!r})))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert other.returncode != 0 and "PortsExhausted" in other.stderr, other.stdout + other.stderr
    with pytest.raises(PortsExhausted):  # nor this one twice
        reserve_port(candidates=range(port, port + 1), locks=tmp_path)
    release_port(port)
    assert reserve_port(candidates=range(port, port + 1), locks=tmp_path) == port
    release_port(port)


def test_a_port_someone_listens_on_is_skipped(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        with pytest.raises(PortsExhausted):
            reserve_port(candidates=range(taken, taken + 1), locks=tmp_path)
