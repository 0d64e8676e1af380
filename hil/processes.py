"""Child processes that cannot outlive the test run that started them.

Boards, brokers and proxies run in their own process groups (so a Ctrl-C in the
terminal does not hit them before teardown does, and teardown can kill a whole group).
That alone would orphan them when pytest is SIGKILLed; Linux's parent-death signal makes
the kernel SIGTERM them the moment their parent dies, so the next run finds nothing left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGTERM this child when its parent process dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
