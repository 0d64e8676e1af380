"""`ProgramError`, the one exception a program's failure becomes, and two ways to make one.

`_host_call` lives here, not beside the machine that also uses it, so that the procedures
can wrap their host calls without importing the machine (which imports them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, TypeAlias

ErrorKind: TypeAlias = Literal["parse", "step_budget", "memory_budget", "runtime"]


class ProgramError(Exception):
    """Why a program was refused or stopped; `kind` says which rule or budget it broke.

    `line`/`column` (1-based) point at the offending source when it is known: always for
    reader errors, and for syntax and runtime errors inside a list read by `parse`.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        return f"line {self.line}, column {self.column}: {self.message}"


def _runtime(message: str) -> ProgramError:
    return ProgramError("runtime", message)


@contextlib.contextmanager
def _host_call(who: str) -> Iterator[None]:
    try:
        yield
    except ProgramError:
        raise
    except Exception as exc:
        raise _runtime(f"{who}: {type(exc).__name__}: {exc}") from exc
