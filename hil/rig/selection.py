"""Picking rigs: by name (a rig or a pool) and tag, the virtual rigs when nothing is asked
for, so that a bench or CI run never lands on a real board nobody asked for (nor on a real
rig's virtual twin, which stands in for that board only when named)."""

from __future__ import annotations

from collections.abc import Sequence

from hil.rig.errors import UnknownRig, suggest
from hil.rig.model import Rig


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


def _names(rigs: Sequence[Rig]) -> str:
    return ", ".join(rig.name for rig in rigs) or "none"


def _tags(rigs: Sequence[Rig]) -> str:
    return ", ".join(sorted({tag for rig in rigs for tag in rig.tags})) or "none"
