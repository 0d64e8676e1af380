"""What the program runtime shares with its users: expressions, budgets, the host, limits.

Everything here is public (re-exported by the package) and depends on nothing else in
it, so every other module of the runtime may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
Expr: TypeAlias = "bool | int | float | str | Symbol | tuple[Expr, ...]"
"""What `parse` returns: literals, symbols and lists (as tuples). A `str` is a string literal."""

MAX_PROGRAM_BYTES: Final = 8192
"""Largest accepted source, in UTF-8 bytes (the contract's 8 KiB)."""

MAX_DEPLOY_PAYLOAD_BYTES: Final = 64 * 1024
"""Largest deploy payload even looked at: an 8 KiB source, JSON-escaped at worst, fits."""

MAX_NESTING: Final = 64
"""Deepest list nesting in source, and in values converted to JSON or printed."""

SENSOR_QUANTITIES: Final = ("temperature", "humidity", "pressure")


@dataclass(frozen=True, slots=True)
class Symbol:
    """A symbol, in code (a variable name) or as data (`'temperature`)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Budget:
    """What one run may spend: machine steps, and bytes of live memory (approximate)."""

    steps: int = 100_000
    memory_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.steps < 0 or self.memory_bytes < 0:
            raise ValueError(f"budget must not be negative: {self}")


DEFAULT_BUDGET: Final = Budget()


class ProgramHost(Protocol):
    """What a program may touch on the device: the sensor, the LED, MQTT, time.

    A method may raise `ProgramError` (kind "runtime") to fail the program with its own
    message; any other exception is turned into a runtime error naming the procedure.
    """

    def sensor(self, quantity: str) -> float: ...

    def led(self, on: bool) -> None: ...

    def publish(self, suffix: str, value: JsonValue) -> None: ...

    async def sleep(self, ms: int) -> None: ...
