"""A JSON Schema (2020-12) validator for the keywords hil's committed schemas use, and no
more: a schema that uses any other keyword is refused, so a keyword this does not check
can never pass unchecked. (jsonschema is not a dependency; this is what the tests need.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples"})
CHECKED = frozenset(
    {"$defs", "$ref", "type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum", "pattern", "format"}
)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object in ``schema``, itself included."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            yield from subschemas(sub)
    for key in ("items", "additionalProperties"):
        yield from subschemas(schema.get(key))


def unsupported(schema: dict[str, Any]) -> set[str]:
    return {key for sub in subschemas(schema) for key in sub} - ANNOTATIONS - CHECKED


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with ``instance``, one line per error with its JSON path ([] when valid)."""
    bad = unsupported(schema)
    if bad:
        raise ValueError(f"the schema uses keywords this validator does not check: {sorted(bad)}")
    return list(_errors(instance, schema, schema, "$"))


def _errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> Iterator[str]:
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"{path}: only local #/$defs/ references are supported, not {ref!r}")
        yield from _errors(value, root["$defs"][ref.removeprefix("#/$defs/")], root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[t](value) for t in types):
            yield f"{path}: {value!r} is not of type {' or '.join(types)}"
            return
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        yield f"{path}: {value!r} is not {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, int | float) and not isinstance(value, bool) and "minimum" in schema and value < schema["minimum"]:
        yield f"{path}: {value!r} is less than {schema['minimum']}"
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"{path}: {value!r} does not match {schema['pattern']!r}"
        if schema.get("format") == "date-time" and not _is_date_time(value):
            yield f"{path}: {value!r} is not an RFC 3339 date-time"
        elif "format" in schema and schema["format"] != "date-time":
            raise ValueError(f"{path}: format {schema['format']!r} is not supported")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                yield f"{path}: {key!r} is required"
        for key, item in value.items():
            if key in properties:
                yield from _errors(item, properties[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                yield f"{path}: {key!r} is not allowed (additionalProperties is false)"
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from _errors(item, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _errors(item, schema["items"], root, f"{path}[{index}]")


def _is_date_time(text: str) -> bool:
    if not RFC3339.match(text):
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
