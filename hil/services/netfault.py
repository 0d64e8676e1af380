"""A fault-injecting TCP proxy between a device and its broker.

There is no ``tc netem`` on the lab machines and no Toxiproxy server to install (see
LAB_NOTES.md), so network faults come from this small asyncio proxy: the device is
provisioned with the proxy's address instead of the broker's, and a test degrades the
path while the firmware runs.

The proxy runs its own event loop in a background thread, so a synchronous pytest test
drives it with plain method calls. Every control call returns once the fault is in
force (``reset_all()`` returns after the resets went out), so the next line of a test
can observe the effect without sleeping.

How each fault looks from the endpoints, and why:

* **latency** delays every chunk by the same amount in each direction, pipelined (a
  delayed chunk does not hold back the reading of the next one) and in order.
* **throttle** paces each direction of each connection to a byte rate.
* **blackhole** forwards nothing: bytes already read are *held*, reading stops (so the
  sender's TCP window fills as on a dead path) and new connections are accepted but get
  no upstream connection: to the device they look connected and silent. Lifting it
  delivers what was held, as TCP retransmission would after a real outage.
* **partition(seconds)** refuses new connections (the listening socket is closed, so a
  connect gets ``ECONNREFUSED``) and stalls existing ones like a blackhole, then heals
  on its own: the port is bound again and held bytes flow.
* **half_open** makes the connections that exist now silent for good, in both
  directions, without closing either side: the peer is gone without a FIN or RST, and
  only the endpoints' keepalives can find out. Bytes and closes on those connections are
  discarded (a dead peer does not learn that the other side hung up either). New
  connections are not affected, and ``heal()`` does not revive a half-open connection:
  no network repair brings back a peer that has lost the connection's state.
* **reset_all** sends an RST (``SO_LINGER`` 0) to both ends of every live connection.

``heal()`` clears every path fault (latency, throttle, blackhole, partition) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

from hil.errors import InfrastructureError
from hil.services.ports import reserve_port

LISTEN_HOST = "127.0.0.1"
CHUNK_SIZE = 64 * 1024
# The accept queue: a fleet's devices reconnect in waves after a broker restart (the
# backoff's first attempts land within ~1 s of each other), and a connection beyond a full
# queue waits for the kernel's SYN retransmit (1 s, then 3 s): a tail the contract's
# storm bound does not allow. asyncio's default is 100; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 4096
# Bytes read ahead of the writer per direction (a delayed or stalled direction holds at
# most this much); beyond it reading stops and TCP back-pressure reaches the sender. Large
# enough that latency alone does not cap throughput (1 MiB per second of delay at 8 Mbit/s).
PIPE_BUDGET = 1024 * 1024
# A throttled write is split into slices worth this much time, so pacing stays smooth.
THROTTLE_SLICE_S = 0.05
CONTROL_TIMEOUT_S = 10.0

_T = TypeVar("_T")


class NetworkFaults(Protocol):
    """What a test may do to the path between a device and its broker."""

    def set_latency(self, seconds: float) -> None: ...
    def blackhole(self, on: bool) -> None: ...
    def reset_all(self) -> int: ...
    def half_open(self) -> int: ...
    def throttle(self, bytes_per_s: int | None) -> None: ...
    def partition(self, seconds: float) -> None: ...
    def heal(self) -> None: ...


class FaultProxyError(InfrastructureError):
    """The proxy could not start or be controlled (an infrastructure error)."""


@dataclass(frozen=True)
class _Item:
    """One thing read from an endpoint: bytes, an orderly end (FIN) or an abortive one (RST)."""

    read_at: float
    kind: Literal["data", "eof", "reset"]
    data: bytes = b""


class _Pipe:
    """One direction's FIFO between its reader and its writer, bounded in bytes, not items."""

    def __init__(self, budget: int = PIPE_BUDGET) -> None:
        self._items: deque[_Item] = deque()
        self._bytes = 0
        self._budget = budget
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, item: _Item) -> None:
        while self._bytes >= self._budget:
            self._writable.clear()
            await self._writable.wait()
        self._items.append(item)
        self._bytes += len(item.data)
        self._readable.set()

    async def get(self) -> _Item:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._bytes -= len(item.data)
        if self._bytes < self._budget:
            self._writable.set()
        return item


@dataclass
class _Pacer:
    """Throttle state of one direction: when the next slice may go out."""

    next_at: float = 0.0


@dataclass(eq=False)
class _Link:
    """One proxied connection: the device side, and the broker side once it is connected."""

    id: int
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    upstream_w: asyncio.StreamWriter | None = None
    half_open: bool = False
    directions_done: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close abortively: with SO_LINGER 0 the kernel sends an RST instead of a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` with faults.

    ``start()`` (or ``with``) runs it; ``port`` is where devices connect; ``close()``
    stops it and drops every connection. Control methods are for other threads than the
    proxy's own and return once the change is in force.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, name: str = "proxy") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.name = name
        # Reserved outside the ephemeral range: a partition stops listening, and its end
        # listens on the same port again (hil.services.ports says why it must stay free).
        self._port = reserve_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        # Fault state: owned by the event loop thread.
        self._latency = 0.0
        self._rate: int | None = None
        self._blackholed = False
        self._partitioned = False
        self._partition_gen = 0
        self._partition_timer: asyncio.TimerHandle | None = None
        self._changed: asyncio.Event | None = None
        self._links: dict[int, _Link] = {}
        self._next_id = 0
        self._background: set[asyncio.Task[None]] = set()
        # Shared with test threads.
        self._cond = threading.Condition()
        self._count = 0
        self._timeline: list[tuple[float, str]] = []

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> Self:
        """Bind a free loopback port and start forwarding; returns once connections are accepted."""
        if self._thread is not None:
            raise FaultProxyError(f"{self.name}: already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"FaultProxy-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(CONTROL_TIMEOUT_S):
            raise FaultProxyError(f"{self.name}: event loop did not start in {CONTROL_TIMEOUT_S} s")
        if failure:
            self._thread.join(CONTROL_TIMEOUT_S)
            raise FaultProxyError(
                f"{self.name}: could not listen on {LISTEN_HOST}: {failure[0]}"
            ) from failure[0]
        self._log(
            f"listening on {LISTEN_HOST}:{self._port} -> {self.upstream_host}:{self.upstream_port}"
        )
        return self

    def close(self) -> None:
        """Stop listening, drop every connection and stop the loop thread. Idempotent."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        loop = self._loop
        assert loop is not None
        if not loop.is_closed():  # closed already if start() failed
            with contextlib.suppress(RuntimeError, TimeoutError):
                asyncio.run_coroutine_threadsafe(self._op_close(), loop).result(CONTROL_TIMEOUT_S)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        self._log("closed")

    def __enter__(self) -> Self:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what tests read ------------------------------------------------------------
    @property
    def host(self) -> str:
        return LISTEN_HOST

    @property
    def port(self) -> int:
        """The loopback port devices connect to (stable across partitions)."""
        if not self._port:
            raise FaultProxyError(f"{self.name}: not started")
        return self._port

    @property
    def connections(self) -> int:
        """Connections the proxy holds now (accepted and not yet closed on both sides)."""
        with self._cond:
            return self._count

    @property
    def timeline(self) -> list[tuple[float, str]]:
        """``(time.monotonic(), event)`` for every fault change and connection, oldest first."""
        with self._cond:
            return list(self._timeline)

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Block until the proxy holds exactly ``count`` connections."""
        with self._cond:
            if self._cond.wait_for(lambda: self._count == count, timeout):
                return
            seen = self._count
            recent = [event for _, event in self._timeline[-5:]]
        raise TimeoutError(
            f"{self.name}: waited {timeout} s for {count} proxied connection(s), "
            f"saw {seen}; last events: {recent}"
        )

    # -- faults -----------------------------------------------------------------------
    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (0 to stop); order is kept."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number of seconds >= 0, not {seconds!r}")
        self._call(self._op_latency(float(seconds)))

    def throttle(self, bytes_per_s: int | None) -> None:
        """Limit each direction of each connection to ``bytes_per_s`` (``None``: unlimited)."""
        if bytes_per_s is not None and (isinstance(bytes_per_s, bool) or bytes_per_s <= 0):
            raise ValueError(f"throttle takes a positive byte rate or None, not {bytes_per_s!r}")
        self._call(self._op_throttle(bytes_per_s))

    def blackhole(self, on: bool) -> None:
        """Forward nothing (held, not lost) and let new connections hang, until turned off."""
        self._call(self._op_blackhole(bool(on)))

    def half_open(self) -> int:
        """Silence every existing connection for good without closing it; returns how many."""
        return self._call(self._op_half_open())

    def reset_all(self) -> int:
        """RST both ends of every live connection; returns how many connections were reset."""
        return self._call(self._op_reset_all())

    def partition(self, seconds: float) -> None:
        """Refuse new connections and stall existing ones for ``seconds``, then heal.

        Returns at once; a later ``partition`` replaces the running one's deadline.
        """
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"partition takes a finite number of seconds > 0, not {seconds!r}")
        self._call(self._op_partition(seconds))

    def heal(self) -> None:
        """End every path fault now: latency, throttle, blackhole and partition."""
        self._call(self._op_heal())

    # -- internals: running control operations on the loop -----------------------------
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            coro.close()
            raise FaultProxyError(f"{self.name}: not running (start() it first)")
        if threading.current_thread() is self._thread:
            coro.close()
            raise FaultProxyError(
                f"{self.name}: control calls come from other threads than the proxy's"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CONTROL_TIMEOUT_S)

    def _log(self, event: str) -> None:
        with self._cond:
            self._timeline.append((time.monotonic(), event))
            self._cond.notify_all()

    def _notify(self) -> None:
        """Wake every writer waiting on the fault state: something changed."""
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float | None) -> None:
        changed = self._changed
        assert changed is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    def _path_open(self) -> bool:
        return not (self._blackholed or self._partitioned)

    def _spawn(self, coro: Coroutine[Any, Any, None], link: _Link | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        owner = link.tasks if link is not None else self._background
        owner.add(task)
        task.add_done_callback(owner.discard)

    async def _listen(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._server = await asyncio.start_server(
            self._accept,
            LISTEN_HOST,
            self._port,
            reuse_address=True,
            limit=CHUNK_SIZE,
            backlog=LISTEN_BACKLOG,
        )
        sock = self._server.sockets[0]
        self._port = int(sock.getsockname()[1])

    async def _op_latency(self, seconds: float) -> None:
        self._latency = seconds
        self._log(f"latency {seconds:.3f} s")
        self._notify()

    async def _op_throttle(self, bytes_per_s: int | None) -> None:
        self._rate = bytes_per_s
        self._log("throttle off" if bytes_per_s is None else f"throttle {bytes_per_s} B/s")
        self._notify()

    async def _op_blackhole(self, on: bool) -> None:
        self._blackholed = on
        self._log(f"blackhole {'on' if on else 'off'}")
        self._notify()

    async def _op_half_open(self) -> int:
        links = [link for link in self._links.values() if not link.half_open]
        for link in links:
            link.half_open = True
        self._log(f"half-open: {len(links)} connection(s) silenced")
        self._notify()
        return len(links)

    async def _op_reset_all(self) -> int:
        links = list(self._links.values())
        for link in links:
            _reset(link.client_w)
            _reset(link.upstream_w)
            self._drop(link, "reset")
        self._log(f"reset: {len(links)} connection(s) got an RST")
        return len(links)

    async def _op_partition(self, seconds: float) -> None:
        self._partition_gen += 1
        generation = self._partition_gen
        if self._partition_timer is not None:
            self._partition_timer.cancel()
        if not self._partitioned:
            self._partitioned = True
            if self._server is not None:
                self._server.close()  # a closed listening socket: connects are refused
                self._server = None
        loop = asyncio.get_running_loop()
        self._partition_timer = loop.call_later(
            seconds, lambda: self._spawn(self._end_partition(generation))
        )
        self._log(f"partition for {seconds:.3f} s")
        self._notify()

    async def _end_partition(self, generation: int | None) -> None:
        if not self._partitioned or (generation is not None and generation != self._partition_gen):
            return
        if self._partition_timer is not None:
            self._partition_timer.cancel()
            self._partition_timer = None
        try:
            await self._listen()  # the same port again: the device keeps its address
        except OSError as exc:
            self._log(f"partition heal failed: cannot bind {LISTEN_HOST}:{self._port} again: {exc}")
            raise FaultProxyError(
                f"{self.name}: cannot listen on port {self._port} again: {exc}"
            ) from exc
        self._partitioned = False
        self._log("partition healed")
        self._notify()

    async def _op_heal(self) -> None:
        self._latency = 0.0
        self._rate = None
        self._blackholed = False
        if self._partitioned:
            await self._end_partition(None)
        self._log("heal")
        self._notify()

    async def _op_close(self) -> None:
        if self._partition_timer is not None:
            self._partition_timer.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links.values()):
            link.client_w.transport.abort()
            if link.upstream_w is not None:
                link.upstream_w.transport.abort()
            self._drop(link, "closed with the proxy")
        for task in list(self._background):
            if task is not asyncio.current_task():
                task.cancel()

    # -- internals: connections ---------------------------------------------------------
    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accept callback (deliberately not a coroutine: the link's tasks are ours to cancel)."""
        self._next_id += 1
        link = _Link(self._next_id, reader, writer)
        peer = writer.get_extra_info("peername")
        if self._partitioned or self._closed:  # accepted just before the listener closed
            _reset(writer)
            self._log(f"conn {link.id}: from {peer} refused (partition)")
            return
        self._links[link.id] = link
        self._set_count()
        self._log(f"conn {link.id}: accepted from {peer}")
        self._spawn(self._run_link(link), link)

    def _set_count(self) -> None:
        with self._cond:
            self._count = len(self._links)
            self._cond.notify_all()

    def _drop(self, link: _Link, why: str) -> None:
        """Forget a link and stop its tasks (its sockets are closed by the caller or here)."""
        if self._links.pop(link.id, None) is None:
            return
        current = asyncio.current_task()
        for task in list(link.tasks):
            if task is not current:
                task.cancel()
        for writer in (link.client_w, link.upstream_w):
            if writer is not None and not writer.transport.is_closing():
                writer.close()
        self._set_count()
        self._log(f"conn {link.id}: {why}")

    async def _run_link(self, link: _Link) -> None:
        to_upstream = _Pipe()
        self._spawn(self._read(link.client_r, to_upstream), link)
        # A blackhole or partition holds a new connection here: accepted, never forwarded.
        while not link.half_open and not self._path_open():
            await self._wait_change(None)
        if link.half_open:
            link.directions_done += 1  # there never was a broker side
            self._spawn(self._write(link, to_upstream, None), link)
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.upstream_host, self.upstream_port, limit=CHUNK_SIZE
            )
        except OSError as exc:
            self._log(
                f"conn {link.id}: upstream {self.upstream_host}:{self.upstream_port} failed: {exc}"
            )
            _reset(link.client_w)  # the nearest thing to the refusal the device would have seen
            self._drop(link, "reset (no upstream)")
            return
        link.upstream_w = upstream_w
        self._log(f"conn {link.id}: upstream connected")
        to_client = _Pipe()
        self._spawn(self._read(upstream_r, to_client), link)
        self._spawn(self._write(link, to_client, link.client_w), link)
        self._spawn(self._write(link, to_upstream, upstream_w), link)

    async def _read(self, source: asyncio.StreamReader, queue: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await source.read(CHUNK_SIZE):
                await queue.put(_Item(loop.time(), "data", data))
        except OSError:
            await queue.put(_Item(loop.time(), "reset"))
        else:
            await queue.put(_Item(loop.time(), "eof"))

    async def _turn(self, link: _Link, item: _Item, pacer: _Pacer | None) -> bool:
        """Wait until ``item`` may go out (faults, latency, throttle); False if the link is dead."""
        loop = asyncio.get_running_loop()
        while True:
            if link.half_open:
                return False
            if not self._path_open():
                await self._wait_change(None)
                continue
            wait = item.read_at + self._latency - loop.time()
            if pacer is not None and self._rate is not None:
                wait = max(wait, pacer.next_at - loop.time())
            if wait <= 0:
                return True
            await self._wait_change(wait)

    async def _write(self, link: _Link, queue: _Pipe, dest: asyncio.StreamWriter | None) -> None:
        loop = asyncio.get_running_loop()
        pacer = _Pacer()
        dead = dest is None  # a dead direction still drains its queue, so its reader never blocks
        while True:
            item = await queue.get()
            if item.kind != "data":
                if not dead and await self._turn(link, item, None):
                    assert dest is not None
                    if item.kind == "reset":
                        _reset(dest)
                    elif dest.can_write_eof() and not dest.transport.is_closing():
                        with contextlib.suppress(OSError):
                            dest.write_eof()
                break
            view = memoryview(item.data)
            while view and not dead:
                if (
                    not await self._turn(link, item, pacer)
                    or dest is None
                    or dest.transport.is_closing()
                ):
                    dead = True
                    break
                rate = self._rate
                size = (
                    len(view)
                    if rate is None
                    else max(1, min(len(view), int(rate * THROTTLE_SLICE_S)))
                )
                dest.write(view[:size])
                view = view[size:]
                if rate is not None:
                    pacer.next_at = max(pacer.next_at, loop.time()) + size / rate
                try:
                    await dest.drain()
                except OSError:
                    dead = True
        link.directions_done += 1
        if link.directions_done == 2:
            self._drop(link, "closed" if not link.half_open else "closed (was half-open)")
