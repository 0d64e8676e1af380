"""Continuation frames: what to do with a value once it is computed.

The machine keeps them in a list, not on the Python stack, so a program's recursion grows
that list (weighed by the memory budget) and tail calls leave no frame behind. Frames are
never shared (there is no call/cc), so a frame may update itself and push itself back.
The nodes that push frames, and the machine, are imported for the type checker alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from hil.sim.firmware.programs.errors import _runtime
from hil.sim.firmware.programs.reader import _Pos
from hil.sim.firmware.programs.values import (
    _BINDING_BYTES,
    _FRAME_BYTES,
    _SLOT_BYTES,
    UNSPECIFIED,
    Value,
    _Env,
)

if TYPE_CHECKING:
    from hil.sim.firmware.programs.machine import _Machine
    from hil.sim.firmware.programs.nodes import _App, _Define, _If, _Node, _Set


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
