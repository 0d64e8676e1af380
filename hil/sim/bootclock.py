"""The chip's own clock while it boots, as the timestamps of its log lines show it.

The virtual board runs the ROM, the 2nd-stage bootloader and the app's start-up code in
no time at all; a C3 spends about 0.15 s there, most of it waiting for UART0. ESP-IDF's
log calls block while the UART's 128-byte TX FIFO is full, so at 115200 Bd each
70-character log line costs the CPU ~6 ms once the FIFO has filled: that is why the
partition table rows of a real boot log are 6–7 ms apart. `BootClock` keeps that time
(ms since reset) from a model, not from the host's clock, so the stamps are the same on
every run and on a busy CI machine:

* every line the chip prints goes through a 128-byte FIFO drained at the baud rate, and
  the CPU waits while it is full;
* the ROM's load of the bootloader and the bootloader's own start-up, before its first
  line (`ROM_LOAD_AND_BOOTLOADER_INIT_MS`);
* loading and hashing each app segment (`IMAGE_LOAD_BYTES_PER_MS`);
* the hand-over from the bootloader to the app's first ``cpu_start`` line
  (`APP_START_MS`).

The fixed figures are fitted to the ESP-IDF v5.4 C3 boot log in SPEC_FACTS §5 (first
bootloader line at 24 ms, ``Loaded app`` at ~143 ms, ``cpu_start`` ~13 ms later); see
docs/virtual-rig.md. Once the app runs, the board's log time is this boot time plus
the host's elapsed time (FreeRTOS ticks run in real time).
"""

from __future__ import annotations

BITS_PER_BYTE = 10
UART_FIFO_BYTES = 128
"""UART0's TX FIFO on the C3 (TRM: 128 bytes per UART)."""

ROM_LOAD_AND_BOOTLOADER_INIT_MS = 14.0
"""From the ROM's ``entry`` line to the bootloader's first log line: the ROM reads the
~20 KB bootloader from flash and jumps to it; the bootloader sets up clocks, cache and
the console."""

IMAGE_LOAD_BYTES_PER_MS = 6_000.0
"""The bootloader reads each app segment through the cache and feeds it to the SHA
engine: ~6 MB/s (a ~48 KB DROM segment line is followed ~14 ms later by the next)."""

APP_START_MS = 12.0
"""From ``Disabling RNG early entropy source...`` to the app's ``cpu_start`` lines."""


class BootClock:
    """Milliseconds since reset as the chip's cycle counter sees them during boot."""

    def __init__(self) -> None:
        self.now_ms = 0.0
        self._backlog = 0.0
        self._since = 0.0
        self.running = True

    def reset(self) -> None:
        """A chip reset: the counter starts again, the FIFO is empty."""
        self.now_ms = 0.0
        self._backlog = 0.0
        self._since = 0.0
        self.running = True

    def stop(self) -> None:
        """The app runs: from now on time is the host's (the last figure stays as offset)."""
        self.running = False

    def spend(self, ms: float) -> None:
        """The CPU is busy for ``ms`` (the FIFO keeps draining meanwhile)."""
        if self.running:
            self.now_ms += ms

    def transmit(self, nbytes: int, baud: int) -> None:
        """The CPU writes ``nbytes`` to UART0 at ``baud``: it waits while the FIFO is full."""
        if not self.running or baud <= 0:
            return
        rate = baud / BITS_PER_BYTE / 1000.0  # bytes per ms
        backlog = max(0.0, self._backlog - (self.now_ms - self._since) * rate)
        overflow = backlog + nbytes - UART_FIFO_BYTES
        if overflow > 0:
            self.now_ms += overflow / rate
            backlog = UART_FIFO_BYTES
        else:
            backlog += nbytes
        self._backlog = backlog
        self._since = self.now_ms
