"""The chip's TCP connections, and what happens to them when the chip stops.

The firmware model's connections are host sockets. Closing one, as a Python client does
when its task is cancelled, makes the host's kernel send a FIN (or an RST), and the broker
publishes the device's will at once. A C3 that loses power, is reset or loses its AP sends
nothing: its lwIP state is gone, and the broker only notices when the keepalive runs out
(1.5 × keepalive). On profiles with ``silent_tcp_on_reset`` (`hil.sim.profiles`) the board
therefore *abandons* the connections it tracks here instead of closing them:

* at the instant the chip stops (`ChipSockets.chip_stopped`, called by the board before
  the firmware's task is cancelled; `ChipSockets.lose` when the AP goes), each connection
  stops being read or written: its descriptor is taken off the event loop, a duplicate of
  it is kept open (so the kernel sends no FIN), and the descriptor number the client holds
  is pointed with ``dup2`` at one end of a local socket pair, a *void*: whatever the
  client's teardown or its keepalive timer does afterwards (write, shutdown, close) goes
  there and is discarded, and the client closes its socket in its own time, through its
  own error paths, as it would on a dead link;
* the kept duplicate is watched by a small reader that discards what arrives and closes
  it once the peer has closed its side (EOF or reset), or at the latest 2 × keepalive +
  10 s after the chip stopped. It never writes.

The host kernel still ACKs what the broker sends to an abandoned connection (a powered-off
board would not); the broker's MQTT layer decides on packets, not ACKs, so its keepalive
timeout is the same.

On the default profile nothing here changes anything: connections are not tracked and the
firmware closes them as before.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import weakref

from hil.sim.profiles import ABANDONED_SOCKET_BOUND_EXTRA_S

DRAIN_BYTES = 65536


class _Drain:
    """A socket nobody answers on: what arrives is discarded; closed when the other side
    closes, or after ``bound_s``. Never written to."""

    def __init__(self, owner: set[_Drain], loop: asyncio.AbstractEventLoop, sock: socket.socket, bound_s: float) -> None:
        self._owner = owner
        self._loop = loop
        self.sock = sock
        sock.setblocking(False)
        self._timer = loop.call_later(bound_s, self.close)
        loop.add_reader(sock.fileno(), self._readable)
        owner.add(self)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(DRAIN_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the other side
            self.close()
            return
        if not data:  # the other side closed: nothing more will ever come
            self.close()

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self._timer.cancel()
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._owner.discard(self)


class ChipSockets:
    """The TCP connections the firmware model has open, as the board's network stack sees
    them. ``silent``: abandon them when the chip stops (see the module docstring)."""

    def __init__(self, *, silent: bool, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.silent = silent
        self._loop = loop
        self.generation = 0
        """Counts the chip's stops: a connection opened for an older generation belongs to
        a chip that has since been reset."""
        self._lock = threading.Lock()  # paho opens its socket on an executor thread
        self._live: weakref.WeakKeyDictionary[socket.socket, float] = weakref.WeakKeyDictionary()
        self._held: set[_Drain] = set()  # the abandoned connections (their duplicates)
        self._voids: set[_Drain] = set()  # the far ends of what the clients now hold
        self.abandoned = 0
        """How many connections were abandoned so far (for tests and the state command)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The board's event loop (the one running when first needed)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- the firmware's side ------------------------------------------------------------
    def track(self, sock: socket.socket, *, generation: int, keepalive_s: float) -> bool:
        """Take a connection the firmware opened for ``generation`` of the chip. Returns
        False, having abandoned it already, when the chip stopped since (a connect that
        finished on its executor thread after the reset): the caller must not use it."""
        with self._lock:
            if generation == self.generation:
                self._live[sock] = keepalive_s
                return True
        self._abandon(sock, keepalive_s, on_loop=self._on_loop_thread())
        return False

    def lose(self, sock: socket.socket | None) -> bool:
        """The link under ``sock`` is gone (the AP went away): abandon it if this board is
        silent. Returns whether it did; if not, the caller closes the socket as before."""
        if not self.silent or sock is None:
            return False
        with self._lock:
            keepalive_s = self._live.pop(sock, None)
        if keepalive_s is None:
            return False
        self._abandon(sock, keepalive_s, on_loop=True)
        return True

    # -- the board's side ---------------------------------------------------------------
    def chip_stopped(self) -> None:
        """Power went, EN fell, or the chip reset itself: on a silent board every tracked
        connection is abandoned now, before the firmware's teardown runs."""
        _ = self.loop  # on the loop's thread: known from here on, for the executor threads
        with self._lock:
            self.generation += 1
            live = list(self._live.items())
            self._live.clear()
        if not self.silent:
            return
        for sock, keepalive_s in live:
            self._abandon(sock, keepalive_s, on_loop=True)

    def close(self) -> None:
        """The board process ends: let every abandoned connection go (the kernel closes
        them as it would at exit anyway)."""
        for drain in [*self._held, *self._voids]:
            drain.close()

    @property
    def held(self) -> int:
        """How many abandoned connections are still held open."""
        return len(self._held)

    # -- how ------------------------------------------------------------------------------
    def _on_loop_thread(self) -> bool:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._loop is None or running is self._loop

    def _abandon(self, sock: socket.socket, keepalive_s: float, *, on_loop: bool) -> None:
        fd = sock.fileno()
        if fd < 0:
            return  # the client closed it already
        if on_loop:
            # Off the loop first: an epoll registration follows the open file, not the
            # number, and would keep reporting the kept duplicate under the client's fd.
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        held = socket.socket(fileno=os.dup(fd))
        void, far = socket.socketpair()
        try:
            os.dup2(void.fileno(), fd, inheritable=False)
        finally:
            void.close()  # the client's descriptor number is now this end of the pair
        self.abandoned += 1
        bound = 2 * keepalive_s + ABANDONED_SOCKET_BOUND_EXTRA_S

        def watch() -> None:
            _Drain(self._held, self.loop, held, bound)
            _Drain(self._voids, self.loop, far, bound)

        if on_loop:
            watch()
        else:
            self.loop.call_soon_threadsafe(watch)

    def __repr__(self) -> str:
        return f"<ChipSockets silent={self.silent} generation={self.generation} held={self.held}>"
