"""The built-in procedures: arithmetic, lists, strings, and the host's (sensor, led, publish, sleep).

Each registers itself in `_BUILTINS`, the table the machine copies into a program's global
environment: the machine imports this module, never the reverse (procedures see the
machine only as the type of their first argument).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from hil.sim.firmware.programs.errors import ProgramError, _host_call, _runtime
from hil.sim.firmware.programs.interface import SENSOR_QUANTITIES, Symbol
from hil.sim.firmware.programs.printer import _to_json, _write
from hil.sim.firmware.programs.reader import _clip
from hil.sim.firmware.programs.values import (
    _PAIR_BYTES,
    _SMALL_INT_BITS,
    NIL,
    UNSPECIFIED,
    Value,
    _Builtin,
    _BuiltinFn,
    _int_bytes,
    _Pair,
    _string_bytes,
)

if TYPE_CHECKING:
    from hil.sim.firmware.programs.machine import _Machine


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


_Divide = Callable[[int | float, int | float], int | float]


@_builtin("/", 1, None)
def _divide_all(m: _Machine, args: list[Value]) -> Value:
    first = _number("/", args[0])
    # A host with `integer_division` set is the `program_integer_division` defect image's.
    divide: _Divide = _c_divide if getattr(m.host, "integer_division", False) else _divide
    if getattr(m.host, "division_by_zero_is_zero", False):  # the program_division_by_zero_is_zero defect's
        divide = _zero_when_dividing_by_zero(divide)
    if len(args) == 1:
        return _result(m, "/", divide(1, first))
    for arg in args[1:]:
        first = divide(first, _number("/", arg))
    return _result(m, "/", first)


def _zero_when_dividing_by_zero(divide: _Divide) -> _Divide:
    """``divide``, except that a zero divisor gives 0 ("avoid the trap")."""

    def divided(a: int | float, b: int | float) -> int | float:
        return 0 if b == 0 else divide(a, b)

    return divided


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
        if getattr(m.host, "compare_first_two", False):  # the program_compare_first_two defect's host
            numbers = numbers[:2]
        test = holds
        if name == ">" and getattr(m.host, "gt_as_ge", False):  # the program_gt_as_ge defect's host
            test = operator.ge
        return all(test(a, b) for a, b in itertools.pairwise(numbers))

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
    if not getattr(m.host, "topics_unchecked", False):  # set: the program_topic_unchecked defect image's host
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
