"""The clause matrix: which tests assert which device-contract clause (``hil.device.clauses``).

Tests name the clauses they assert with ``@pytest.mark.clause("C3.4", ...)``. The plugin
turns the collected items into ``(node id, clause ids, is a HIL test)`` rows and hands them
here; everything else (the matrix, what is missing, the text, Markdown, HTML and JSON forms)
is plain data and functions, so ``pytest --clauses``, ``hil clauses``, the meta test and
``hil report`` share one implementation and it is testable without pytest.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hil.device.clauses import BY_ID, CLAUSES, SECTIONS, Clause

MARKER = "clause"
JSON_NAME = "clause-matrix.json"
"""What the plugin writes into ``--alluredir`` and ``hil report`` reads back."""

# docs/device-contract.md states each clause as a bullet starting with its id in bold.
_DOC_ID = re.compile(r"^\s*[-*]\s+\*\*(C\d+\.\d+)\*\*", re.MULTILINE)


@dataclass(frozen=True)
class TaggedTest:
    """One collected test: its node id, the clause ids its markers name, and whether it
    is a HIL test (marked ``hil``: it asserts the device contract, so it must name one)."""

    nodeid: str
    clauses: tuple[str, ...]
    hil: bool = False


@dataclass(frozen=True)
class ClauseMatrix:
    tests: Mapping[str, tuple[str, ...]]
    """Every clause id of ``hil.device.clauses.CLAUSES``, in order -> the node ids asserting it."""
    untagged: tuple[str, ...] = field(default=())
    """HIL tests that name no clause."""

    def missing(self) -> list[str]:
        """Normative clauses no collected test asserts (non-normative ones are exempt:
        each says in ``untestable`` why no suite can assert it)."""
        return [c.id for c in CLAUSES if c.normative and not self.tests.get(c.id)]

    def to_json(self) -> dict[str, Any]:
        return {
            "clauses": [
                {
                    "id": c.id,
                    "section": c.section,
                    "text": c.text,
                    "normative": c.normative,
                    "untestable": c.untestable,
                    "tests": list(self.tests.get(c.id, ())),
                }
                for c in CLAUSES
            ],
            "missing": self.missing(),
            "untagged": list(self.untagged),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClauseMatrix:
        """Read back ``to_json``; ids this version does not know are dropped (an id never
        changes meaning, so a newer file's known ids still mean the same)."""
        tests = {c.id: () for c in CLAUSES} | {
            str(row["id"]): tuple(map(str, row["tests"]))
            for row in data["clauses"]
            if row["id"] in BY_ID
        }
        return cls(tests=tests, untagged=tuple(map(str, data.get("untagged", ()))))


class _Mark(Protocol):
    @property
    def args(self) -> tuple[Any, ...]: ...


class _Item(Protocol):
    """What is read of a ``pytest.Item`` (a protocol: the library does not import pytest)."""

    @property
    def nodeid(self) -> str: ...

    def iter_markers(self, name: str | None = None) -> Iterator[_Mark]: ...


def tagged(items: Iterable[_Item]) -> list[TaggedTest]:
    """The rows of collected ``items``: markers on the function, its class, its module
    (``pytestmark``) and its ``pytest.param`` all count."""
    return [
        TaggedTest(
            nodeid=item.nodeid,
            clauses=marker_ids(m.args for m in item.iter_markers(MARKER)),
            hil=any(True for _ in item.iter_markers("hil")),
        )
        for item in items
    ]


class UnknownClauses(ValueError):
    """A ``clause`` marker names an id that is not in ``hil.device.clauses`` (a typo would
    silently leave the clause without its test)."""


def marker_ids(args_per_marker: Iterable[Sequence[object]]) -> tuple[str, ...]:
    """The ids a test's ``clause`` markers name (each marker's positional args). A marker
    with no args stands as ``""``, which ``check`` refuses: ``@pytest.mark.clause()``
    would read as tagged while asserting nothing."""
    return tuple(str(arg) for args in args_per_marker for arg in (args or ("",)))


def check(tagged: Iterable[TaggedTest]) -> None:
    """Raise ``UnknownClauses`` naming each test whose markers name an unknown id (or
    none: see ``marker_ids``)."""
    problems: list[str] = []
    for test in tagged:
        bad = [repr(i) for i in test.clauses if i not in BY_ID]
        if bad:
            problems.append(f"{test.nodeid}: {', '.join(bad)}")
    if problems:
        raise UnknownClauses(
            "@pytest.mark.clause names ids that are not clauses of hil/device/clauses.py "
            "(docs/device-contract.md lists them):\n  " + "\n  ".join(problems)
        )


def build(tagged: Iterable[TaggedTest]) -> ClauseMatrix:
    """The matrix of ``tagged`` (checked first: see ``check``)."""
    rows = list(tagged)
    check(rows)
    tests: dict[str, list[str]] = {c.id: [] for c in CLAUSES}
    for test in rows:
        for clause_id in dict.fromkeys(test.clauses):  # a clause named twice counts once
            tests[clause_id].append(test.nodeid)
    untagged = tuple(t.nodeid for t in rows if t.hil and not t.clauses)
    return ClauseMatrix(tests={k: tuple(v) for k, v in tests.items()}, untagged=untagged)


def _by_section() -> dict[int, list[Clause]]:
    sections: dict[int, list[Clause]] = {number: [] for number in SECTIONS}
    for clause in CLAUSES:
        sections.setdefault(clause.section, []).append(clause)
    return sections


def grouped(nodeids: Iterable[str]) -> list[str]:
    """Node ids with the parameters of one test function folded together
    (``f.py::test[a]``, ``f.py::test[b]`` -> ``f.py::test[a, b]``): a matrix line per test
    function, not per parameter. The JSON form keeps every node id."""
    groups: dict[str, list[str]] = {}
    for nodeid in nodeids:
        base, bracket, param = nodeid.partition("[")
        groups.setdefault(base, [])
        if bracket:
            groups[base].append(param.removesuffix("]"))
    return [f"{base}[{', '.join(params)}]" if params else base for base, params in groups.items()]


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def render_text(matrix: ClauseMatrix) -> str:
    """One block per section: each clause with its asserting tests; a normative clause
    with none is marked ``NO TEST``, a non-normative one ``not asserted`` with its reason."""
    lines: list[str] = []
    for number, clauses in _by_section().items():
        lines.append(f"§{number} {SECTIONS.get(number, '')}")
        for clause in clauses:
            tests = matrix.tests.get(clause.id, ())
            if tests:
                status = f"{len(tests)} test{'s' if len(tests) > 1 else ''}"
            else:
                status = "NO TEST" if clause.normative else "not asserted"
            lines.append(f"  {clause.id:<6} {status:<12} {_short(clause.text)}")
            lines.extend(f"{'':<22}{nodeid}" for nodeid in grouped(tests))
            if not clause.normative:
                lines.append(f"{'':<22}(non-normative: {clause.untestable})")
        lines.append("")
    lines.append(summary(matrix))
    if matrix.untagged:
        lines.append(f"HIL tests that name no clause ({len(matrix.untagged)}):")
        lines.extend(f"  {nodeid}" for nodeid in grouped(matrix.untagged))
    return "\n".join(lines) + "\n"


def summary(matrix: ClauseMatrix) -> str:
    normative = sum(1 for c in CLAUSES if c.normative)
    missing = matrix.missing()
    line = f"{normative - len(missing)} of {normative} normative clauses have an asserting test"
    return line + (f"; none for {', '.join(missing)}" if missing else "")


def render_markdown(matrix: ClauseMatrix) -> str:
    lines = ["# Device-contract clauses and the tests that assert them", "", summary(matrix), ""]
    for number, clauses in _by_section().items():
        lines += [f"## §{number} {SECTIONS.get(number, '')}", "", "| clause | tests |", "|---|---|"]
        for clause in clauses:
            tests = matrix.tests.get(clause.id, ())
            cell = "<br>".join(f"`{t}`" for t in grouped(tests)) or (
                "**no test**" if clause.normative else f"non-normative: {clause.untestable}"
            )
            text = clause.text.replace("|", r"\|")  # a pipe would split the table cell
            lines.append(f"| **{clause.id}** {text} | {cell} |")
        lines.append("")
    if matrix.untagged:
        lines += (
            ["## HIL tests that name no clause", ""]
            + [f"- `{t}`" for t in grouped(matrix.untagged)]
            + [""]
        )
    return "\n".join(lines)


def render_html(matrix: ClauseMatrix, *, title: str = "Device-contract clauses") -> str:
    """A self-contained page (no scripts, no fetches) to sit beside the Allure report."""
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top;text-align:left}table{border-collapse:collapse;width:100%}"
        ".missing{background:#fdd}.exempt{color:#777}code{font-size:90%}</style></head><body>",
        f"<h1>{e(title)}</h1><p>{e(summary(matrix))}</p>",
    ]
    for number, clauses in _by_section().items():
        parts.append(
            f"<h2>§{number} {e(SECTIONS.get(number, ''))}</h2><table><tr><th>clause</th><th>tests</th></tr>"
        )
        for clause in clauses:
            tests = matrix.tests.get(clause.id, ())
            if tests:
                css, cell = "", "<br>".join(f"<code>{e(t)}</code>" for t in grouped(tests))
            elif clause.normative:
                css, cell = " class='missing'", "<b>no test</b>"
            else:
                css, cell = " class='exempt'", f"non-normative: {e(clause.untestable)}"
            parts.append(
                f"<tr{css}><td><b>{e(clause.id)}</b> {e(clause.text)}</td><td>{cell}</td></tr>"
            )
        parts.append("</table>")
    if matrix.untagged:
        items = "".join(f"<li><code>{e(t)}</code></li>" for t in grouped(matrix.untagged))
        parts.append(f"<h2>HIL tests that name no clause</h2><ul>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def merge(matrices: Sequence[ClauseMatrix]) -> ClauseMatrix:
    """The union: each clause's tests from every matrix, in first-seen order."""
    tests = {
        c.id: tuple(dict.fromkeys(t for m in matrices for t in m.tests.get(c.id, ())))
        for c in CLAUSES
    }
    untagged = tuple(dict.fromkeys(t for m in matrices for t in m.untagged))
    return ClauseMatrix(tests=tests, untagged=untagged)


def write(matrix: ClauseMatrix, directory: Path) -> Path:
    """``clause-matrix.json`` in ``directory`` (an Allure results dir, say), merged with
    the one already there: results dirs accumulate, as Allure's do (``hil gate`` re-runs
    only its broken tests into the same dir, which must not shrink the matrix)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / JSON_NAME
    before = read([directory])
    if before is not None:
        matrix = merge([before, matrix])
    # Every xdist worker collects the same tests and writes the same file: a rename is
    # atomic, so a reader never sees one half-written.
    scratch = path.with_name(f".{JSON_NAME}.{os.getpid()}")
    scratch.write_text(json.dumps(matrix.to_json(), indent=1) + "\n", encoding="utf-8")
    scratch.replace(path)
    return path


def read(directories: Sequence[Path]) -> ClauseMatrix | None:
    """The union of the matrices written into ``directories`` (``hil report`` may be given
    several results dirs); ``None`` when there is none."""
    found = [ClauseMatrix.from_json(json.loads(p.read_text(encoding="utf-8")))
             for d in directories if (p := d / JSON_NAME).is_file()]  # fmt: skip
    return merge(found) if found else None


def doc_ids(markdown: str) -> list[str]:
    """The clause ids ``docs/device-contract.md`` states (bullets starting with a bold id)."""
    return _DOC_ID.findall(markdown)
