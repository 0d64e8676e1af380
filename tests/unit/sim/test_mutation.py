"""The mutation operators (hil.sim.mutants) and the board-side import hook (hil.sim.mutation)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hil.sim.mutants import Mutant, UnknownMutant, enumerate_mutants, mutate
from hil.sim.mutation import (
    TRACED_MODULES,
    MutantFinder,
    MutationError,
    install_mutant,
    parse_mutant,
)

ROOT = Path(__file__).resolve().parents[3]

SOURCE = textwrap.dedent(
    '''
    """A docstring: 1 2 3 are not mutated."""
    from __future__ import annotations

    LIMIT = 30

    class Link:
        def step(self, delay: float, items: list[int]) -> float:
            """Doc."""
            self.log("I", "tag", f"delay={delay * 1000}")
            if D.BROKEN in self.defects:
                return delay * 3
            if delay < LIMIT and not self.closed:
                self.client.publish("t", b"x", qos=1, retain=True)
            self.outbox.put("s", b"y", retain=self.retained)
            for queue in (self.a, self.b):
                queue.popleft()
            return min(delay * 2, LIMIT)
    '''
)


def mutants(source: str = SOURCE) -> list[Mutant]:
    return enumerate_mutants(source, "pkg.link")


def by(operator: str, original: str) -> list[Mutant]:
    return [m for m in mutants() if m.operator == operator and m.original == original]


def changes(a: object, b: object) -> list[ast.AST]:
    """The outermost nodes of ``a`` that differ from ``b`` (not looking inside them)."""
    if isinstance(a, ast.AST):
        if type(a) is not type(b):
            return [a]
        found: list[ast.AST] = []
        for name in a._fields:
            left, right = getattr(a, name, None), getattr(b, name, None)
            if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
                for x, y in zip(left, right, strict=True):
                    inner = changes(x, y)
                    # An operator (no position of its own) changed: the node holding it did.
                    found += [a] if inner and not hasattr(inner[0], "lineno") else inner
            elif isinstance(left, ast.AST | list):
                inner = changes(left, right) if not isinstance(left, list) else [a]
                found += inner
            elif left != right:
                return [a]
        return found
    return [] if a == b else [ast.Constant(a)]


def test_each_operator_is_found_where_expected() -> None:
    assert {m.replacement for m in by("const", "30")} == {"60", "15", "31", "29"}
    assert [m.variant for m in by("const", "30")] == [0, 1, 2, 3]
    assert [m.replacement for m in by("cmp", "delay < LIMIT")] == ["delay <= LIMIT"]
    assert {m.replacement for m in by("bool", "delay < LIMIT and not self.closed")} == {"delay < LIMIT", "not self.closed"}
    assert [m.replacement for m in by("not", "not self.closed")] == ["self.closed"]
    assert [m.replacement for m in by("flip", "True")] == ["False"]  # retain=True
    assert [m.replacement for m in by("flag", "self.retained")] == ["not (self.retained)"]
    assert [m.replacement for m in by("order", "min(delay * 2, LIMIT)")] == ["max(...)"]
    assert [m.replacement for m in by("order", "(self.a, self.b)")] == ["(self.b, self.a)"]
    assert [m.replacement for m in by("order", "queue.popleft()")] == [".pop(...)"]
    dropped = {m.original for m in mutants() if m.operator == "drop"}
    assert 'self.client.publish("t", b"x", qos=1, retain=True)' in dropped
    assert 'self.log("I", "tag", f"delay={delay * 1000}")' in dropped  # the call, not its text


def test_defect_branches_log_text_docstrings_and_annotations_are_left_alone() -> None:
    found = mutants()
    lines = {m.line for m in found}
    source_lines = SOURCE.splitlines()
    defect_body = next(i for i, text in enumerate(source_lines, 1) if "delay * 3" in text)
    assert defect_body not in lines
    assert not any("BROKEN" in m.original or "defects" in m.original for m in found)
    assert not any(m.original == "1000" for m in found)  # inside the log call's f-string
    assert not any(m.line <= 3 for m in found)  # docstring, __future__
    assert not any("float" in m.original or "list[int]" in m.original for m in found)


def test_what_follows_a_raise_unless_the_defect_is_left_alone() -> None:
    """``if D.X not in defects: raise`` ends the block on every image but the defect's: the
    statements after it are the defect's branch (never run on the reference build)."""
    source = textwrap.dedent(
        """
        def fetch(self):
            try:
                self.download()
            except Failed:
                if D.UNREPORTED not in self.defects:
                    raise
                self.log_mirrored("E", "ota", "download failed")
                return 7
            self.publish("verifying")
        """
    )
    found = mutants(source)
    assert not any("log_mirrored" in m.original or m.original == "7" for m in found), found
    assert any("publish" in m.original for m in found)  # after the handler: every image runs it


def test_ids_survive_edits_elsewhere_in_the_file() -> None:
    before = {m.id: m for m in mutants()}
    edited = SOURCE.replace("LIMIT = 30\n", "LIMIT = 30\n\n\ndef added() -> int:\n    return 7 + 8\n")
    after = {m.id: m for m in mutants(edited)}
    assert set(before) <= set(after)
    moved = before[by("cmp", "delay < LIMIT")[0].id]
    assert after[moved.id].line == moved.line + 4


def test_a_mutant_changes_exactly_one_node_at_its_place() -> None:
    original = ast.parse(SOURCE)
    for m in mutants():
        tree, applied = mutate(SOURCE, "pkg.link", m.id)
        assert applied == m
        changed = ast.unparse(tree) != ast.unparse(original)
        assert changed, m
        compile(tree, "link.py", "exec")  # still a module
        found = changes(original, tree)
        # One place changed, where the mutant says (a drop replaces its statement); a
        # reversed literal changes its elements, all inside the mutated node.
        assert len(found) == 1 or (m.operator == "order" and m.replacement.startswith("(")), m
        for where in found:
            assert getattr(where, "lineno", None) in (m.line, m.stmt_line), m


def test_a_dropped_statement_becomes_pass_and_only_that_one() -> None:
    m = next(m for m in mutants() if m.operator == "drop" and m.original.startswith("self.client.publish"))
    tree, _ = mutate(SOURCE, "pkg.link", m.id)
    text = ast.unparse(tree)
    assert "self.client.publish" not in text
    assert "self.outbox.put" in text and "queue.popleft()" in text


def test_an_unknown_id_is_refused() -> None:
    with pytest.raises(UnknownMutant):
        mutate(SOURCE, "pkg.link", "link:Link.step:cmp:00000000")


def test_the_firmware_modules_have_mutants_with_unique_ids() -> None:
    tasks = [m for m in TRACED_MODULES if m.startswith("hil.sim.firmware.tasks.")]
    assert tasks, "the reference firmware's tasks are traced (mutants may name them)"
    for module in ("hil.sim.firmware.reference", *tasks, "hil.sim.firmware.mqtt_link", "hil.sim.firmware.watchdog"):
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        found = enumerate_mutants(source, module)
        assert len(found) > 10
        assert len({m.id for m in found}) == len(found)


# -- the import hook -----------------------------------------------------------------------
def test_the_hook_mutates_its_module_only_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mutpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "target.py").write_text("def limit() -> int:\n    return 30\n")
    (package / "other.py").write_text("def limit() -> int:\n    return 30\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = next(m for m in enumerate_mutants((package / "target.py").read_text(), "mutpkg.target") if m.replacement == "60")
    finder = MutantFinder("mutpkg.target", m.id)
    sys.meta_path.insert(0, finder)
    try:
        target = importlib.import_module("mutpkg.target")
        other = importlib.import_module("mutpkg.other")
        assert target.limit() == 60
        assert other.limit() == 30
        assert (package / "target.py").read_text().endswith("return 30\n")  # the file is unchanged
        assert not list((package / "__pycache__").glob("target*")) if (package / "__pycache__").exists() else True
    finally:
        sys.meta_path.remove(finder)
        for name in ("mutpkg.target", "mutpkg.other", "mutpkg"):
            sys.modules.pop(name, None)


def test_the_hook_refuses_a_module_already_imported_and_a_bad_value() -> None:
    with pytest.raises(MutationError):
        install_mutant("hil.sim.mutants", "x")  # imported by this test module
    with pytest.raises(MutationError):
        parse_mutant("hil.cli=anything")  # not a firmware module
    assert parse_mutant("hil.device.settings=settings:_check:cmp:1234abcd") == ("hil.device.settings", "settings:_check:cmp:1234abcd")


def test_a_board_process_runs_the_mutant_and_the_test_side_does_not(tmp_path: Path) -> None:
    """``python -m hil sim board`` with HIL_MUTANT set imports the mutated module; this
    process (the test side) still has the original."""
    from hil.sim.firmware import mqtt_link

    source = (ROOT / "hil/sim/firmware/mqtt_link.py").read_text()
    m = next(m for m in enumerate_mutants(source, "hil.sim.firmware.mqtt_link") if m.defines == "BACKOFF_MAX_S" and m.variant == 0)
    probe = (
        "import sys; sys.argv[1:3] = ['sim', 'board']\n"
        "from hil.sim.mutation import install_from_environment; install_from_environment()\n"
        "from hil.sim.firmware import mqtt_link; print(mqtt_link.BACKOFF_MAX_S)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HIL_MUTANT": f"hil.sim.firmware.mqtt_link={m.id}", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert float(out.stdout.strip()) == mqtt_link.BACKOFF_MAX_S * 2
    assert mqtt_link.BACKOFF_MAX_S == 30.0
