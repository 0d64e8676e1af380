"""The compiler: `Expr` to nodes, checking the syntax of every special form on the way.

`parse` (read, then compile and throw the nodes away) is here rather than in the reader:
checking the syntax is compiling, and the compiler already depends on the reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

from hil.sim.firmware.programs.errors import ProgramError
from hil.sim.firmware.programs.interface import MAX_NESTING, Expr, Symbol
from hil.sim.firmware.programs.nodes import (
    _And,
    _App,
    _Const,
    _Define,
    _If,
    _Lambda,
    _Node,
    _Or,
    _Ref,
    _Seq,
    _Set,
)
from hil.sim.firmware.programs.reader import _ELSE, _clip, _Form, _Pos, _read, format_expr
from hil.sim.firmware.programs.values import NIL, UNSPECIFIED, Value, _Pair

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


def parse(source: str) -> tuple[Expr, ...]:
    """Read and syntax-check a program: malformed special forms are refused here, not at run."""
    program = _read(source)
    _compile_program(program)
    return program
