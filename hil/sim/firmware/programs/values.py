"""Runtime values (pairs, closures, built-in procedures, environments) and their sizes.

The sizes are what the memory budget charges for each value, approximately as on a 32-bit
heap. A closure holds a compiled `_Lambda` and a built-in takes the machine, both only as
types here (imported for the type checker alone: both modules import this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from hil.sim.firmware.programs.interface import Symbol

if TYPE_CHECKING:
    from hil.sim.firmware.programs.machine import _Machine
    from hil.sim.firmware.programs.nodes import _Lambda


_PAIR_BYTES: Final = 12
_ENV_BYTES: Final = 12
_BINDING_BYTES: Final = 8
_CLOSURE_BYTES: Final = 12
_FRAME_BYTES: Final = 12
_SLOT_BYTES: Final = 4
_STRING_BYTES: Final = 8
_SMALL_INT_BITS: Final = 62
"""Integers up to this size are immediate; larger ones are charged by their size."""


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


def _int_bytes(value: int) -> int:
    return _STRING_BYTES + (value.bit_length() + 7) // 8


def _string_bytes(text: str) -> int:
    return _STRING_BYTES + len(text)
