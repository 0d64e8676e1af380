"""The machine: steps compiled nodes and continuation frames under the budgets.

One turn of its loop is one step; it measures live memory (a small mark phase) once enough
has been allocated, and awaits `asyncio.sleep(0)` every `yield_every` steps so that a
program never starves telemetry and the watchdog. `run_program` compiles and runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hil.sim.firmware.programs.compiler import _compile_program
from hil.sim.firmware.programs.errors import ProgramError, _host_call, _runtime
from hil.sim.firmware.programs.frames import _Frame, _SeqFrame
from hil.sim.firmware.programs.interface import (
    DEFAULT_BUDGET,
    Budget,
    Expr,
    JsonValue,
    ProgramHost,
    Symbol,
)
from hil.sim.firmware.programs.nodes import _Node
from hil.sim.firmware.programs.printer import _to_json, _write
from hil.sim.firmware.programs.procedures import _BUILTINS
from hil.sim.firmware.programs.values import (
    _BINDING_BYTES,
    _CLOSURE_BYTES,
    _ENV_BYTES,
    _FRAME_BYTES,
    _PAIR_BYTES,
    _SMALL_INT_BITS,
    NIL,
    UNSPECIFIED,
    Value,
    _Builtin,
    _Closure,
    _Env,
    _int_bytes,
    _Nil,
    _Pair,
    _string_bytes,
    _Unspecified,
)


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
