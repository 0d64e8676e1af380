"""Compare an environment's `pip freeze` with a lock's pins: exit 1 naming every difference.

Usage: python .ci/lockcheck.py LOCK FREEZE_FILE  (FREEZE_FILE: `pip freeze` output, or - for stdin)
The project itself (installed editable) is not in the lock and is ignored; so are pins
whose environment marker does not hold here (the lock is universal)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def lock_pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(name)] = version
    return pins


def frozen(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith(("#", "-e")):
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
    return found


def main() -> int:
    lock, freeze = Path(sys.argv[1]), sys.argv[2]
    want = lock_pins(lock.read_text())
    have = frozen(sys.stdin.read() if freeze == "-" else Path(freeze).read_text())
    have.pop("hil", None)
    problems = [f"{n}: locked {v}, installed {have.get(n, 'nothing')}" for n, v in sorted(want.items()) if have.get(n) != v]
    problems += [f"{n}: installed {v}, not in the lock" for n, v in sorted(have.items()) if n not in want]
    if problems:
        print(f"the environment differs from {lock}:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"lockcheck: the environment matches {lock} ({len(want)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
