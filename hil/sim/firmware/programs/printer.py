"""Values out: JSON for a program's result and for `publish`, written form for messages.

Neither recurses without bound: JSON stops at `MAX_NESTING`, the written form uses its own
stack and is cut at a length.
"""

from __future__ import annotations

from typing import Final

from hil.sim.firmware.programs.errors import _runtime
from hil.sim.firmware.programs.interface import MAX_NESTING, JsonValue, Symbol
from hil.sim.firmware.programs.reader import _quote_string
from hil.sim.firmware.programs.values import Value, _Builtin, _Closure, _Nil, _Pair

_MAX_JSON_INT_BITS: Final = 4096


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
