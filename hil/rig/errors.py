"""The inventory's errors: a rig file that is wrong (every `Problem` of every file at
once), a rig asked for that matches nothing, and a rig that cannot be had; and how their
messages propose the fix (`suggest`: the closest known value for a typo).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hil.errors import InfrastructureError, UsageError


class RigError(Exception):
    """Base of the inventory's errors (rig files, selection, reservation)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a rig file: where (file, line, table, key) and what to do."""

    path: Path
    message: str
    line: int | None = None
    table: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        if self.key is None:
            return f"{where}: {self.message}"
        field_name = f"[{self.table}] {self.key}" if self.table else self.key
        return f"{where}: {field_name}: {self.message}"


class RigConfigError(RigError, UsageError):
    """The inventory is invalid; ``problems`` lists every problem found, each with its fix."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems in the rig inventory:\n" + "\n".join(
                f"  {problem}" for problem in self.problems
            )
        super().__init__(text)


class ReservationError(RigError, InfrastructureError):
    """A rig could not be reserved (all are taken, the lock dir is unusable); one that
    matches nothing is a usage error (`UnknownRig`)."""


class UnknownRig(ReservationError, UsageError):
    """No rig in the inventory matches the name or tag asked for."""


class NoRigAvailable(ReservationError):
    """Rigs match, but every one of them is held by someone else."""


def suggest(value: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == value.lower()]
    listing = f"use one of {or_list(known)}"
    return f"did you mean {close[0]!r}? ({listing})" if close else listing


def or_list(items: Iterable[str]) -> str:
    quoted = [f'"{item}"' for item in items]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)
