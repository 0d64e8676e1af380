"""Child processes that cannot outlive the test run that started them.

Boards, brokers and proxies run in their own process groups (so a Ctrl-C in the
terminal does not hit them before teardown does, and teardown can kill a whole group).
That alone would orphan them when pytest is SIGKILLed; Linux's parent-death signal makes
the kernel SIGTERM them the moment their parent dies, so the next run finds nothing left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: the child between fork and exec of a multi-threaded
# process (pytest with gRPC, paho, board threads) must not dlopen or allocate, only call.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGTERM this child when its parent process dies."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_group(proc: subprocess.Popen[str], *, grace_s: float) -> int | None:
    """Stop a child started with ``die_with_parent`` (its own process group): SIGTERM the
    group, SIGKILL it if the child lingers past ``grace_s``, then SIGKILL whatever of the
    group is left (grandchildren). Returns the child's exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
