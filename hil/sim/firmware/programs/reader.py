"""The reader: source text to `Expr`, and `format_expr` back again.

Iterative, so no nesting in the text can exhaust the Python stack; every error carries the
line and column it was found at. Lists read from source are `_Form`s, which remember where
they began so that the compiler and the machine can point at them too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Final, TypeAlias

from hil.sim.firmware.programs.errors import ProgramError
from hil.sim.firmware.programs.interface import MAX_NESTING, Expr, Symbol

_Pos: TypeAlias = "tuple[int, int] | None"


class _Form(tuple["Expr", ...]):
    """A list read from source: equal to the plain tuple, but remembers where it began."""

    line: int
    column: int

    def __new__(cls, items: Iterable[Expr], line: int, column: int) -> _Form:
        form = super().__new__(cls, items)
        form.line = line
        form.column = column
        return form


_QUOTE: Final = Symbol("quote")
_ELSE: Final = Symbol("else")
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBERISH_RE: Final = re.compile(r"[+-]?\.?[0-9]")
_SYMBOL_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$%&*/:<=>?^_~+-.@"
)
_DELIMITERS: Final = frozenset("()\";'")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _parse_error(message: str, line: int, column: int) -> ProgramError:
    return ProgramError("parse", message, line=line, column=column)


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _tokens(source: str) -> Iterator[tuple[str, Expr, int, int]]:
    """Yield (kind, value, line, column): kind is "(", ")", "'" or "datum"."""
    i, line, column, n = 0, 1, 1, len(source)
    while i < n:
        char = source[i]
        if char == "\n":
            i, line, column = i + 1, line + 1, 1
        elif char.isspace():
            i, column = i + 1, column + 1
        elif char == ";":
            end = source.find("\n", i)
            end = n if end < 0 else end
            column += end - i
            i = end
        elif char in "()'":
            yield char, char, line, column
            i, column = i + 1, column + 1
        elif char == '"':
            text, i, end_line, end_column = _scan_string(source, i, line, column)
            yield "datum", text, line, column
            line, column = end_line, end_column
        else:
            end = i
            while end < n and not source[end].isspace() and source[end] not in _DELIMITERS:
                end += 1
            yield "datum", _atom(source[i:end], line, column), line, column
            column += end - i
            i = end


def _scan_string(source: str, start: int, line: int, column: int) -> tuple[str, int, int, int]:
    """Read the string literal opening at `start`; return it and where reading resumes."""
    parts: list[str] = []
    i, at_line, at_column, n = start + 1, line, column + 1, len(source)
    while i < n:
        char = source[i]
        if char == '"':
            return "".join(parts), i + 1, at_line, at_column + 1
        if char == "\\":
            escape = source[i + 1 : i + 2]
            if not escape:
                break
            if escape not in _ESCAPES:
                written = "\\" + escape
                raise _parse_error(
                    f'unknown string escape {written!r} (use \\n, \\t, \\r, \\" or \\\\)',
                    at_line,
                    at_column,
                )
            parts.append(_ESCAPES[escape])
            i, at_column = i + 2, at_column + 2
            continue
        parts.append(char)
        i += 1
        if char == "\n":
            at_line, at_column = at_line + 1, 1
        else:
            at_column += 1
    raise _parse_error("string is never closed", line, column)


def _atom(token: str, line: int, column: int) -> Expr:
    if token.startswith("#"):
        if token in ("#t", "#true"):
            return True
        if token in ("#f", "#false"):
            return False
        raise _parse_error(f"bad token {_clip(token)!r} (booleans are #t and #f)", line, column)
    if _INT_RE.fullmatch(token):
        try:
            return int(token)
        except ValueError:  # beyond Python's int/str conversion limit
            raise _parse_error(
                f"integer literal {_clip(token)} is too long", line, column
            ) from None
    if _FLOAT_RE.fullmatch(token):
        value = float(token)
        if not math.isfinite(value):
            raise _parse_error(f"number {_clip(token)} is out of range", line, column)
        return value
    if _NUMBERISH_RE.match(token):
        raise _parse_error(f"bad number {_clip(token)!r}", line, column)
    if token == ".":
        raise _parse_error("bad token '.' (dotted pairs are not supported)", line, column)
    for char in token:
        if char not in _SYMBOL_CHARS:
            raise _parse_error(
                f"bad token {_clip(token)!r}: {char!r} cannot appear in a symbol", line, column
            )
    return Symbol(token)


def _read(source: str) -> tuple[Expr, ...]:
    """Read every datum of `source`, iteratively (no recursion, whatever the nesting)."""
    top: list[Expr] = []
    # Open lists (their items so far) and pending quotes (None), with where they began.
    pending: list[tuple[list[Expr] | None, int, int]] = []
    for kind, value, line, column in _tokens(source):
        if kind in ("(", "'"):
            if len(pending) >= MAX_NESTING:
                raise _parse_error(f"nested deeper than {MAX_NESTING} levels", line, column)
            pending.append(([] if kind == "(" else None, line, column))
            continue
        if kind == ")":
            if not pending:
                raise _parse_error("unexpected ')' with no matching '('", line, column)
            items, open_line, open_column = pending.pop()
            if items is None:
                raise _parse_error("quote (') must be followed by a datum", open_line, open_column)
            datum: Expr = _Form(items, open_line, open_column)
        else:
            datum = value
        # A finished datum completes every quote waiting for it, then joins its list.
        while pending and pending[-1][0] is None:
            _, quote_line, quote_column = pending.pop()
            datum = _Form((_QUOTE, datum), quote_line, quote_column)
        if pending:
            items = pending[-1][0]
            assert items is not None
            items.append(datum)
        else:
            top.append(datum)
    if pending:
        items, line, column = pending[-1]
        if items is None:
            raise _parse_error("quote (') must be followed by a datum", line, column)
        raise _parse_error("'(' is never closed", line, column)
    if not top:
        raise ProgramError("parse", "empty program: no expressions to run")
    return tuple(top)


def _is_symbol_name(name: str) -> bool:
    return (
        bool(name)
        and name != "."
        and not _NUMBERISH_RE.match(name)
        and all(char in _SYMBOL_CHARS for char in name)
    )


def _quote_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'


def format_expr(expr: Expr) -> str:
    """Write `expr` as source text that the reader reads back as an equal expression.

    Raises ValueError for what has no source form (a non-finite float, a symbol whose name
    the reader would not read as that symbol).
    """
    if isinstance(expr, bool):
        return "#t" if expr else "#f"
    if isinstance(expr, int):
        return str(expr)
    if isinstance(expr, float):
        if not math.isfinite(expr):
            raise ValueError(f"{expr!r} has no source form")
        return repr(expr)
    if isinstance(expr, str):
        return _quote_string(expr)
    if isinstance(expr, Symbol):
        if not _is_symbol_name(expr.name):
            raise ValueError(f"{expr.name!r} cannot be written as a symbol")
        return expr.name
    return "(" + " ".join(format_expr(item) for item in expr) + ")"
