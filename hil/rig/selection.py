"""Picking rigs: by name (a rig or a pool) and tag, the virtual rigs when nothing is asked
for, so that a bench or CI run never lands on a real board nobody asked for (nor on a real
rig's virtual twin, which stands in for that board only when named)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from hil.rig.errors import UnknownRig, suggest
from hil.rig.model import CHIPS, Network, NoPowerSpec, NoSensorSpec, Rig, RigKind


def select_rigs(
    rigs: Sequence[Rig], *, name: str | None = None, tag: str | None = None
) -> list[Rig]:
    """The rigs matching ``name`` (a rig or a pool) and ``tag``; with neither, the virtual rigs.

    The virtual rig is the default so that a bench or CI run never lands on a real board
    nobody asked for. A twin (a virtual rig standing in for a real one: its reset, baud and
    capabilities) is not: a bare run gets the virtual rig with everything it can do, a twin
    only when named. Raises ``UnknownRig`` when nothing matches.
    """
    if name is None and tag is None:
        matching = [rig for rig in rigs if rig.is_virtual and rig.twin_of is None]
        if not matching:
            raise UnknownRig(
                "no rig named and no virtual rig in the inventory to default to; "
                f"pick one by name ({_names(rigs)}) or by tag ({_tags(rigs)})"
            )
        return matching
    matching = list(rigs)
    if name is not None:
        matching = [rig for rig in matching if name in (rig.name, rig.pool)]
        if not matching:
            known = sorted({rig.name for rig in rigs} | {rig.pool for rig in rigs if rig.pool})
            raise UnknownRig(f"no rig or pool named {name!r}; {suggest(name, known)}")
    if tag is not None:
        tagged = [rig for rig in matching if tag in rig.tags]
        if not tagged:
            scope = f"rig {name!r}" if name is not None else "the inventory"
            raise UnknownRig(f"no rig with tag {tag!r} in {scope}; tags in use: {_tags(matching)}")
        matching = tagged
    return matching


def planned_port(rig: Rig) -> str:
    """A rig's port as known before a session takes it (a header says it): a virtual rig's
    is served by the board the session starts, a labgrid place's by the place acquired."""
    if rig.is_virtual:
        return "rfc2217://127.0.0.1:<of the board the session starts>"
    if rig.kind == "labgrid":
        return "<the acquired place's>"
    return rig.port or "?"


def _names(rigs: Sequence[Rig]) -> str:
    return ", ".join(rig.name for rig in rigs) or "none"


def _tags(rigs: Sequence[Rig]) -> str:
    return ", ".join(sorted({tag for rig in rigs for tag in rig.tags})) or "none"


# -- a rig without a rig file: --port and --target, as pytest-embedded's users give them ----
ADHOC_TAG = "adhoc"
WIFI_SSID_ENV = "HIL_WIFI_SSID"
BROKER_HOST_ENV = "HIL_BROKER_HOST"


class AdhocRigError(UnknownRig):
    """``--port`` / ``--target`` that no board can be: a usage error."""


def check_target(target: str | None) -> None:
    """``--target``: the chip the board is; this framework drives ESP32-C3 boards only."""
    if target is not None and target.strip().lower().replace("-", "") not in CHIPS:
        raise AdhocRigError(
            f"--target {target}: this framework tests {', '.join(CHIPS)} boards only "
            f"(its firmware model, images and flasher are the ESP32-C3's); use --target {CHIPS[0]}"
        )


def adhoc_rig(port: str, target: str | None, env: Mapping[str, str]) -> Rig:
    """The rig a session takes for ``--port PORT [--target esp32c3]`` without a rig file:
    a board on a local serial device (``/dev/...``) or a lab host's RFC 2217 port, reset the
    classic way (DTR/RTS), no power switch, no sensor backend, no capabilities beyond
    flashing and MQTT. Its Wi-Fi is ``$HIL_WIFI_SSID`` (password ``$HIL_WIFI_PASSWORD``, as
    for any real rig). Named after the port, so two sessions on one port exclude each
    other through the same reservation lock as rigs of the inventory."""
    check_target(target)
    parts = urlsplit(port)
    if port.startswith("/dev/"):
        kind: RigKind = "serial"
    elif parts.scheme == "rfc2217" and parts.hostname and _port_number(parts) is not None:
        kind = "rfc2217"
    else:
        raise AdhocRigError(
            f"--port {port}: give a local serial device (/dev/ttyUSB0, /dev/serial/by-id/...) "
            "or a lab host's rfc2217://HOST:PORT"
        )
    ssid = env.get(WIFI_SSID_ENV, "")
    if not ssid:
        raise AdhocRigError(
            f"--port {port}: the board needs a Wi-Fi network to join; set ${WIFI_SSID_ENV} (and "
            "$HIL_WIFI_PASSWORD), or describe the board in a rig file (docs/real-boards.md)"
        )
    return Rig(
        name=adhoc_name(port),
        kind=kind,
        chip=CHIPS[0],
        port=port,
        reset="classic",
        power=NoPowerSpec(),
        sensor=NoSensorSpec(),
        network=Network(ssid=ssid, broker_host=env.get(BROKER_HOST_ENV, "127.0.0.1")),
        capabilities=frozenset(),
        tags=(ADHOC_TAG,),
        description=f"a board on {port}, given by --port (no rig file)",
    )


def adhoc_name(port: str) -> str:
    """``port-ttyUSB0``, ``port-labhost-4000``: a rig name (and lock file name) for a port."""
    tail = port.split("://", 1)[-1] if "://" in port else port.removeprefix("/dev/")
    name = "port-" + re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")
    return name[:64].rstrip("-.")


def _port_number(parts: SplitResult) -> int | None:
    try:
        return parts.port or None
    except ValueError:
        return None
