"""The program runtime of the Steel devices (DEVICE_CONTRACT §9): a small Scheme under budgets.

The language: integers (of any size, charged by it), floats, strings, booleans (`#t`,
`#f`), symbols and lists (of pairs; no dotted pairs in source), and procedures. Special
forms: `quote` (and `'`), `define`, `set!`, `lambda` (fixed or rest parameters), `let`
(and named `let`), `let*`, `if`, `begin`, `and`, `or`, `cond` (with `else`, without
`=>`). Procedures: `+ - * /`, `quotient remainder modulo`, `= < > <= >=`, `abs min
max`, `not`, `list cons car cdr null? pair? length`, `eq? equal?`, `string-append
number->string symbol->string`, and the host's: `(sensor 'temperature|'humidity|
'pressure)`, `(led 'on|'off)`, `(publish "suffix" value)` and `(sleep ms)`. No call/cc,
no macros, no vectors or characters.

Programs arrive over MQTT as text written by someone else, so everything here treats its
input as hostile:

- the reader and the syntax check never nest deeper than `MAX_NESTING`, so no source text
  can exhaust the Python stack;
- the evaluator is an explicit-stack machine (compiled nodes plus a list of continuation
  frames), so a program's own recursion grows a Python list, never the Python stack, and
  tail calls run in constant space;
- every turn of the machine's loop is one step of the step budget; the environment frames,
  continuation frames, pairs, closures, strings and big integers that are still reachable
  are what the memory budget weighs (measured by a small mark phase whenever enough has
  been allocated since the last measurement, so garbage does not count);
- every `yield_every` steps the loop awaits `asyncio.sleep(0)`: on the device a program
  shares the CPU with telemetry and the watchdog, and must never starve them.

Pipeline: `parse_deployment` gates a `programs/{id}/deploy` payload, `parse` reads and
syntax-checks the source (errors carry line and column), `run_program` compiles the
forms once and steps the machine against a `ProgramHost`.

Layout, each module importing only those above it. Type annotations alone look further
down (under `TYPE_CHECKING`): at the machine that nodes, frames and procedures are handed,
at the nodes that frames hold, and at a closure's `_Lambda`:

- `interface`: `Expr`, `Symbol`, `Budget`, `ProgramHost`, `JsonValue` and the limits;
- `errors`: `ProgramError` and the helpers that make one;
- `reader`: text to `Expr` (`format_expr` back);
- `values`: runtime values and the sizes the memory budget charges;
- `printer`: values to JSON and to their written form;
- `frames`: continuation frames;
- `nodes`: compiled nodes;
- `compiler`: `Expr` to nodes, with the syntax check (`parse`);
- `procedures`: the built-in procedures and their table;
- `machine`: the stepping machine and `run_program`;
- `deploy`: `parse_deployment`.
"""

from hil.sim.firmware.programs.compiler import parse
from hil.sim.firmware.programs.deploy import Deployment, Rejection, parse_deployment
from hil.sim.firmware.programs.errors import ErrorKind, ProgramError
from hil.sim.firmware.programs.interface import (
    DEFAULT_BUDGET,
    MAX_DEPLOY_PAYLOAD_BYTES,
    MAX_NESTING,
    MAX_PROGRAM_BYTES,
    SENSOR_QUANTITIES,
    Budget,
    Expr,
    JsonValue,
    ProgramHost,
    Symbol,
)
from hil.sim.firmware.programs.machine import run_program
from hil.sim.firmware.programs.procedures import MAX_SUFFIX_CHARS
from hil.sim.firmware.programs.reader import format_expr

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_DEPLOY_PAYLOAD_BYTES",
    "MAX_NESTING",
    "MAX_PROGRAM_BYTES",
    "MAX_SUFFIX_CHARS",
    "SENSOR_QUANTITIES",
    "Budget",
    "Deployment",
    "ErrorKind",
    "Expr",
    "JsonValue",
    "ProgramError",
    "ProgramHost",
    "Rejection",
    "Symbol",
    "format_expr",
    "parse",
    "parse_deployment",
    "run_program",
]
