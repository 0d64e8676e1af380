"""Selection: by name (rig or pool) and tag, the virtual rigs by default, and what an
unknown name or tag is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.rig.errors import UnknownRig
from hil.rig.rigfile import load_rigs
from hil.rig.selection import select_rigs


def test_selection_by_default_name_pool_and_tag(inventory: Path) -> None:
    rigs = load_rigs(inventory)
    assert [rig.name for rig in select_rigs(rigs)] == [
        "virtual-0",
        "virtual-1",
    ]  # never a real board
    assert [rig.name for rig in select_rigs(rigs, name="virtual")] == ["virtual-0", "virtual-1"]
    assert [rig.name for rig in select_rigs(rigs, name="virtual-1")] == ["virtual-1"]
    assert [rig.name for rig in select_rigs(rigs, tag="bench")] == ["bench-1"]
    with pytest.raises(
        UnknownRig, match=r"no rig or pool named 'virtal'; did you mean 'virtual'\?"
    ):
        select_rigs(rigs, name="virtal")
    with pytest.raises(
        UnknownRig, match="no rig with tag 'bnch' in the inventory; tags in use: bench, virtual"
    ):
        select_rigs(rigs, tag="bnch")
    with pytest.raises(UnknownRig, match=r"no virtual rig .* by name \(bench-1\)"):
        select_rigs([rig for rig in rigs if not rig.is_virtual])
