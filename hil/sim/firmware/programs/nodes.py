"""Compiled nodes: what the compiler makes of an expression, and what the machine steps.

Each `eval` either produces `m.value` (and sets `m.node = None`) or names the next node to
evaluate, pushing a continuation frame (`frames`) if it needs the result back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hil.sim.firmware.programs.errors import _runtime
from hil.sim.firmware.programs.frames import (
    _AndFrame,
    _ArgsFrame,
    _DefineFrame,
    _IfFrame,
    _OrFrame,
    _SeqFrame,
    _SetFrame,
)
from hil.sim.firmware.programs.reader import _Pos
from hil.sim.firmware.programs.values import _CLOSURE_BYTES, _FRAME_BYTES, Value, _Closure, _Env

if TYPE_CHECKING:
    from hil.sim.firmware.programs.machine import _Machine


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
