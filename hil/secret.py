"""Secrets the framework holds (passwords, private keys), and files that hold them.

A `Secret` wraps the text and shows ``***`` wherever Python turns it into text: ``repr``
(so ``pytest -l`` / ``--showlocals``, Hypothesis' falsifying examples, dataclass reprs and
Allure parameters), ``str`` and ``format`` (so an f-string in a log line). The value comes
out only through `Secret.reveal`, called by the few consumers that must hand it on (paho's
``username_pw_set``, the NVS image, mosquitto's password file, ``ssl``'s key loading): a
search for ``reveal(`` finds every one. A Secret is no ``str``: code that forgot to reveal
fails loudly (``json.dumps``, ``bytes.encode``) instead of writing ``***`` where the value
belonged.

Files holding a secret are created with mode 0600 at open time (`write_private`), never
chmod-ed after: there is no moment when another user could read one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final, final

MASK: Final = "***"


@final
class Secret:
    """A password or private key: redacted text everywhere, the value by `reveal` only.

    Equal (and hashed) by value, also to a plain ``str`` holding the same text, so a
    comparison with a known value needs no reveal. True when the value is non-empty.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):  # wrapping twice is harmless
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value: only for the one place that must pass it on."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        if isinstance(other, str):
            return self._value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)  # equal to the str's hash, as equality with a str needs

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Pickled whole (a subprocess or xdist worker that receives one needs the value).
        return (Secret, (self._value,))


def secret(value: str | Secret) -> Secret:
    """``value`` as a Secret (a str wrapped, a Secret as it is)."""
    return value if isinstance(value, Secret) else Secret(value)


def optional_secret(value: str | Secret | None) -> Secret | None:
    """`secret`, with None kept as None (an unset password)."""
    return None if value is None else secret(value)


def reveal(value: str | Secret | None) -> str | None:
    """The text of a Secret, a str as it is, None as None: for consumers that accept either."""
    return value.reveal() if isinstance(value, Secret) else value


def write_private(path: Path, data: bytes | str | Secret) -> Path:
    """Write ``data`` to ``path`` as a new file of mode 0600 (whatever the umask), atomically.

    The file is made by mkstemp (0600, O_EXCL) beside ``path`` and renamed over it: an
    existing file (even a symlink) is replaced, never written through, so no earlier and
    laxer mode survives and a reader (mosquitto re-reading its password file on SIGHUP)
    never sees half a file.
    """
    raw = data.reveal() if isinstance(data, Secret) else data
    payload = raw.encode("utf-8") if isinstance(raw, str) else raw
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path


__all__ = ["MASK", "Secret", "optional_secret", "reveal", "secret", "write_private"]
