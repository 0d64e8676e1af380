"""A usb-jtag rig's virtual board runs the USB-Serial-JTAG personality, and its declared
re-enumeration time becomes the flasher's wait for a port that is away."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hil.rig.attached import VirtualRig
from hil.rig.model import PORT_RETURN_SLACK, Rig
from hil.rig.rigfile import load_rigs
from hil.rig.virtual_board import VirtualBoardProcess
from hil.rig.wiring import rig_flasher

REPO = Path(__file__).resolve().parents[3]


def shipped() -> dict[str, Rig]:
    return {rig.name: rig for rig in load_rigs(REPO / "rigs")}


class Held:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def release(self) -> None:
        pass


def test_the_usb_jtag_twin_starts_its_board_with_the_personality(tmp_path: Path) -> None:
    asked: list[dict[str, Any]] = []

    class Board:
        endpoints = None
        control = None

        def __init__(self, state_dir: Path, **options: Any) -> None:
            asked.append(options)

        def start(self) -> None:
            pass

    rigs = shipped()
    VirtualRig(Held(rigs["usb-jtag-twin"]), boards_dir=tmp_path, board_factory=Board).start()  # type: ignore[arg-type]
    VirtualRig(Held(rigs["devkitm-1-twin"]), boards_dir=tmp_path, board_factory=Board).start()  # type: ignore[arg-type]
    assert asked == [{"profile": "default", "usb_jtag": True}, {"profile": "default"}]
    assert VirtualBoardProcess(tmp_path, usb_jtag=True)._args[-1] == "--usb-jtag"
    assert "--usb-jtag" not in VirtualBoardProcess(tmp_path)._args


def test_the_flasher_waits_for_the_port_as_long_as_the_rig_allows() -> None:
    rigs = shipped()
    usb = rigs["usb-jtag"]
    assert usb.reenumeration_s is not None
    assert rig_flasher(usb).port_return_s == usb.port_return_s == usb.reenumeration_s * PORT_RETURN_SLACK
    assert rig_flasher(rigs["usb-jtag-twin"]).port_return_s == usb.port_return_s
    # A UART bridge's port stays: nothing to wait for.
    assert rig_flasher(rigs["devkitm-1"]).port_return_s is None
    slow = dataclasses.replace(usb, reenumeration_s=2.0)
    assert rig_flasher(slow).port_return_s == 2.0 * PORT_RETURN_SLACK
