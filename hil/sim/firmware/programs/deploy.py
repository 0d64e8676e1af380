"""Deployment: the gate in front of `programs/{id}/deploy`.

`parse_deployment` checks a payload (JSON, fields, size, hash, then the source through
`parse`) and never raises: every defect becomes a `Rejection` worded for `programs/status`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Final

from hil.sim.firmware.programs.compiler import parse
from hil.sim.firmware.programs.errors import ProgramError
from hil.sim.firmware.programs.interface import MAX_DEPLOY_PAYLOAD_BYTES, MAX_PROGRAM_BYTES
from hil.sim.firmware.programs.reader import _clip

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
    """Why a deploy request was refused, worded for `programs/status` (state "rejected").

    `name` is the request's own name when it had a usable one (a string that passes the
    name rule), so a backend can tell which deployment was refused; None otherwise
    (malformed JSON, not an object, no name, a name that is not one).
    """

    reason: str
    name: str | None = None


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
    given = document.get("name")
    # From here on a refusal names the deployment, when it has a usable name.
    usable = given if isinstance(given, str) and _NAME_RE.fullmatch(given) else None
    missing = [field for field in _DEPLOY_FIELDS if field not in document]
    if missing:
        return Rejection(f"missing field(s): {', '.join(missing)}", usable)
    unknown = sorted(field for field in document if field not in _DEPLOY_FIELDS)
    if unknown:
        return Rejection(f"unknown field(s): {', '.join(_clip(field) for field in unknown)}", usable)
    for field in _DEPLOY_FIELDS:
        if not isinstance(document[field], str):
            kind = type(document[field]).__name__
            return Rejection(f"field '{field}' must be a string, not {_JSON_TYPES.get(kind, kind)}", usable)
    name: str = document["name"]
    source: str = document["source"]
    sha256: str = document["sha256"]
    if usable is None:
        return Rejection(f"name {_clip(name, 40)!r} must be 1 to 32 letters, digits, '_' or '-'")
    try:
        encoded = source.encode("utf-8")
    except UnicodeEncodeError:
        return Rejection("source is not valid Unicode text (lone surrogate)", name)
    if len(encoded) > max_bytes:
        return Rejection(
            f"source too large: {len(encoded)} bytes, over the {max_bytes}-byte limit", name
        )
    if not _SHA256_RE.fullmatch(sha256):
        return Rejection("sha256 must be 64 hexadecimal digits (the SHA-256 of the source)", name)
    digest = hashlib.sha256(encoded).hexdigest()
    if check_hash and digest != sha256.lower():
        return Rejection(f"hash mismatch: the source hashes to {digest}, not {sha256.lower()}", name)
    try:
        parse(source)
    except ProgramError as error:
        return Rejection(f"parse error: {error}", name)
    return Deployment(name=name, source=source, sha256=digest)


_JSON_TYPES: Final = {
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
    "list": "an array",
    "dict": "an object",
}
