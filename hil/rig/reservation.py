"""Reserving a rig for a session, and who holds each.

Reservation takes an OS file lock per rig (``flock`` through filelock) in a lock
directory shared by everyone on the host, so the kernel releases it when the holder dies,
however it dies. Who holds a rig is recorded next to the lock; a record whose lock is free
is stale (its process died) and is cleared.

A pytest-xdist worker holds one rig for its whole session, so ``-n auto`` starts one
worker per matching rig that is free (`auto_workers`).

A person or a CI job holds a rig beyond one process with a *lease* (``hil rigs lock NAME
--for 2h``): a record next to the lock, ``NAME.lease.json``, with who took it and until
when. No process stays behind to hold a flock; instead every reservation honours a live
lease of another user or host (the leaseholder's own sessions may use the rig), and a lease
past its time is ignored and cleared, so a forgotten or cancelled job's rig comes back by
itself. ``hil rigs release NAME`` ends one early.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from filelock import FileLock, Timeout

from hil.rig.errors import NoRigAvailable, ReservationError
from hil.rig.model import RIG_NAME_RE, Rig
from hil.rig.selection import select_rigs

LOCK_DIR_ENV = "HIL_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("~/.cache/hil/locks")
POLL_INTERVAL_S = 0.1
#: How long a holder may take between taking the lock and writing its record (a few ms
#: normally; a loaded CI host can stall it). Only a message waits on this, never a reservation.
RECORD_GRACE_S = 2.0
WAIT_POLL_S = 1.0  # `hil rigs wait`: how soon a rig let go is seen (a person's scale)
DEFAULT_LEASE_S = 2 * 3600.0  # `hil rigs lock` without --for


@dataclass(frozen=True)
class Holder:
    """Who holds a rig: enough to find the process, the xdist worker and the CI job."""

    pid: int
    host: str
    user: str
    since: float
    worker: str | None = None
    ci_job: str | None = None
    until: float | None = None  # a lease's end (`hil rigs lock`); None: while the process lives

    @classmethod
    def current(cls, env: Mapping[str, str] | None = None) -> Holder:
        env = os.environ if env is None else env
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            user=user,
            since=time.time(),
            worker=env.get("PYTEST_XDIST_WORKER") or None,
            ci_job=_ci_job(env),
        )

    @classmethod
    def unrecorded(cls) -> Holder:
        """A holder whose lock is held but whose record is not (yet) written."""
        return cls(pid=0, host="", user="", since=0.0)

    def describe(self) -> str:
        if self.pid == 0:
            return "an unrecorded holder (the lock is held, its record not written yet)"
        if self.until is not None:  # a lease: the process that took it has gone
            parts = [f"{self.user} on {self.host} (hil rigs lock, pid {self.pid})"]
        else:
            parts = [f"pid {self.pid} on {self.host} ({self.user})"]
        if self.worker:
            parts.append(f"xdist worker {self.worker}")
        if self.ci_job:
            parts.append(f"CI job {self.ci_job}")
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        if self.until is not None:
            parts.append("until " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.until)) + " (a lease)")
        return ", ".join(parts)

    def same_owner(self, other: Holder) -> bool:
        """The same person or job: a lease lets its own user's sessions on its host in."""
        return (self.user, self.host) == (other.user, other.host)

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "host": self.host,
                "user": self.user,
                "since": self.since,
                "worker": self.worker,
                "ci_job": self.ci_job,
                "until": self.until,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Holder:
        data = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            user=str(data["user"]),
            since=float(data["since"]),
            worker=data.get("worker"),
            ci_job=data.get("ci_job"),
            until=None if data.get("until") is None else float(data["until"]),
        )


def _ci_job(env: Mapping[str, str]) -> str | None:
    """The CI job this process runs in, as a link when the CI says where it is."""
    if env.get("CI_JOB_ID"):  # GitLab
        return env.get("CI_JOB_URL") or env["CI_JOB_ID"]
    if env.get("GITHUB_RUN_ID"):  # GitHub Actions
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        repo = env.get("GITHUB_REPOSITORY", "")
        job = env.get("GITHUB_JOB", "")
        url = (
            f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}" if repo else env["GITHUB_RUN_ID"]
        )
        return f"{url} ({job})" if job else url
    if env.get("BUILD_URL") or env.get("BUILD_TAG"):  # Jenkins
        return env.get("BUILD_URL") or env.get("BUILD_TAG")
    if env.get("BUILDKITE_JOB_ID"):
        return env["BUILDKITE_JOB_ID"]
    return None


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$HIL_LOCK_DIR``, else ``~/.cache/hil/locks``: shared by every session on this host."""
    env = os.environ if env is None else env
    configured = env.get(LOCK_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_LOCK_DIR.expanduser()


class ReservedRig:
    """A rig held by this process until ``release()`` (or the end of a ``with`` block, or death)."""

    def __init__(
        self, rig: Rig, holder: Holder, lock: FileLock, holder_file: Path, stale: Holder | None
    ) -> None:
        self.rig = rig
        self.holder = holder
        #: The record of an earlier holder that died without releasing (cleared when taken).
        self.stale_holder = stale
        self._lock = lock
        self._holder_file = holder_file

    @property
    def released(self) -> bool:
        return not self._lock.is_locked

    def release(self) -> None:
        """Give the rig back. Idempotent."""
        if not self._lock.is_locked:
            return
        with contextlib.suppress(FileNotFoundError):
            self._holder_file.unlink()  # while still locked: nobody else can have written it
        self._lock.release(force=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<ReservedRig {self.rig.name} {state} by pid {self.holder.pid}>"


class Reservation:
    """Rig reservation through one lock directory (an OS file lock per rig)."""

    def __init__(self, lock_dir: Path | str | None = None) -> None:
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir is not None else default_lock_dir()

    def lock_file(self, rig: Rig | str) -> Path:
        return self.lock_dir / f"{_rig_name(rig)}.lock"

    def holder_file(self, rig: Rig | str) -> Path:
        return self.lock_dir / f"{_rig_name(rig)}.holder.json"

    def reserve(
        self,
        rigs: Sequence[Rig],
        *,
        name: str | None = None,
        tag: str | None = None,
        timeout: float = 0,
    ) -> ReservedRig:
        """Take the first free rig matching ``name`` (rig or pool) and ``tag``.

        With neither, the virtual rigs match. ``timeout`` is how long to wait for one to
        come free (locks on several files cannot be waited on together, so this polls).
        """
        candidates = select_rigs(rigs, name=name, tag=tag)
        self._ensure_dir()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            for rig in candidates:
                taken = self._try(rig)
                if taken is not None:
                    return taken
            if time.monotonic() >= deadline:
                break
            time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        held = "".join(f"\n  {rig.name} held by {self._holder_of_taken(rig).describe()}" for rig in candidates)
        wanted = " and ".join(
            part
            for part in (f"name {name!r}" if name else "", f"tag {tag!r}" if tag else "")
            if part
        )
        raise NoRigAvailable(
            f"every rig matching {wanted or 'the default (the virtual rigs)'} is taken "
            f"(waited {timeout:g} s):{held}\n"
            f"Locks are in {self.lock_dir}. Reserve with a timeout, pick another rig, or stop the holder."
        )

    def who_holds(self, rig: Rig | str) -> Holder | None:
        """The live holder of ``rig``, or None if it is free (a stale record is cleared).

        The lock itself is the truth, so this probes it with a non-blocking acquire; a
        ``reserve`` without timeout racing that instant may skip the rig once.
        """
        self._ensure_dir()
        lock = self._lock(rig)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return self._holder_of_held(rig)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.holder_file(rig).unlink()  # its process died holding the rig
            return self._live_lease(rig, clear=True)
        finally:
            lock.release(force=True)

    # -- leases: `hil rigs lock | release | wait`
    def lease_file(self, rig: Rig | str) -> Path:
        return self.lock_dir / f"{_rig_name(rig)}.lease.json"

    def lock(self, rig: Rig | str, duration_s: float, *, holder: Holder | None = None) -> Holder:
        """Lease ``rig`` for ``duration_s`` from now to ``holder`` (default: this user on this
        host): other users' and hosts' reservations are refused until it ends or is released.
        Taking it again (the same owner) extends it. Raises `NoRigAvailable` naming the
        holder when a session or someone else's lease has it."""
        if duration_s <= 0:
            raise ValueError(f"a lease of {duration_s:g} s ends before it starts")
        self._ensure_dir()
        owner = holder or Holder.current()
        lock = self._lock(rig)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise NoRigAvailable(
                f"{_rig_name(rig)} is held by {self._holder_of_held(rig).describe()}; "
                f"wait for it with: hil rigs wait {_rig_name(rig)}"
            ) from None
        try:  # under the flock: no session takes it between the check and the record
            current = self._live_lease(rig, clear=True)
            if current is not None and not current.same_owner(owner):
                raise NoRigAvailable(
                    f"{_rig_name(rig)} is held by {current.describe()}; wait for it with: hil rigs wait {_rig_name(rig)}"
                )
            lease = replace(owner, until=time.time() + duration_s)
            _write_atomically(self.lease_file(rig), lease.to_json() + "\n")
            return lease
        finally:
            lock.release(force=True)

    def release_lease(self, rig: Rig | str, *, anyone: bool = False) -> Holder | None:
        """End the live lease of ``rig`` (None: there was none). Only its owner's, unless
        ``anyone``: another's is `ReservationError`, naming it."""
        self._ensure_dir()
        lease = self._live_lease(rig)
        if lease is None:
            return None
        if not anyone and not lease.same_owner(Holder.current()):
            raise ReservationError(
                f"{_rig_name(rig)} is leased by {lease.describe()}, not by you; "
                "they release it, or it ends by itself (--force releases it anyway)"
            )
        with contextlib.suppress(FileNotFoundError):
            self.lease_file(rig).unlink()
        return lease

    def wait_free(self, rig: Rig | str, timeout: float | None) -> Holder | None:
        """Wait until no session and no other owner's lease holds ``rig``; None when it is
        free, else (``timeout`` s passed) who still holds it. A lease ending ends the wait."""
        me = Holder.current()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            holder = self.who_holds(rig)
            if holder is None or (holder.until is not None and holder.same_owner(me)):
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return holder
            left = None if deadline is None else deadline - time.monotonic()
            time.sleep(WAIT_POLL_S if left is None else max(0.0, min(WAIT_POLL_S, left)))

    def _live_lease(self, rig: Rig | str, *, clear: bool = False) -> Holder | None:
        """The lease on ``rig`` if it has not ended; an ended one is cleared when ``clear``
        (by a caller holding the rig's flock, so no new lease is written meanwhile)."""
        path = self.lease_file(rig)
        try:
            lease = Holder.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            lease = None  # unreadable: not a lease anyone can be told about
        if lease is not None and lease.until is not None and lease.until > time.time():
            return lease
        if clear:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None

    def _holder_of_taken(self, rig: Rig | str) -> Holder:
        """Who keeps ``rig`` from a reservation: someone else's lease, else the session holding its lock."""
        lease = self._live_lease(rig)
        if lease is not None and not lease.same_owner(Holder.current()):
            return lease
        return self._holder_of_held(rig)

    # -- internals
    def _ensure_dir(self) -> None:
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReservationError(
                f"cannot create the rig lock directory {self.lock_dir}: {exc.strerror}; "
                f"set {LOCK_DIR_ENV} to a writable local directory"
            ) from exc

    def _lock(self, rig: Rig | str) -> FileLock:
        # flock (kernel-released when the holder dies); never the soft fallback, whose
        # marker file would outlive a killed holder.
        return FileLock(
            self.lock_file(rig), thread_local=False, fallback_to_soft=False, preserve_lock_file=True
        )

    def _try(self, rig: Rig) -> ReservedRig | None:
        lock = self._lock(rig)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        except OSError as exc:
            raise ReservationError(
                f"cannot lock {self.lock_file(rig)}: {exc}; "
                f"set {LOCK_DIR_ENV} to a local directory that supports flock"
            ) from exc
        try:
            holder = Holder.current()
            lease = self._live_lease(rig, clear=True)
            if lease is not None and not lease.same_owner(holder):
                lock.release(force=True)  # leased to someone else: taken, as if its lock were
                return None
            stale = self._recorded_holder(rig)
            path = self.holder_file(rig)
            _write_atomically(path, holder.to_json() + "\n")
        except BaseException:
            lock.release(force=True)
            raise
        return ReservedRig(rig, holder, lock, path, stale)

    def _holder_of_held(self, rig: Rig | str) -> Holder:
        """The record of a rig whose lock is held: the holder writes it just after taking
        the lock, so a reader racing that instant waits for it rather than say "unrecorded"."""
        deadline = time.monotonic() + RECORD_GRACE_S
        while True:
            recorded = self._recorded_holder(rig)
            if recorded is not None:
                return recorded
            if time.monotonic() >= deadline:
                return Holder.unrecorded()
            time.sleep(0.02)

    def _recorded_holder(self, rig: Rig | str) -> Holder | None:
        try:
            return Holder.from_json(self.holder_file(rig).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _rig_name(rig: Rig | str) -> str:
    name = rig.name if isinstance(rig, Rig) else rig
    if not RIG_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a rig name")
    return name


def reserve(
    rigs: Sequence[Rig],
    *,
    name: str | None = None,
    tag: str | None = None,
    timeout: float = 0,
    lock_dir: Path | str | None = None,
) -> ReservedRig:
    """Reserve a rig through the default lock directory (see ``Reservation.reserve``)."""
    return Reservation(lock_dir).reserve(rigs, name=name, tag=tag, timeout=timeout)


def who_holds(rig: Rig | str, *, lock_dir: Path | str | None = None) -> Holder | None:
    """The live holder of ``rig`` in the default lock directory, or None."""
    return Reservation(lock_dir).who_holds(rig)


def auto_workers(
    rigs: Sequence[Rig],
    *,
    name: str | None = None,
    tag: str | None = None,
    cpus: int = 1,
    lock_dir: Path | str | None = None,
) -> int:
    """How many pytest-xdist workers ``-n auto`` should start: one per matching rig that
    no other session holds, since each worker holds one rig for its whole session.

    Virtual rigs are processes on this host: more of them than cores only makes each
    slower (and their timing less like a board's), so they count up to ``cpus``.
    """
    free = [
        rig
        for rig in select_rigs(rigs, name=name, tag=tag)
        if who_holds(rig, lock_dir=lock_dir) is None
    ]
    real = sum(1 for rig in free if not rig.is_virtual)
    virtual = min(len(free) - real, max(cpus, 1))
    return max(real + virtual, 1)
