"""The ESP32-C3's own USB port as the virtual board's serial port: the ``usb-jtag`` personality.

Many C3 boards (SuperMini, XIAO ESP32C3, ...) have no UART bridge: the host sees the chip's
USB-Serial-JTAG peripheral, a fixed-function USB CDC-ACM device (VID:PID 303a:1001,
``/dev/ttyACM*``). ``hil sim board --usb-jtag`` (a rig with ``reset = "usb-jtag"``, the
twin of one) serves that instead of a devkit's UART. Three things differ:

* **The port is the chip's.** It exists only while the chip is powered: a power cut takes
  it off the bus (the RFC 2217 listener closes and the connected client is dropped, as
  the kernel hangs up a ``ttyACM`` whose device left), and it comes back
  `REENUMERATION_S` after power returns, under the same name (same TCP port; a
  ``/dev/serial/by-id`` name carries the chip's MAC). A reset the peripheral itself asks
  for keeps the port: esptool syncs on the port it reset the chip through.
* **DTR and RTS are not wires.** They reach no EN pin and no GPIO9: the peripheral decodes
  them (`UsbResetDecoder`). esptool's ``--before usb-reset`` enters the ROM loader; the
  classic devkit pulse resets the chip into its app (``rst:0x15 (USB_UART_CHIP_RESET)``,
  ``boot:0xc``), so esptool's default reset over this port never reaches download mode.
* **Output waits for a reader.** A UART drops what nobody listens to; this port holds what
  the chip writes while no host reads (ESP-IDF's USB-Serial-JTAG console guide, "Limitations":
  the controller blocks until the other side reads, where a bridge would just send). The
  hold is bounded (`HELD_OUTPUT_BYTES`); what comes after is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

REENUMERATION_S = 1.0
"""From power-on to the port being usable again on the host: USB 2.0 §7.1.7.3 gives an
attached device a 100 ms debounce before the hub resets it (TATTDB), the reset takes
10-20 ms (TDRST) and the device gets 10 ms to recover (TRSTRCY); then the host reads the
descriptors and sets the configuration, the kernel's cdc_acm binds and creates
``ttyACMn``, and udev adds the ``/dev/serial/by-id`` link. The whole takes about a second
on a desktop Linux host (the issue's "~1 s"; an estimate, host-dependent). `hil.rig.model`
declares the same figure for a usb-jtag rig (``reenumeration_s``), from which the console's
and the flasher's deadlines are derived."""

HELD_OUTPUT_BYTES = 8 * 1024
"""How much of what the chip writes while no host reads the port is kept for the next
reader. On silicon the peripheral's IN FIFO holds 64 bytes and ESP-IDF's console driver
makes the writer wait (then gives up) once it is full; the virtual board keeps a whole boot
log's worth (the ROM banner, the 2nd-stage bootloader and the app's start are ~3 KB), so a
console reopened after the re-enumeration still sees the boot it missed. Bounded so that a
board nobody reads never grows without limit: the first bytes are kept, later ones dropped
(a full FIFO takes nothing new)."""

USB_FULL_SPEED_BAUD = 12_000_000
"""What the paced line (``--realistic-timing``, the real-board profile) carries on this
port: USB full speed, 12 Mbit/s, whatever baud rate the host set (CDC-ACM's line coding
is only a number to the peripheral)."""


@dataclass
class UsbResetDecoder:
    """How the USB-Serial-JTAG peripheral turns the host's DTR/RTS (CDC SET_CONTROL_LINE_STATE)
    into a chip reset and a boot mode.

    The exact decoding is not published (SPEC_FACTS: unverified); this model is the simplest
    one that agrees with what is known: esptool's ``usb-reset`` (lines (DTR, RTS): (F,F) →
    (T,F) → (T,T) → (F,T) → (F,F)) boots the ROM loader with ``rst:0x15`` and ``boot:0x5``;
    its classic pulse ((F,T) → (T,T) → (T,F) → (F,F)) and its hard reset ((F,T) → (F,F))
    boot the app. So:

    * DTR asserted with RTS released *arms* download mode; both released disarms it;
    * RTS asserted with DTR released holds the chip in reset, in the boot mode armed at
      that moment; leaving that state lets it run.
    """

    download_armed: bool = False
    in_reset: bool = False
    reset_download: bool = False
    """The boot mode the current (or last) reset was asserted with."""

    def lines(self, dtr: bool, rts: bool) -> None:
        """The host's new line state (True = asserted)."""
        if dtr and not rts:
            self.download_armed = True
        elif not dtr and not rts:
            self.download_armed = False
        reset = rts and not dtr
        if reset and not self.in_reset:
            self.reset_download = self.download_armed
        self.in_reset = reset

    def power_lost(self) -> None:
        """The peripheral loses its state with the chip's supply."""
        self.download_armed = self.in_reset = self.reset_download = False
