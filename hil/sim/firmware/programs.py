"""The program runtime of the Steel devices (DEVICE_CONTRACT §9): a small Scheme under budgets.

Programs arrive over MQTT as text written by someone else, so everything here treats its
input as hostile:

- the reader and the syntax check never nest deeper than `MAX_NESTING`, so no source text
  can exhaust the Python stack;
- the evaluator is an explicit-stack machine (compiled nodes plus a list of continuation
  frames), so a program's own recursion grows a Python list, never the Python stack, and
  tail calls run in constant space;
- every turn of the machine's loop is one step of the step budget; the environment frames,
  continuation frames, pairs, closures, strings and big integers that are still reachable
  are what the memory budget weighs (measured by a small mark phase whenever enough has
  been allocated since the last measurement, so garbage does not count);
- every `yield_every` steps the loop awaits `asyncio.sleep(0)`: on the device a program
  shares the CPU with telemetry and the watchdog, and must never starve them.

Pipeline: `parse_deployment` gates a `programs/{id}/deploy` payload, `parse` reads and
syntax-checks the source (errors carry line and column), `run_program` compiles the
forms once and steps the machine against a `ProgramHost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeAlias

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_DEPLOY_PAYLOAD_BYTES",
    "MAX_NESTING",
    "MAX_PROGRAM_BYTES",
    "MAX_SUFFIX_CHARS",
    "SENSOR_QUANTITIES",
    "Budget",
    "Deployment",
    "ErrorKind",
    "Expr",
    "JsonValue",
    "ProgramError",
    "ProgramHost",
    "Rejection",
    "Symbol",
    "format_expr",
    "parse",
    "parse_deployment",
    "run_program",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
Expr: TypeAlias = "bool | int | float | str | Symbol | tuple[Expr, ...]"
"""What `parse` returns: literals, symbols and lists (as tuples). A `str` is a string literal."""

ErrorKind: TypeAlias = Literal["parse", "step_budget", "memory_budget", "runtime"]

MAX_PROGRAM_BYTES: Final = 8192
"""Largest accepted source, in UTF-8 bytes (the contract's 8 KiB)."""

MAX_DEPLOY_PAYLOAD_BYTES: Final = 64 * 1024
"""Largest deploy payload even looked at: an 8 KiB source, JSON-escaped at worst, fits."""

MAX_NESTING: Final = 64
"""Deepest list nesting in source, and in values converted to JSON or printed."""

SENSOR_QUANTITIES: Final = ("temperature", "humidity", "pressure")


class ProgramError(Exception):
    """Why a program was refused or stopped; `kind` says which rule or budget it broke.

    `line`/`column` (1-based) point at the offending source when it is known: always for
    reader errors, and for syntax and runtime errors inside a list read by `parse`.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class Symbol:
    """A symbol, in code (a variable name) or as data (`'temperature`)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Budget:
    """What one run may spend: machine steps, and bytes of live memory (approximate)."""

    steps: int = 100_000
    memory_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.steps < 0 or self.memory_bytes < 0:
            raise ValueError(f"budget must not be negative: {self}")


DEFAULT_BUDGET: Final = Budget()


class ProgramHost(Protocol):
    """What a program may touch on the device: the sensor, the LED, MQTT, time.

    A method may raise `ProgramError` (kind "runtime") to fail the program with its own
    message; any other exception is turned into a runtime error naming the procedure.
    """

    def sensor(self, quantity: str) -> float: ...

    def led(self, on: bool) -> None: ...

    def publish(self, suffix: str, value: JsonValue) -> None: ...

    async def sleep(self, ms: int) -> None: ...


# --------------------------------------------------------------------------------------
# Reader


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


def parse(source: str) -> tuple[Expr, ...]:
    """Read and syntax-check a program: malformed special forms are refused here, not at run."""
    program = _read(source)
    _compile_program(program)
    return program


# --------------------------------------------------------------------------------------
# Values and the approximate sizes the memory budget charges for them (a 32-bit heap).

_PAIR_BYTES: Final = 12
_ENV_BYTES: Final = 12
_BINDING_BYTES: Final = 8
_CLOSURE_BYTES: Final = 12
_FRAME_BYTES: Final = 12
_SLOT_BYTES: Final = 4
_STRING_BYTES: Final = 8
_SMALL_INT_BITS: Final = 62
"""Integers up to this size are immediate; larger ones are charged by their size."""

_MAX_JSON_INT_BITS: Final = 4096


class _Nil:
    __slots__ = ()

    def __repr__(self) -> str:
        return "()"


class _Unspecified:
    __slots__ = ()

    def __repr__(self) -> str:
        return "#<unspecified>"


NIL: Final = _Nil()
UNSPECIFIED: Final = _Unspecified()


class _Pair:
    __slots__ = ("car", "cdr")

    def __init__(self, car: Value, cdr: Value) -> None:
        self.car = car
        self.cdr = cdr


class _Closure:
    __slots__ = ("env", "lam")

    def __init__(self, lam: _Lambda, env: _Env) -> None:
        self.lam = lam
        self.env = env


_BuiltinFn: TypeAlias = "Callable[[_Machine, list[Value]], Value]"


class _Builtin:
    __slots__ = ("fn", "max_args", "min_args", "name")

    def __init__(self, name: str, min_args: int, max_args: int | None, fn: _BuiltinFn) -> None:
        self.name = name
        self.min_args = min_args
        self.max_args = max_args
        self.fn = fn


Value: TypeAlias = "int | float | str | Symbol | _Nil | _Unspecified | _Pair | _Closure | _Builtin"


class _Env:
    """One environment frame: its own bindings, then its parent's."""

    __slots__ = ("parent", "vars")

    def __init__(self, variables: dict[str, Value], parent: _Env | None) -> None:
        self.vars = variables
        self.parent = parent

    def find(self, name: str) -> _Env | None:
        env: _Env | None = self
        while env is not None:
            if name in env.vars:
                return env
            env = env.parent
        return None


def _runtime(message: str) -> ProgramError:
    return ProgramError("runtime", message)


def _int_bytes(value: int) -> int:
    return _STRING_BYTES + (value.bit_length() + 7) // 8


def _string_bytes(text: str) -> int:
    return _STRING_BYTES + len(text)


# --------------------------------------------------------------------------------------
# Compiled nodes: each `eval` either produces `m.value` (and sets `m.node = None`) or
# names the next node to evaluate, pushing a frame if it needs the result back.


class _Node:
    __slots__ = ("pos",)

    def __init__(self, pos: _Pos) -> None:
        self.pos = pos

    def eval(self, m: _Machine) -> None:
        raise NotImplementedError


class _Const(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Value, pos: _Pos) -> None:
        super().__init__(pos)
        self.value = value

    def eval(self, m: _Machine) -> None:
        m.value = self.value
        m.node = None


class _Ref(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str, pos: _Pos) -> None:
        super().__init__(pos)
        self.name = name

    def eval(self, m: _Machine) -> None:
        name = self.name
        env: _Env | None = m.env
        while env is not None:
            if name in env.vars:
                m.value = env.vars[name]
                m.node = None
                return
            env = env.parent
        raise _runtime(f"unbound variable: {name}")


class _Lambda(_Node):
    __slots__ = ("body", "name", "params", "rest")

    def __init__(
        self,
        params: tuple[str, ...],
        rest: str | None,
        body: tuple[_Node, ...],
        name: str | None,
        pos: _Pos,
    ) -> None:
        super().__init__(pos)
        self.params = params
        self.rest = rest
        self.body = body
        self.name = name

    def eval(self, m: _Machine) -> None:
        m.value = _Closure(self, m.env)
        m.allocated += _CLOSURE_BYTES
        m.node = None


class _If(_Node):
    __slots__ = ("otherwise", "test", "then")

    def __init__(self, test: _Node, then: _Node, otherwise: _Node | None, pos: _Pos) -> None:
        super().__init__(pos)
        self.test = test
        self.then = then
        self.otherwise = otherwise

    def eval(self, m: _Machine) -> None:
        m.stack.append(_IfFrame(self, m.env))
        m.allocated += _FRAME_BYTES
        m.node = self.test


class _Define(_Node):
    __slots__ = ("name", "value")

    def __init__(self, name: str, value: _Node, pos: _Pos) -> None:
        super().__init__(pos)
        self.name = name
        self.value = value

    def eval(self, m: _Machine) -> None:
        m.stack.append(_DefineFrame(self, m.env))
        m.allocated += _FRAME_BYTES
        m.node = self.value


class _Set(_Node):
    __slots__ = ("name", "value")

    def __init__(self, name: str, value: _Node, pos: _Pos) -> None:
        super().__init__(pos)
        self.name = name
        self.value = value

    def eval(self, m: _Machine) -> None:
        m.stack.append(_SetFrame(self, m.env))
        m.allocated += _FRAME_BYTES
        m.node = self.value


class _Seq(_Node):
    __slots__ = ("body",)

    def __init__(self, body: tuple[_Node, ...], pos: _Pos) -> None:
        super().__init__(pos)
        self.body = body

    def eval(self, m: _Machine) -> None:
        m.stack.append(_SeqFrame(self.body, m.env))
        m.allocated += _FRAME_BYTES
        m.node = self.body[0]


class _And(_Node):
    __slots__ = ("items",)

    def __init__(self, items: tuple[_Node, ...], pos: _Pos) -> None:
        super().__init__(pos)
        self.items = items

    def eval(self, m: _Machine) -> None:
        if not self.items:
            m.value = True
            m.node = None
            return
        if len(self.items) > 1:
            m.stack.append(_AndFrame(self.items, m.env))
            m.allocated += _FRAME_BYTES
        m.node = self.items[0]


class _Or(_Node):
    __slots__ = ("items",)

    def __init__(self, items: tuple[_Node, ...], pos: _Pos) -> None:
        super().__init__(pos)
        self.items = items

    def eval(self, m: _Machine) -> None:
        if not self.items:
            m.value = False
            m.node = None
            return
        if len(self.items) > 1:
            m.stack.append(_OrFrame(self.items, m.env))
            m.allocated += _FRAME_BYTES
        m.node = self.items[0]


class _App(_Node):
    __slots__ = ("parts",)

    def __init__(self, parts: tuple[_Node, ...], pos: _Pos) -> None:
        super().__init__(pos)
        self.parts = parts

    def eval(self, m: _Machine) -> None:
        m.stack.append(_ArgsFrame(self, m.env))
        m.allocated += _FRAME_BYTES
        m.node = self.parts[0]


# --------------------------------------------------------------------------------------
# Continuation frames: what to do with a value once it is computed. Frames are never
# shared (there is no call/cc), so a frame may update itself and push itself back.


class _Frame:
    __slots__ = ("env",)

    def __init__(self, env: _Env) -> None:
        self.env = env

    def resume(self, m: _Machine, value: Value) -> None:
        raise NotImplementedError

    def where(self) -> _Pos:
        return None

    def size(self) -> int:
        return _FRAME_BYTES

    def refs(self) -> Iterable[object]:
        return (self.env,)


class _IfFrame(_Frame):
    __slots__ = ("node",)

    def __init__(self, node: _If, env: _Env) -> None:
        super().__init__(env)
        self.node = node

    def resume(self, m: _Machine, value: Value) -> None:
        branch = self.node.then if value is not False else self.node.otherwise
        if branch is None:
            m.value = UNSPECIFIED
            m.node = None
        else:
            m.env = self.env
            m.node = branch


class _SeqFrame(_Frame):
    __slots__ = ("body", "index")

    def __init__(self, body: tuple[_Node, ...], env: _Env) -> None:
        super().__init__(env)
        self.body = body
        self.index = 1

    def resume(self, m: _Machine, value: Value) -> None:
        index = self.index
        if index + 1 < len(self.body):
            self.index = index + 1
            m.stack.append(self)
        m.env = self.env
        m.node = self.body[index]  # the last one runs in tail position: no frame left


class _DefineFrame(_Frame):
    __slots__ = ("node",)

    def __init__(self, node: _Define, env: _Env) -> None:
        super().__init__(env)
        self.node = node

    def resume(self, m: _Machine, value: Value) -> None:
        self.env.vars[self.node.name] = value
        m.allocated += _BINDING_BYTES
        m.value = UNSPECIFIED
        m.node = None


class _SetFrame(_Frame):
    __slots__ = ("node",)

    def __init__(self, node: _Set, env: _Env) -> None:
        super().__init__(env)
        self.node = node

    def resume(self, m: _Machine, value: Value) -> None:
        owner = self.env.find(self.node.name)
        if owner is None:
            raise _runtime(f"set!: unbound variable: {self.node.name}")
        owner.vars[self.node.name] = value
        m.value = UNSPECIFIED
        m.node = None

    def where(self) -> _Pos:
        return self.node.pos


class _AndFrame(_Frame):
    __slots__ = ("index", "items")

    def __init__(self, items: tuple[_Node, ...], env: _Env) -> None:
        super().__init__(env)
        self.items = items
        self.index = 1

    def resume(self, m: _Machine, value: Value) -> None:
        if value is False:
            m.node = None
            return
        index = self.index
        if index + 1 < len(self.items):
            self.index = index + 1
            m.stack.append(self)
        m.env = self.env
        m.node = self.items[index]


class _OrFrame(_Frame):
    __slots__ = ("index", "items")

    def __init__(self, items: tuple[_Node, ...], env: _Env) -> None:
        super().__init__(env)
        self.items = items
        self.index = 1

    def resume(self, m: _Machine, value: Value) -> None:
        if value is not False:
            m.node = None
            return
        index = self.index
        if index + 1 < len(self.items):
            self.index = index + 1
            m.stack.append(self)
        m.env = self.env
        m.node = self.items[index]


class _ArgsFrame(_Frame):
    """Evaluates operator and operands left to right, then applies."""

    __slots__ = ("node", "values")

    def __init__(self, node: _App, env: _Env) -> None:
        super().__init__(env)
        self.node = node
        self.values: list[Value] = []

    def resume(self, m: _Machine, value: Value) -> None:
        values = self.values
        values.append(value)
        m.allocated += _SLOT_BYTES
        parts = self.node.parts
        if len(values) < len(parts):
            m.stack.append(self)
            m.env = self.env
            m.node = parts[len(values)]
        else:
            m.apply(values[0], values[1:])

    def where(self) -> _Pos:
        return self.node.pos

    def size(self) -> int:
        return _FRAME_BYTES + _SLOT_BYTES * len(self.values)

    def refs(self) -> Iterable[object]:
        return (self.env, *self.values)


# --------------------------------------------------------------------------------------
# Compiler: Expr → nodes, checking the syntax of every special form on the way.

_SPECIAL_FORMS: Final = frozenset(
    {"quote", "define", "set!", "lambda", "let", "let*", "if", "begin", "and", "or", "cond"}
)


def _syntax(message: str, pos: _Pos) -> ProgramError:
    if pos is None:
        return ProgramError("parse", message)
    return ProgramError("parse", message, line=pos[0], column=pos[1])


def _where(expr: Expr, outer: _Pos) -> _Pos:
    return (expr.line, expr.column) if isinstance(expr, _Form) else outer


def _check_nesting(program: Sequence[Expr]) -> None:
    """Bound the compiler's recursion for hand-built programs too (the reader already does)."""
    todo: list[tuple[Expr, int]] = [(form, 1) for form in program]
    while todo:
        expr, depth = todo.pop()
        if isinstance(expr, tuple):
            if depth > MAX_NESTING:
                raise _syntax(f"nested deeper than {MAX_NESTING} levels", _where(expr, None))
            todo.extend((item, depth + 1) for item in expr)


def _compile_program(program: Sequence[Expr]) -> _Node:
    if not program:
        raise ProgramError("parse", "empty program: no expressions to run")
    _check_nesting(program)
    nodes = tuple(_compile(form, None, body=True) for form in program)
    return nodes[0] if len(nodes) == 1 else _Seq(nodes, None)


def _compile(expr: Expr, pos: _Pos, *, body: bool = False) -> _Node:
    if isinstance(expr, Symbol):
        if expr.name in _SPECIAL_FORMS:
            raise _syntax(f"{expr.name} is a special form, not a value", pos)
        return _Ref(expr.name, pos)
    if isinstance(expr, tuple):
        pos = _where(expr, pos)
        if not expr:
            raise _syntax("empty combination (); write '() for the empty list", pos)
        head = expr[0]
        if isinstance(head, Symbol) and head.name in _SPECIAL_FORMS:
            return _FORM_COMPILERS[head.name](expr, pos, body)
        return _App(tuple(_compile(part, pos) for part in expr), pos)
    if isinstance(expr, float) and not math.isfinite(expr):
        raise _syntax(f"number {expr!r} is out of range", pos)
    if isinstance(expr, bool | int | float | str):
        return _Const(expr, pos)
    raise _syntax(f"not an expression: {expr!r}", pos)


def _datum(expr: Expr) -> Value:
    if isinstance(expr, tuple):
        result: Value = NIL
        for item in reversed(expr):
            result = _Pair(_datum(item), result)
        return result
    return expr


def _name(expr: Expr, pos: _Pos, who: str) -> str:
    if not isinstance(expr, Symbol):
        raise _syntax(f"{who}: {_clip(_show(expr))} is not a variable name", _where(expr, pos))
    if expr.name in _SPECIAL_FORMS:
        raise _syntax(f"{who}: cannot bind {expr.name}, it is a special form", pos)
    return expr.name


def _show(expr: Expr) -> str:
    try:
        return format_expr(expr)
    except ValueError:
        return repr(expr)


def _parameters(exprs: Sequence[Expr], pos: _Pos, who: str) -> tuple[str, ...]:
    names = tuple(_name(expr, pos, who) for expr in exprs)
    for index, name in enumerate(names):
        if name in names[:index]:
            raise _syntax(f"{who}: parameter {name} appears twice", pos)
    return names


def _body(forms: Sequence[Expr], pos: _Pos, who: str) -> tuple[_Node, ...]:
    if not forms:
        raise _syntax(f"{who}: empty body", pos)
    return tuple(_compile(form, pos, body=True) for form in forms)


def _sequence(forms: Sequence[Expr], pos: _Pos) -> _Node:
    nodes = tuple(_compile(form, pos) for form in forms)
    return nodes[0] if len(nodes) == 1 else _Seq(nodes, pos)


def _compile_quote(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if len(form) != 2:
        raise _syntax("quote takes exactly one datum", pos)
    return _Const(_datum(form[1]), pos)


def _compile_if(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if len(form) not in (3, 4):
        raise _syntax("if takes a test, a consequent and an optional alternative", pos)
    otherwise = _compile(form[3], pos) if len(form) == 4 else None
    return _If(_compile(form[1], pos), _compile(form[2], pos), otherwise, pos)


def _compile_define(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if not body:
        raise _syntax("define is only allowed at the top level or in a body", pos)
    if len(form) < 3:
        raise _syntax("define needs a name and a value, or (name parameters...) and a body", pos)
    target = form[1]
    if isinstance(target, tuple) and target:
        name = _name(target[0], pos, "define")
        params = _parameters(target[1:], pos, "define")
        return _Define(name, _Lambda(params, None, _body(form[2:], pos, name), name, pos), pos)
    name = _name(target, pos, "define")
    if len(form) != 3:
        raise _syntax(f"define {name}: expected exactly one value", pos)
    value = _compile(form[2], pos)
    if isinstance(value, _Lambda) and value.name is None:
        value.name = name
    return _Define(name, value, pos)


def _compile_set(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if len(form) != 3:
        raise _syntax("set! needs a variable and a value", pos)
    return _Set(_name(form[1], pos, "set!"), _compile(form[2], pos), pos)


def _compile_lambda(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if len(form) < 3:
        raise _syntax("lambda needs parameters and a body", pos)
    spec = form[1]
    if isinstance(spec, Symbol):
        params: tuple[str, ...] = ()
        rest: str | None = _name(spec, pos, "lambda")
    elif isinstance(spec, tuple):
        params, rest = _parameters(spec, pos, "lambda"), None
    else:
        raise _syntax("lambda parameters must be a list of names, or one name", pos)
    return _Lambda(params, rest, _body(form[2:], pos, "lambda"), None, pos)


def _compile_begin(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if len(form) == 1:
        return _Const(UNSPECIFIED, pos)
    nodes = tuple(_compile(item, pos, body=body) for item in form[1:])
    return nodes[0] if len(nodes) == 1 else _Seq(nodes, pos)


def _bindings(
    expr: Expr, pos: _Pos, who: str, *, unique: bool = True
) -> tuple[tuple[str, ...], tuple[_Node, ...]]:
    if not isinstance(expr, tuple):
        raise _syntax(f"{who}: bindings must be a list of (name value)", pos)
    names: list[str] = []
    inits: list[_Node] = []
    for binding in expr:
        where = _where(binding, pos)
        if not isinstance(binding, tuple) or len(binding) != 2:
            raise _syntax(f"{who}: each binding must be (name value)", where)
        name = _name(binding[0], where, who)
        if unique and name in names:
            raise _syntax(f"{who}: {name} is bound twice", where)
        names.append(name)
        inits.append(_compile(binding[1], where))
    return tuple(names), tuple(inits)


def _compile_let(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    loop = _name(form[1], pos, "let") if len(form) > 1 and isinstance(form[1], Symbol) else None
    rest = form[2:] if loop is not None else form[1:]
    if len(rest) < 2:
        raise _syntax("let needs bindings and a body", pos)
    names, inits = _bindings(rest[0], pos, "let")
    nodes = _body(rest[1:], pos, "let")
    if loop is None:
        return _App((_Lambda(names, None, nodes, None, pos), *inits), pos)
    # Named let: the inits are evaluated outside the loop procedure's scope, so they are
    # passed through parameters the program cannot name (a space is never in a symbol).
    temps = tuple(f"let {index}" for index in range(len(names)))
    start = (
        _Define(loop, _Lambda(names, None, nodes, loop, pos), pos),
        _App((_Ref(loop, pos), *(_Ref(temp, pos) for temp in temps)), pos),
    )
    return _App((_Lambda(temps, None, start, None, pos), *inits), pos)


def _compile_let_star(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    if len(form) < 3:
        raise _syntax("let* needs bindings and a body", pos)
    names, inits = _bindings(form[1], pos, "let*", unique=False)
    nodes = _body(form[2:], pos, "let*")
    if not names:
        return _App((_Lambda((), None, nodes, None, pos),), pos)
    for name, init in reversed(tuple(zip(names, inits, strict=True))):
        nodes = (_App((_Lambda((name,), None, nodes, None, pos), init), pos),)
    return nodes[0]


def _compile_and(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    return _And(tuple(_compile(item, pos) for item in form[1:]), pos)


def _compile_or(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    return _Or(tuple(_compile(item, pos) for item in form[1:]), pos)


def _compile_cond(form: tuple[Expr, ...], pos: _Pos, body: bool) -> _Node:
    clauses = form[1:]
    if not clauses:
        raise _syntax("cond needs at least one clause", pos)
    result: _Node | None = None
    for index in reversed(range(len(clauses))):
        clause = clauses[index]
        where = _where(clause, pos)
        if not isinstance(clause, tuple) or not clause:
            raise _syntax("cond: each clause must be (test expression...)", where)
        if clause[0] == _ELSE:
            if index != len(clauses) - 1:
                raise _syntax("cond: else must be the last clause", where)
            if len(clause) < 2:
                raise _syntax("cond: else needs an expression", where)
            result = _sequence(clause[1:], where)
            continue
        if len(clause) > 1 and clause[1] == Symbol("=>"):
            raise _syntax("cond: => clauses are not supported", where)
        test = _compile(clause[0], where)
        if len(clause) == 1:
            result = _Or((test, result or _Const(UNSPECIFIED, where)), where)
        else:
            result = _If(test, _sequence(clause[1:], where), result, where)
    assert result is not None
    return result


_FORM_COMPILERS: Final[dict[str, Callable[[tuple[Expr, ...], _Pos, bool], _Node]]] = {
    "quote": _compile_quote,
    "define": _compile_define,
    "set!": _compile_set,
    "lambda": _compile_lambda,
    "let": _compile_let,
    "let*": _compile_let_star,
    "if": _compile_if,
    "begin": _compile_begin,
    "and": _compile_and,
    "or": _compile_or,
    "cond": _compile_cond,
}


# --------------------------------------------------------------------------------------
# The machine


class _Machine:
    __slots__ = (
        "allocated",
        "budget",
        "env",
        "globals",
        "host",
        "live",
        "node",
        "sleep_request",
        "stack",
        "threshold",
        "value",
    )

    def __init__(self, host: ProgramHost, budget: Budget) -> None:
        self.host = host
        self.budget = budget
        self.globals = _Env(dict(_BUILTINS), None)
        self.env = self.globals
        self.node: _Node | None = None
        self.value: Value = UNSPECIFIED
        self.stack: list[_Frame] = []
        self.allocated = 0
        self.live = 0
        self.threshold = budget.memory_bytes
        self.sleep_request: int | None = None

    async def run(self, entry: _Node, yield_every: int) -> Value:
        self.node = entry
        stack = self.stack
        step_limit = self.budget.steps
        steps = 0
        countdown = yield_every
        while True:
            node = self.node
            if node is None and not stack:
                return self.value
            steps += 1
            if steps > step_limit:
                raise ProgramError("step_budget", f"step budget of {step_limit} steps exhausted")
            frame: _Frame | None = None
            try:
                if node is not None:
                    node.eval(self)
                else:
                    frame = stack.pop()
                    frame.resume(self, self.value)
            except ProgramError as error:
                if error.line is None:
                    pos = node.pos if node is not None else frame.where() if frame else None
                    if pos is not None:
                        error.line, error.column = pos
                raise
            if self.allocated > self.threshold:
                self._collect()
            if self.sleep_request is not None:
                ms, self.sleep_request = self.sleep_request, None
                with _host_call("sleep"):
                    await self.host.sleep(ms)
                countdown = yield_every
            else:
                countdown -= 1
                if countdown <= 0:
                    countdown = yield_every
                    await asyncio.sleep(0)  # never starve telemetry and the watchdog

    def apply(self, proc: Value, args: list[Value]) -> None:
        if isinstance(proc, _Closure):
            lam = proc.lam
            params = lam.params
            if len(args) != len(params) and (lam.rest is None or len(args) < len(params)):
                wanted = _arity(len(params), None if lam.rest else len(params))
                raise _runtime(f"{lam.name or 'anonymous procedure'}: {wanted}, got {len(args)}")
            variables: dict[str, Value] = dict(zip(params, args, strict=False))
            if lam.rest is not None:
                variables[lam.rest] = self.make_list(args[len(params) :])
            env = _Env(variables, proc.env)
            self.allocated += _ENV_BYTES + _BINDING_BYTES * len(variables)
            body = lam.body
            if len(body) > 1:
                self.stack.append(_SeqFrame(body, env))
                self.allocated += _FRAME_BYTES
            self.env = env
            self.node = body[0]
        elif isinstance(proc, _Builtin):
            count = len(args)
            if count < proc.min_args or (proc.max_args is not None and count > proc.max_args):
                raise _runtime(f"{proc.name}: {_arity(proc.min_args, proc.max_args)}, got {count}")
            try:
                self.value = proc.fn(self, args)
            except ZeroDivisionError:
                raise _runtime(f"{proc.name}: division by zero") from None
            except OverflowError:
                raise _runtime(f"{proc.name}: number too large") from None
            self.node = None
        else:
            raise _runtime(f"not a procedure: {_write(proc)}")

    def make_list(self, items: Sequence[Value]) -> Value:
        result: Value = NIL
        for item in reversed(items):
            result = _Pair(item, result)
        self.allocated += _PAIR_BYTES * len(items)
        return result

    def _collect(self) -> None:
        limit = self.budget.memory_bytes
        live = self._measure(limit)
        if live > limit:
            raise ProgramError("memory_budget", f"memory budget of {limit} bytes exhausted")
        self.live = live
        self.allocated = 0
        # Measure again once the budget could be exceeded, but not more often than every
        # 1/16 of it: a program living just under its budget must not make every step a
        # full measurement (so an overshoot of up to 1/16 may go unseen for a while).
        self.threshold = max(limit - live, limit // 16)

    def _measure(self, limit: int) -> int:
        """Bytes reachable from the machine's roots (stops counting once past `limit`)."""
        seen: set[int] = set()
        todo: list[object] = [self.globals, self.env, self.value, *self.stack]
        total = 0
        while todo and total <= limit:
            obj = todo.pop()
            if isinstance(obj, float | Symbol | _Nil | _Unspecified | _Builtin):
                continue
            if isinstance(obj, int) and obj.bit_length() <= _SMALL_INT_BITS:
                continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, _Pair):
                total += _PAIR_BYTES
                todo.append(obj.car)
                todo.append(obj.cdr)
            elif isinstance(obj, _Env):
                total += _ENV_BYTES + _BINDING_BYTES * len(obj.vars)
                todo.extend(obj.vars.values())
                if obj.parent is not None:
                    todo.append(obj.parent)
            elif isinstance(obj, _Frame):
                total += obj.size()
                todo.extend(obj.refs())
            elif isinstance(obj, _Closure):
                total += _CLOSURE_BYTES
                todo.append(obj.env)
            elif isinstance(obj, str):
                total += _string_bytes(obj)
            elif isinstance(obj, int):
                total += _int_bytes(obj)
        return total


def _arity(least: int, most: int | None) -> str:
    def count(n: int) -> str:
        return f"{n} argument" + ("" if n == 1 else "s")

    if most is None:
        return f"expects at least {count(least)}"
    if least == most:
        return f"expects {count(least)}"
    return f"expects {least} to {count(most)}"


@contextlib.contextmanager
def _host_call(who: str) -> Iterator[None]:
    try:
        yield
    except ProgramError:
        raise
    except Exception as exc:
        raise _runtime(f"{who}: {type(exc).__name__}: {exc}") from exc


async def run_program(
    program: tuple[Expr, ...],
    host: ProgramHost,
    budget: Budget = DEFAULT_BUDGET,
    *,
    yield_every: int = 500,
) -> JsonValue:
    """Run `program` against `host` within `budget`; return its last value as JSON.

    Conversion: numbers, strings and booleans as themselves, proper lists as arrays,
    symbols as their names, procedures as "#<procedure>", improper lists as their written
    form, and the unspecified value (of `define`, `set!`, `led`...) as null.
    Raises `ProgramError` of kind "parse" (malformed forms), "runtime", "step_budget" or
    "memory_budget". Awaits `asyncio.sleep(0)` every `yield_every` steps.
    """
    if yield_every < 1:
        raise ValueError(f"yield_every must be at least 1, not {yield_every}")
    entry = _compile_program(program)
    machine = _Machine(host, budget)
    return _to_json(await machine.run(entry, yield_every))


# --------------------------------------------------------------------------------------
# Builtins

_BUILTINS: dict[str, _Builtin] = {}


def _builtin(name: str, min_args: int, max_args: int | None) -> Callable[[_BuiltinFn], _BuiltinFn]:
    def register(fn: _BuiltinFn) -> _BuiltinFn:
        _BUILTINS[name] = _Builtin(name, min_args, max_args, fn)
        return fn

    return register


def _type_error(who: str, wanted: str, value: Value) -> ProgramError:
    return _runtime(f"{who}: expected {wanted}, got {_write(value, 40)}")


def _number(who: str, value: Value) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(who, "a number", value)
    return value


def _integer(who: str, value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(who, "an integer", value)
    return value


def _string(who: str, value: Value) -> str:
    if not isinstance(value, str):
        raise _type_error(who, "a string", value)
    return value


def _symbol(who: str, value: Value) -> str:
    if not isinstance(value, Symbol):
        raise _type_error(who, "a quoted symbol", value)
    return value.name


def _pair(who: str, value: Value) -> _Pair:
    if not isinstance(value, _Pair):
        raise _type_error(who, "a pair", value)
    return value


def _result(m: _Machine, who: str, value: int | float) -> int | float:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _runtime(f"{who}: floating-point overflow")
    elif value.bit_length() > _SMALL_INT_BITS:
        m.allocated += _int_bytes(value)
    return value


@_builtin("+", 0, None)
def _add(m: _Machine, args: list[Value]) -> Value:
    # Fold from the first argument, not from 0: (+ -0.0) is -0.0, and 0 + -0.0 is 0.0.
    total: int | float = _number("+", args[0]) if args else 0
    for arg in args[1:]:
        total += _number("+", arg)
    return _result(m, "+", total)


@_builtin("-", 1, None)
def _subtract(m: _Machine, args: list[Value]) -> Value:
    first = _number("-", args[0])
    if len(args) == 1:
        return _result(m, "-", -first)
    for arg in args[1:]:
        first -= _number("-", arg)
    return _result(m, "-", first)


@_builtin("*", 0, None)
def _multiply(m: _Machine, args: list[Value]) -> Value:
    product: int | float = 1
    max_bits = max(m.budget.memory_bytes * 8, 64)
    for arg in args:
        factor = _number("*", arg)
        if (
            isinstance(product, int)
            and isinstance(factor, int)
            and product.bit_length() + factor.bit_length() > max_bits
        ):
            raise ProgramError("memory_budget", "*: the product would not fit the memory budget")
        product *= factor
    return _result(m, "*", product)


def _divide(a: int | float, b: int | float) -> int | float:
    if isinstance(a, int) and isinstance(b, int):
        quotient, remainder = divmod(a, b)
        if remainder == 0:
            return quotient  # exact division stays an integer
    return a / b


@_builtin("/", 1, None)
def _divide_all(m: _Machine, args: list[Value]) -> Value:
    first = _number("/", args[0])
    # A host with `integer_division` set is the `program_integer_division` defect image's.
    divide = _c_divide if getattr(m.host, "integer_division", False) else _divide
    if len(args) == 1:
        return _result(m, "/", divide(1, first))
    for arg in args[1:]:
        first = divide(first, _number("/", arg))
    return _result(m, "/", first)


def _c_divide(a: int | float, b: int | float) -> int | float:
    if isinstance(a, int) and isinstance(b, int) and b != 0:
        return _truncated(a, b)
    return _divide(a, b)


def _truncated(a: int, b: int) -> int:
    quotient = abs(a) // abs(b)
    return -quotient if (a < 0) != (b < 0) else quotient


@_builtin("quotient", 2, 2)
def _quotient(m: _Machine, args: list[Value]) -> Value:
    return _result(
        m, "quotient", _truncated(_integer("quotient", args[0]), _integer("quotient", args[1]))
    )


@_builtin("remainder", 2, 2)
def _remainder(m: _Machine, args: list[Value]) -> Value:
    a, b = _integer("remainder", args[0]), _integer("remainder", args[1])
    return _result(m, "remainder", a - b * _truncated(a, b))


@_builtin("modulo", 2, 2)
def _modulo(m: _Machine, args: list[Value]) -> Value:
    return _result(m, "modulo", _integer("modulo", args[0]) % _integer("modulo", args[1]))


def _comparison(name: str, holds: Callable[[int | float, int | float], bool]) -> None:
    def compare(m: _Machine, args: list[Value]) -> Value:
        numbers = [_number(name, arg) for arg in args]
        return all(holds(a, b) for a, b in itertools.pairwise(numbers))

    _BUILTINS[name] = _Builtin(name, 2, None, compare)


_comparison("=", operator.eq)
_comparison("<", operator.lt)
_comparison(">", operator.gt)
_comparison("<=", operator.le)
_comparison(">=", operator.ge)


@_builtin("abs", 1, 1)
def _abs(m: _Machine, args: list[Value]) -> Value:
    return _result(m, "abs", abs(_number("abs", args[0])))


def _extreme(name: str, pick: Callable[[list[int | float]], int | float]) -> None:
    def choose(m: _Machine, args: list[Value]) -> Value:
        numbers = [_number(name, arg) for arg in args]
        chosen = pick(numbers)
        if any(isinstance(n, float) for n in numbers):
            chosen = float(chosen)  # Scheme: one inexact argument makes the result inexact
        return chosen

    _BUILTINS[name] = _Builtin(name, 1, None, choose)


_extreme("min", min)
_extreme("max", max)


@_builtin("not", 1, 1)
def _not(m: _Machine, args: list[Value]) -> Value:
    return args[0] is False


@_builtin("list", 0, None)
def _list(m: _Machine, args: list[Value]) -> Value:
    return m.make_list(args)


@_builtin("cons", 2, 2)
def _cons(m: _Machine, args: list[Value]) -> Value:
    m.allocated += _PAIR_BYTES
    return _Pair(args[0], args[1])


@_builtin("car", 1, 1)
def _car(m: _Machine, args: list[Value]) -> Value:
    return _pair("car", args[0]).car


@_builtin("cdr", 1, 1)
def _cdr(m: _Machine, args: list[Value]) -> Value:
    return _pair("cdr", args[0]).cdr


@_builtin("null?", 1, 1)
def _null(m: _Machine, args: list[Value]) -> Value:
    return args[0] is NIL


@_builtin("pair?", 1, 1)
def _is_pair(m: _Machine, args: list[Value]) -> Value:
    return isinstance(args[0], _Pair)


@_builtin("length", 1, 1)
def _length(m: _Machine, args: list[Value]) -> Value:
    count, node = 0, args[0]
    while isinstance(node, _Pair):
        count, node = count + 1, node.cdr
    if node is not NIL:
        raise _type_error("length", "a proper list", args[0])
    return count


def _eqv(a: Value, b: Value) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, int | float | Symbol):
        return a == b
    return a is b


@_builtin("eq?", 2, 2)
def _eq(m: _Machine, args: list[Value]) -> Value:
    return _eqv(args[0], args[1])


@_builtin("equal?", 2, 2)
def _equal(m: _Machine, args: list[Value]) -> Value:
    todo = [(args[0], args[1])]
    while todo:
        a, b = todo.pop()
        if isinstance(a, _Pair) and isinstance(b, _Pair):
            todo.append((a.cdr, b.cdr))
            todo.append((a.car, b.car))
        elif isinstance(a, str) and isinstance(b, str):
            if a != b:
                return False
        elif not _eqv(a, b):
            return False
    return True


@_builtin("string-append", 0, None)
def _string_append(m: _Machine, args: list[Value]) -> Value:
    text = "".join(_string("string-append", arg) for arg in args)
    m.allocated += _string_bytes(text)
    return text


@_builtin("number->string", 1, 1)
def _number_to_string(m: _Machine, args: list[Value]) -> Value:
    number = _number("number->string", args[0])
    try:
        text = repr(number) if isinstance(number, float) else str(number)
    except ValueError:  # beyond Python's int/str conversion limit
        raise _runtime("number->string: integer too large to print") from None
    m.allocated += _string_bytes(text)
    return text


@_builtin("symbol->string", 1, 1)
def _symbol_to_string(m: _Machine, args: list[Value]) -> Value:
    text = _symbol("symbol->string", args[0])
    m.allocated += _string_bytes(text)
    return text


# Host procedures --------------------------------------------------------------------

MAX_SUFFIX_CHARS: Final = 64


def _check_suffix(suffix: str) -> None:
    """The rule of `hil.device.contract.program_publish_topic`, plus a length cap and `status`."""
    if (
        not suffix
        or len(suffix) > MAX_SUFFIX_CHARS
        or any(char in suffix for char in "+#\0")
        or "" in suffix.split("/")
    ):
        raise _runtime(
            f"publish: topic suffix {_clip(suffix)!r} must be 1 to {MAX_SUFFIX_CHARS} "
            "characters, without '+', '#', NUL or empty levels"
        )
    if suffix.split("/", 1)[0] == "status":
        raise _runtime("publish: programs/status is reserved for the runtime's own reports")


@_builtin("sensor", 1, 1)
def _sensor(m: _Machine, args: list[Value]) -> Value:
    quantity = _symbol("sensor", args[0])
    if quantity not in SENSOR_QUANTITIES:
        raise _runtime(
            f"sensor: unknown quantity '{_clip(quantity)} "
            "(expected 'temperature, 'humidity or 'pressure)"
        )
    with _host_call("sensor"):
        reading = m.host.sensor(quantity)
    if isinstance(reading, bool) or not isinstance(reading, int | float):
        raise _runtime(f"sensor: the host returned {reading!r} for {quantity}, not a number")
    if not math.isfinite(reading):
        raise _runtime(f"sensor: the host returned {reading!r} for {quantity}")
    return float(reading)


@_builtin("led", 1, 1)
def _led(m: _Machine, args: list[Value]) -> Value:
    state = args[0]
    if not isinstance(state, Symbol) or state.name not in ("on", "off"):
        raise _type_error("led", "'on or 'off", state)
    with _host_call("led"):
        m.host.led(state.name == "on")
    return UNSPECIFIED


@_builtin("publish", 2, 2)
def _publish(m: _Machine, args: list[Value]) -> Value:
    suffix = _string("publish", args[0])
    _check_suffix(suffix)
    payload = _to_json(args[1])
    with _host_call("publish"):
        m.host.publish(suffix, payload)
    return UNSPECIFIED


@_builtin("sleep", 1, 1)
def _sleep(m: _Machine, args: list[Value]) -> Value:
    ms = args[0]
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise _type_error("sleep", "a whole number of milliseconds (0 or more)", ms)
    m.sleep_request = ms  # the machine's loop awaits the host once this step is done
    return UNSPECIFIED


# --------------------------------------------------------------------------------------
# Values out: JSON for results and publish, written form for messages.


def _to_json(value: Value, depth: int = 0) -> JsonValue:
    if depth > MAX_NESTING:
        raise _runtime(f"value nested deeper than {MAX_NESTING} levels cannot become JSON")
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_JSON_INT_BITS:
            raise _runtime(f"integer of {value.bit_length()} bits is too large for JSON")
        return value
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, _Nil):
        return []
    if isinstance(value, _Pair):
        items: list[JsonValue] = []
        node: Value = value
        while isinstance(node, _Pair):
            items.append(_to_json(node.car, depth + 1))
            node = node.cdr
        if not isinstance(node, _Nil):
            return _write(value, None)  # an improper list has no array form
        return items
    if isinstance(value, _Closure | _Builtin):
        return "#<procedure>"
    return None


def _atom_text(value: Value) -> str:
    if isinstance(value, bool):
        return "#t" if value else "#f"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:
            return f"#<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _quote_string(value)
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, _Closure):
        return f"#<procedure {value.lam.name}>" if value.lam.name else "#<procedure>"
    if isinstance(value, _Builtin):
        return f"#<procedure {value.name}>"
    return repr(value)


def _write(value: Value, limit: int | None = 60) -> str:
    """Scheme's written form of `value`, cut at `limit` characters (no recursion)."""
    out: list[str] = []
    length = 0
    todo: list[tuple[Value, int] | str] = [(value, 0)]  # values to write, or literal text
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            text = item
        else:
            current, depth = item
            if not isinstance(current, _Pair):
                text = _atom_text(current)
            elif depth >= MAX_NESTING:
                text = "(...)"
            else:
                elements: list[Value] = []
                node: Value = current
                while isinstance(node, _Pair):
                    elements.append(node.car)
                    node = node.cdr
                todo.append(")")
                if not isinstance(node, _Nil):
                    todo.append((node, depth + 1))
                    todo.append(" . ")
                for index in reversed(range(len(elements))):
                    todo.append((elements[index], depth + 1))
                    if index:
                        todo.append(" ")
                text = "("
        out.append(text)
        length += len(text)
        if limit is not None and length > limit:
            return "".join(out)[:limit] + "..."
    return "".join(out)


# --------------------------------------------------------------------------------------
# Deployment: the gate in front of `programs/{id}/deploy`.

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SHA256_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_DEPLOY_FIELDS: Final = ("name", "source", "sha256")


@dataclass(frozen=True)
class Deployment:
    """A deploy request that passed every check; `sha256` is lower-case hex."""

    name: str
    source: str
    sha256: str


@dataclass(frozen=True)
class Rejection:
    """Why a deploy request was refused, worded for `programs/status` (state "rejected")."""

    reason: str


def parse_deployment(
    payload: bytes, *, check_hash: bool = True, max_bytes: int = MAX_PROGRAM_BYTES
) -> Deployment | Rejection:
    """Check a `programs/{id}/deploy` payload: JSON, fields, size, hash, then the source.

    Never raises: every defect becomes a `Rejection` with a reason a person can act on.
    ``check_hash=False`` is the `program_hash_unchecked` defect image's runtime;
    ``max_bytes`` one below the contract's 8 KiB is the `program_size_off_by_one` one.
    """
    if len(payload) > MAX_DEPLOY_PAYLOAD_BYTES:
        return Rejection(
            f"payload is {len(payload)} bytes, over the {MAX_DEPLOY_PAYLOAD_BYTES}-byte limit"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(f"malformed JSON: payload is not UTF-8 (byte {exc.start})")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejection(f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except RecursionError:
        return Rejection("malformed JSON: nested too deeply")
    if not isinstance(document, dict):
        return Rejection('payload must be a JSON object {"name", "source", "sha256"}')
    missing = [field for field in _DEPLOY_FIELDS if field not in document]
    if missing:
        return Rejection(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(field for field in document if field not in _DEPLOY_FIELDS)
    if unknown:
        return Rejection(f"unknown field(s): {', '.join(_clip(field) for field in unknown)}")
    for field in _DEPLOY_FIELDS:
        if not isinstance(document[field], str):
            kind = type(document[field]).__name__
            return Rejection(f"field '{field}' must be a string, not {_JSON_TYPES.get(kind, kind)}")
    name: str = document["name"]
    source: str = document["source"]
    sha256: str = document["sha256"]
    if not _NAME_RE.fullmatch(name):
        return Rejection(f"name {_clip(name, 40)!r} must be 1 to 32 letters, digits, '_' or '-'")
    try:
        encoded = source.encode("utf-8")
    except UnicodeEncodeError:
        return Rejection("source is not valid Unicode text (lone surrogate)")
    if len(encoded) > max_bytes:
        return Rejection(
            f"source too large: {len(encoded)} bytes, over the {max_bytes}-byte limit"
        )
    if not _SHA256_RE.fullmatch(sha256):
        return Rejection("sha256 must be 64 hexadecimal digits (the SHA-256 of the source)")
    digest = hashlib.sha256(encoded).hexdigest()
    if check_hash and digest != sha256.lower():
        return Rejection(f"hash mismatch: the source hashes to {digest}, not {sha256.lower()}")
    try:
        parse(source)
    except ProgramError as error:
        return Rejection(f"parse error: {error}")
    return Deployment(name=name, source=source, sha256=digest)


_JSON_TYPES: Final = {
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
    "list": "an array",
    "dict": "an object",
}
