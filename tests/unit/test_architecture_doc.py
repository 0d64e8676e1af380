"""docs/architecture.md draws the layers that import-linter enforces: the picture, the
package paragraphs and pyproject.toml's `layers` contract must say the same thing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _layers_contract() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert contract["containers"] == ["hil"]
    return [[name.strip() for name in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def _picture() -> list[list[str]]:
    """The names drawn in the picture, row by row (its legend starts at column 61)."""
    block = DOC.split("```", 2)[1]
    return [[n for n in re.findall(r"[a-z_0-9]+", line[:60]) if n in PACKAGES] for line in block.splitlines()]


PACKAGES = {
    p.name if p.is_dir() else p.stem
    for p in (ROOT / "hil").iterdir()
    if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")
}


def test_the_picture_is_the_layers_contract() -> None:
    picture = [row for row in _picture() if row]
    assert [sorted(row) for row in picture] == [sorted(layer) for layer in _layers_contract()]


def test_every_package_of_hil_is_in_the_contract_and_has_a_paragraph() -> None:
    layered = {name for layer in _layers_contract() for name in layer}
    assert layered == PACKAGES, f"in hil/ but not layered: {PACKAGES - layered}; layered but gone: {layered - PACKAGES}"
    for name in PACKAGES:
        shown = f"`hil/{name}/`" if (ROOT / "hil" / name).is_dir() else f"`hil/{name}.py`"
        assert f"**{shown}" in DOC or f", {shown}" in DOC, f"docs/architecture.md has no paragraph on {shown}"


def test_every_rule_names_a_contract_that_exists() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    named = re.findall(r"import-linter: \*([^*]+)\*(?:; \*([^*]+)\*)?", DOC)
    cited = {n for pair in named for n in pair if n}
    contracts = {c["name"] for c in config["contracts"]}
    assert cited and all(any(c.startswith(n) for c in contracts) for n in cited), cited - contracts
