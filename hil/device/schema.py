"""A small schema language for JSON objects: field types, bounds, choices, nesting, and
rules between fields; problems come back as sentences a failure message can show.

Numbers on the wire: "integer" fields take JSON integers only; "number" fields take integers
or floats. A JSON ``true`` is never a number here, although Python's ``bool`` is an ``int``.
``hil.device.contract`` writes the contract's payloads in it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NoReturn


class JsonType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"  # integer or float
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY = "array"
    NULL = "null"


ANY_JSON: Final = frozenset(JsonType)


@dataclass(frozen=True)
class Field:
    """One payload field: accepted JSON types, whether it must be there, and its values.

    ``minimum``/``maximum`` bound numbers (inclusive); ``choices`` lists the allowed values
    (strings); ``schema`` describes an object value and ``items`` each element of an array.
    """

    types: frozenset[JsonType]
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    schema: Schema | None = None
    items: Field | None = None


@dataclass(frozen=True)
class Condition:
    """A rule between fields: when field ``when`` holds one of ``values`` (same JSON type),
    the fields in ``requires`` must be present, those in ``forbids`` absent, and each field
    of ``restricts`` must hold one of the listed values."""

    when: str
    values: tuple[object, ...]
    requires: tuple[str, ...] = ()
    forbids: tuple[str, ...] = ()
    restricts: Mapping[str, tuple[object, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Schema:
    """An object's fields; ``closed`` reports fields the schema does not name."""

    fields: Mapping[str, Field]
    closed: bool = True
    conditions: tuple[Condition, ...] = ()


def _json_type(value: object) -> JsonType | None:
    if value is None:
        return JsonType.NULL
    if isinstance(value, bool):
        return JsonType.BOOLEAN
    if isinstance(value, int):
        return JsonType.INTEGER
    if isinstance(value, float):
        return JsonType.NUMBER
    if isinstance(value, str):
        return JsonType.STRING
    if isinstance(value, Mapping):
        return JsonType.OBJECT
    if isinstance(value, list | tuple):
        return JsonType.ARRAY
    return None


def _type_ok(value: object, types: frozenset[JsonType]) -> bool:
    kind = _json_type(value)
    if kind is None:
        return False
    return kind in types or (kind is JsonType.INTEGER and JsonType.NUMBER in types)


def _same(a: object, b: object) -> bool:
    # 1 == True in Python; in JSON they are different values.
    return type(a) is type(b) and a == b


def _names(types: frozenset[JsonType]) -> str:
    return " or ".join(sorted(t.value for t in types))


def show(value: object, limit: int = 60) -> str:
    """A value in a problem message, as JSON, shortened."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_field(name: str, spec: Field, value: object, problems: list[str]) -> bool:
    """Append the problems of one value; True when it has none (nested ones included)."""
    before = len(problems)
    if not _type_ok(value, spec.types):
        kind = _json_type(value)
        got = kind.value if kind else type(value).__name__
        problems.append(f"field '{name}' must be {_names(spec.types)}, got {got}")
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            problems.append(f"field '{name}' is not a finite number ({value})")
            return False
        low, high = spec.minimum, spec.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"{'-∞' if low is None else f'{low:g}'}..{'∞' if high is None else f'{high:g}'}"
            )
            problems.append(f"field '{name}' = {show(value)} is outside {bounds}")
    if spec.choices is not None and isinstance(value, str) and value not in spec.choices:
        problems.append(f"field '{name}' = {show(value)} is not one of {', '.join(spec.choices)}")
    if spec.schema is not None and isinstance(value, Mapping):
        _check_object(spec.schema, value, problems, prefix=f"{name}.")
    if spec.items is not None and isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_field(f"{name}[{index}]", spec.items, item, problems)
    return len(problems) == before


def _check_object(
    schema: Schema, payload: Mapping[object, object], problems: list[str], *, prefix: str = ""
) -> None:
    # Rules only look at fields that passed their own checks, so one bad value is one problem.
    clean: dict[str, bool] = {}
    for name, spec in schema.fields.items():
        if name in payload:
            clean[name] = _check_field(prefix + name, spec, payload[name], problems)
        elif spec.required:
            problems.append(f"missing field '{prefix}{name}'")
    if schema.closed:
        for key in payload:
            if key not in schema.fields:
                problems.append(f"unknown field '{prefix}{key}'")
    for cond in schema.conditions:
        if not clean.get(cond.when):
            continue
        value = payload[cond.when]
        if not any(_same(value, v) for v in cond.values):
            continue
        because = f"when '{prefix}{cond.when}' is {show(value)}"
        for name in cond.requires:
            if name not in payload:
                problems.append(f"missing field '{prefix}{name}' {because}")
        for name in cond.forbids:
            if name in payload:
                problems.append(f"field '{prefix}{name}' must be absent {because}")
        for name, allowed in cond.restricts.items():
            if clean.get(name) and not any(_same(payload[name], v) for v in allowed):
                wanted = " or ".join(json.dumps(v) for v in allowed)
                problems.append(
                    f"field '{prefix}{name}' = {show(payload[name])} must be {wanted} {because}"
                )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def check_json(schema: Schema, payload: object) -> tuple[object, list[str]]:
    """The decoded payload and its problems against ``schema`` (empty when conforming).

    ``payload`` is a decoded JSON value or raw bytes/text, decoded here (NaN and Infinity
    are not JSON and are reported).
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as err:
            return None, [f"payload is not UTF-8: {err}"]
    if isinstance(payload, str):
        try:
            payload = json.loads(payload, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as err:
            return None, [f"payload is not valid JSON: {err}"]
    if not isinstance(payload, Mapping):
        kind_of = _json_type(payload)
        got = kind_of.value if kind_of else type(payload).__name__
        return payload, [f"payload must be a JSON object, got {got}"]
    problems: list[str] = []
    _check_object(schema, payload, problems)
    return payload, problems
