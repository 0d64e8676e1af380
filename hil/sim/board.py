"""The virtual ESP32-C3 devkit: power, the EN/BOOT auto-reset circuit, ROM, boot chain, app.

Electrical model (SPEC_FACTS §1.5): the host's DTR/RTS drive EN and GPIO9 through the
devkit's two-transistor circuit. EN is low when RTS is asserted and DTR is not; GPIO9 is
low when DTR is asserted and RTS is not. The chip latches its strapping pins a little
after EN rises (the RC delay on real boards), which is what lets esptool's non-atomic
ClassicReset over RFC 2217 pass through (T,T) and still land in download mode.

Everything the chip does after a reset runs in one asyncio task, and every task that
task starts, however indirectly (a firmware's background handler, say), belongs to the
same boot (`BootTasks`); any reset or power cut cancels them all at once, exactly as
pulling EN low stops a real CPU mid-instruction.

A board with the ``usb-jtag`` personality (`hil.sim.usb_jtag`) has no auto-reset circuit:
the host's DTR/RTS go to the chip's USB-Serial-JTAG peripheral, which decodes them into a
chip reset (``rst:0x15``) and a boot mode, and its port comes and goes with the supply.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from hil.images.app import IMAGE_MAGIC, ImageError, check_image, find_behaviour
from hil.sim.app import AppContext, AppFactory
from hil.sim.bootclock import APP_START_MS, ROM_LOAD_AND_BOOTLOADER_INIT_MS, BootClock
from hil.sim.bootloader import BootFailure, Bootloader, BootloaderConfig
from hil.sim.download import (
    BaudRateChanged,
    DownloadEvent,
    DownloadSession,
    Reboot,
    RunUserCode,
)
from hil.sim.efuse import EfuseArray
from hil.sim.flash import SpiFlash
from hil.sim.profiles import DEFAULT, BoardProfile, boot_rng
from hil.sim.registers import ChipIdentity, RegisterSpace
from hil.sim.resets import POWER_ON, ResetCause, RomResetCode
from hil.sim.sockets import ChipSockets
from hil.sim.timing import BusyClock, ChipTiming, PacedLine, TimedFlash
from hil.sim.usb_jtag import USB_FULL_SPEED_BAUD, UsbResetDecoder

log = logging.getLogger(__name__)

STRAP_LATCH_DELAY_S = 0.12
"""EN's RC delay: strapping pins are sampled this long after EN rises.

Sized for RFC 2217: pyserial's client waits for the server's acknowledgement of each
modem-line change by polling every 50 ms, so the second half of esptool's non-atomic
ClassicReset (DTR on, *then* RTS off) lands ~50 ms after EN has risen, and GPIO9 is
released again 150 ms after that (or 650 ms on esptool's long attempts). Sampling at
120 ms falls inside that window with margin on both sides. A devkit behind ser2net
with a 1 ms RC would boot from flash instead, which is why Espressif ships
esp_rfc2217_server; this board behaves like that pairing, without rewriting resets.
`hil.link.rfc2217`, the flasher's own RFC 2217 port, has acknowledgements as fast as the link, so GPIO9
falls right after EN rises; it holds GPIO9 low 0.15 s (``STRAP_HOLD_S``), which lands in
download mode both here and on a devkit that latches within milliseconds.
"""

ROM_RETRY_PERIOD_S = 0.1
"""How often the ROM re-reads a flash it cannot boot before its watchdog fires."""

ROM_RETRIES = 8
BOOTLOADER_RESET_DELAY_S = 0.2
BOOTLOADER_MAX_SIZE = 0x8000  # the bootloader must end before the partition table
SAVED_PC = 0x4038121E
TX_HISTORY_BYTES = 256 * 1024
RTC_WDT_HOST_GRACE_S = 0.3
"""How long an armed RTC WDT waits for the host's re-lock write before it resets anyway.

esptool's ``--after watchdog-reset`` arms the WDT (stage 0 hold 2000 slow-clock cycles,
≈ 14.7 ms) and then still writes the WDT's write protection back on, expecting a reply,
before it sleeps 0.5 s. On a bench that write and its reply take a few ms at 115200 Bd,
well inside the hold time, so on silicon esptool reads its reply and then the chip
resets. Across RFC 2217 and a busy host the round trip can take longer than the hold
time, so the board counts the hold time from the arming write but lets the reset take
effect no earlier than its reply to the re-lock write, and at the latest this long after
arming (a host that never re-locks, inside esptool's 0.5 s)."""

# ESP-IDF's SPI flash chip drivers by JEDEC manufacturer id (spi_flash_chip_*.c ``chip_name``);
# anything else is driven by the generic driver and logged as "generic".
IDF_FLASH_CHIP_NAMES = {0xC8: "gd", 0xEF: "winbond", 0xC2: "mxic", 0x9D: "issi", 0x68: "boya", 0xCD: "th"}
_STRAP_RELATCHING = frozenset({RomResetCode.POWERON, RomResetCode.RTCWDT_RTC_RST})
USB_CHIP_RESET = ResetCause(RomResetCode.USB_UART_CHIP_RESET)


class BootTasks:
    """Every asyncio task one boot of the chip runs: the board's task for the boot, and
    any task created inside it or inside another task of the boot (``create_task``,
    ``ensure_future``, a TaskGroup's), found through the context a task inherits.

    A firmware model's unstructured tasks (a download handler it spawned, say) are not
    children of the boot's task, so cancelling that task alone left them running after
    the power was gone, writing flash and restarting the chip under the next boot.
    `end` cancels them all, synchronously, the instant the chip stops: none takes another
    ordinary step; each only unwinds (its ``finally`` blocks close its host sockets).
    A task the unwinding itself creates (after `end`) is that teardown's, not a new
    piece of the boot's work, and is left alone."""

    def __init__(self) -> None:
        self._live: set[asyncio.Task[Any]] = set()
        self.ended = False

    def adopt(self, task: asyncio.Task[Any]) -> None:
        if self.ended:
            return
        self._live.add(task)
        task.add_done_callback(self._live.discard)

    def end(self) -> None:
        self.ended = True
        live, self._live = self._live, set()
        for task in live:
            task.cancel()


_BOOT: contextvars.ContextVar[BootTasks | None] = contextvars.ContextVar("hil_sim_boot", default=None)
"""The boot a task belongs to, in the context every task copies from its creator."""


class _BootTaskFactory:
    """The loop's task factory while boards run on it: creates each task as the factory
    it replaces would (or as the loop's default), and hands it to the boot its context
    names, if any. One per loop, shared by every board on it (a fleet)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Future[Any]:
        task: asyncio.Future[Any]
        if self.inner is not None:
            task = self.inner(loop, coro) if context is None else self.inner(loop, coro, context=context)
        else:
            task = asyncio.Task(coro, loop=loop, context=context)
        boot = _BOOT.get() if context is None else context.get(_BOOT)
        if boot is not None and isinstance(task, asyncio.Task):
            boot.adopt(task)
        return task


def _track_boot_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Make sure the loop's task factory hands tasks to their boot (wrapping any other
    factory set since, rather than replacing it)."""
    current = loop.get_task_factory()
    if not isinstance(current, _BootTaskFactory):
        loop.set_task_factory(_BootTaskFactory(current))


class Mode(enum.StrEnum):
    OFF = "off"
    RESET = "reset"
    DOWNLOAD = "download"
    BOOTING = "booting"
    APP = "app"
    HALTED = "halted"


class Board:
    """One virtual devkit. Not thread-safe: everything happens on the event loop."""

    def __init__(
        self,
        *,
        flash: SpiFlash,
        identity: ChipIdentity,
        app_factory: AppFactory,
        peripherals: Any = None,
        bootloader_config: BootloaderConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        timing: ChipTiming | None = None,
        efuse: EfuseArray | None = None,
        profile: BoardProfile = DEFAULT,
        usb_jtag: bool = False,
    ) -> None:
        self.flash = flash
        self.profile = profile
        # The firmware's TCP connections: on a silent profile they are abandoned, not
        # closed, when the chip stops (no FIN reaches the broker, as from a real chip).
        self.sockets = ChipSockets(silent=profile.silent_tcp_on_reset)
        self.identity = identity
        self._app_factory = app_factory
        self.peripherals = peripherals
        self.rtc_memory: dict[str, Any] = {}
        self._boot_cfg = bootloader_config or BootloaderConfig()
        self._clock = clock
        self._tx: Callable[[bytes], None] = lambda data: None
        self._registers = RegisterSpace(
            identity,
            flash,
            self._on_rtc_watchdog,
            efuse=efuse,
            on_watchdog_locked=self._on_rtc_watchdog_locked,
        )
        self._wdt_expiry: float | None = None  # loop time the armed RTC WDT's hold runs out
        self._wdt_handle: asyncio.TimerHandle | None = None
        self._boot_clock = BootClock()

        self._powered = False
        self._dtr = False
        self._rts = False
        self._held_in_reset = False  # the control endpoint's "hold reset" (a relay on EN)
        self._boot_forced_low = False  # the control endpoint pressing BOOT
        self._en_high = False
        self._download_strap = False  # GPIO9 as latched at the last chip reset
        self._latch: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None
        self._boot: BootTasks | None = None  # every task of the boot that is running
        self._restarts: set[asyncio.TimerHandle] = set()  # resets the chip asked for, not yet taken
        self._session: DownloadSession | None = None
        self._t_app = clock()  # when the app started (its log time counts from the boot's)
        self._t_reset = clock()  # when the chip last came out of reset (host time)
        self._changed = asyncio.Event()
        # The usb-jtag personality: the host's lines go to the peripheral's decoder, not to
        # EN and GPIO9; a reset it holds ends in the boot mode it was asserted with.
        self._usb = UsbResetDecoder() if usb_jtag else None
        self._usb_reset_ending = False
        self._power_listeners: list[Callable[[bool], None]] = []
        self.port_state: Callable[[], dict[str, Any]] | None = None
        """What the serial transport says about itself, for ``state`` (set by its owner)."""

        self.mode = Mode.OFF
        self.boots = 0
        self.last_cause: ResetCause | None = None
        self.baudrate = 115200
        self.app_info: dict[str, Any] | None = None
        # A tap on the TX line, like a logic analyser on a lab rig: lets a tool see what
        # the chip printed while the port was held by someone else (esptool's own
        # hard reset, say). The port itself stays exclusive, as on real lab hosts.
        self._tx_history = bytearray()
        self.tx_total = 0
        self._tx_event = asyncio.Event()
        # Opt-in real-chip timing (hil.sim.timing): a paced UART both ways, and flash
        # work in download mode that keeps the chip busy for as long as a NOR takes.
        self.timing = timing
        self._busy: BusyClock | None = None
        self._rx_line: PacedLine | None = None
        self._tx_line: PacedLine | None = None
        self._download_flash: SpiFlash = flash
        if timing is not None:
            loop = asyncio.get_running_loop()
            busy = self._busy = BusyClock(loop.time)
            self._download_flash = TimedFlash(flash, timing, busy)
            line_rate = self._line_rate
            self._rx_line = PacedLine(self._feed, line_rate, hold=lambda: busy.until)
            self._tx_line = PacedLine(lambda data: self._tx(data), line_rate)

    # -- wiring ---------------------------------------------------------------------
    def attach_uart(self, send: Callable[[bytes], None]) -> None:
        self._tx = send

    def on_power(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(on)`` whenever the supply switches (a USB port goes with it)."""
        self._power_listeners.append(listener)

    @property
    def usb_jtag(self) -> bool:
        return self._usb is not None

    def _line_rate(self) -> int:
        # A UART moves bytes at the baud rate; the USB port at full speed whatever it says.
        return USB_FULL_SPEED_BAUD if self._usb is not None else self.baudrate

    # -- electrical inputs ----------------------------------------------------------
    def set_host_lines(self, dtr: bool, rts: bool) -> None:
        """DTR/RTS as the host asserts them (True = asserted = pulled low)."""
        self._dtr, self._rts = dtr, rts
        if self._usb is not None:
            was_in_reset = self._usb.in_reset
            self._usb.lines(dtr, rts)
            self._usb_reset_ending = was_in_reset and not self._usb.in_reset
        self._update_en()
        self._usb_reset_ending = False

    def power(self, on: bool) -> None:
        changed = on != self._powered
        self._powered = on
        if not on and self._usb is not None:
            self._usb.power_lost()
        self._update_en()
        if changed:
            for listener in self._power_listeners:
                listener(on)

    def hold_reset(self, hold: bool) -> None:
        self._held_in_reset = hold
        self._update_en()

    async def pulse_reset(self, *, download: bool = False) -> None:
        """Press RESET (and BOOT, for download mode) like a person or a relay would."""
        self._boot_forced_low = download
        self.hold_reset(True)
        await asyncio.sleep(0.05)  # the length of the pulse itself, not a wait for an event
        self.hold_reset(False)
        if download:
            await self.wait_for(lambda: self.mode is not Mode.RESET, timeout=1.0)
            self._boot_forced_low = False

    @property
    def _en_level(self) -> bool:
        # No wire to EN on the usb-jtag personality: its peripheral holds the chip in reset.
        held_by_host = self._usb.in_reset if self._usb is not None else self._rts and not self._dtr
        return self._powered and not self._held_in_reset and not held_by_host

    @property
    def _gpio9_low(self) -> bool:
        if self._usb is not None:  # GPIO9 has no wire from the host either
            return self._boot_forced_low
        return (self._dtr and not self._rts) or self._boot_forced_low

    def _update_en(self) -> None:
        level = self._en_level
        if level and not self._en_high:
            self._en_high = True
            loop = asyncio.get_running_loop()
            if self._usb_reset_ending:
                # The peripheral's reset of the digital core: no RC on EN to wait for, and
                # the boot mode is the one armed when the reset was asserted.
                download = self._usb is not None and self._usb.reset_download
                self._latch = loop.call_soon(self._usb_reset_released, download)
            else:
                self._latch = loop.call_later(STRAP_LATCH_DELAY_S, self._strap_latched)
        elif not level and self._en_high:
            self._en_high = False
            if self._latch is not None:
                self._latch.cancel()
                self._latch = None
            self._stop(Mode.OFF if not self._powered else Mode.RESET)
        elif not level:
            self._set_mode(Mode.OFF if not self._powered else Mode.RESET)

    def _strap_latched(self) -> None:
        self._latch = None
        self._download_strap = self._gpio9_low
        self._start(POWER_ON, download=self._download_strap)

    def _usb_reset_released(self, download: bool) -> None:
        self._latch = None
        self._download_strap = download or self._gpio9_low
        self._start(USB_CHIP_RESET, download=self._download_strap)

    # -- resets from inside the chip ------------------------------------------------
    def restart(self, cause: ResetCause, *, delay_s: float = 0.0) -> None:
        """A reset the chip causes itself (esp_restart, watchdog, bootloader_reset).

        Scheduled rather than done inline, because the caller is usually the very task
        the reset cancels. Any other reset or a power cut before it is taken supersedes it.
        """
        handle: asyncio.TimerHandle | None = None

        def take() -> None:
            self._restarts.discard(handle)  # set before it can run
            self._restart_now(cause)

        # Run outside the boot's context: the reset starts the next boot, not this one.
        handle = asyncio.get_running_loop().call_later(delay_s, take, context=contextvars.Context())
        self._restarts.add(handle)

    def _restart_now(self, cause: ResetCause) -> None:
        if not self._en_high or self._latch is not None:
            return  # power or EN went away first; that reset wins
        # Strapping pins are latched at chip reset; software and digital watchdog resets
        # keep the latched boot mode, an RTC reset samples GPIO9 again.
        if cause.code in _STRAP_RELATCHING:
            self._download_strap = self._gpio9_low
        self._start(cause, download=self._download_strap)

    def brownout(self) -> None:
        """The supply dipped below the brownout threshold: ESP-IDF's brownout handler
        prints its line and restarts with the BROWNOUT hint; without an app running
        (ROM, bootloader) the chip's own brownout reset reads as POWERON."""
        if self.mode is Mode.APP:
            self._println("Brownout detector was triggered")
            self._println("")
            self.restart(ResetCause(RomResetCode.RTC_SW_CPU_RST, hint="BROWNOUT"))
        elif self._en_high:
            self.restart(POWER_ON)

    def _on_rtc_watchdog(self) -> None:
        """The RTC WDT was armed (inside the WRITE_REG, before its reply goes out)."""
        loop = asyncio.get_running_loop()
        timeout = self._registers.rtc_wdt_timeout_s
        self._wdt_expiry = loop.time() + timeout
        self._schedule_wdt(max(timeout, RTC_WDT_HOST_GRACE_S))

    def _on_rtc_watchdog_locked(self) -> None:
        """The host re-locked the armed WDT: reset when the hold time is up, after the
        reply to this write (a timer never runs inside the command that set it)."""
        if self._wdt_expiry is None:
            return
        self._schedule_wdt(max(0.0, self._wdt_expiry - asyncio.get_running_loop().time()))

    def _schedule_wdt(self, delay_s: float) -> None:
        if self._wdt_handle is not None:
            self._wdt_handle.cancel()
        self._wdt_handle = asyncio.get_running_loop().call_later(delay_s, self._rtc_watchdog_fires)

    def _rtc_watchdog_fires(self) -> None:
        self._wdt_handle = None
        self._wdt_expiry = None
        self._restart_now(ResetCause(RomResetCode.RTCWDT_RTC_RST))

    def _cancel_wdt(self) -> None:
        if self._wdt_handle is not None:
            self._wdt_handle.cancel()
        self._wdt_handle = None
        self._wdt_expiry = None

    # -- what the chip runs ---------------------------------------------------------
    def _stop(self, mode: Mode) -> None:
        # First the network: a silent board's connections die with the chip, before the
        # firmware's cancelled task could close them (or write one more packet).
        self.sockets.chip_stopped()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._boot is not None:
            self._boot.end()  # with the boot's task, everything it started
        self._boot = None
        for handle in self._restarts:
            handle.cancel()
        self._restarts.clear()
        self._session = None
        self._cancel_wdt()  # any reset or power loss stops the RTC WDT too
        self.app_info = None
        self.flash.flush()
        self._set_mode(mode)

    def _start(self, cause: ResetCause, *, download: bool, rom_banner: bool = True) -> None:
        self._stop(Mode.BOOTING)
        self._boot_clock.reset()
        self._t_reset = self._clock()
        if rom_banner:  # a real chip reset (not the loader handing over to the app)
            self._registers.chip_reset()
        self.boots += 1
        self.last_cause = cause
        if cause.code in _STRAP_RELATCHING:
            self.rtc_memory.clear()  # power-on and RTC resets clear RTC memory
        self.baudrate = 115200
        loop = asyncio.get_running_loop()
        _track_boot_tasks(loop)
        # The boot's own context, whatever context started it (the serial port's, the
        # control endpoint's, a timer's): every task created inside it is this boot's.
        self._boot = boot = BootTasks()
        context = contextvars.copy_context()
        context.run(_BOOT.set, boot)
        self._task = loop.create_task(self._run(cause, download=download, rom_banner=rom_banner), context=context)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and task is not self._task:
            # A boot that had already been stopped failed while it unwound: its error is
            # reported, but the chip has moved on (another boot, the ROM loader), and
            # that must not be halted by a boot that no longer exists.
            log.error("virtual board internal error while a stopped boot unwound", exc_info=exc)
            return
        if exc is not None:
            # A bug in the simulator must not look like a quiet device: say it loudly,
            # on stderr and on the port, and stop (a halted CPU).
            log.error("virtual board internal error", exc_info=exc)
            self._set_mode(Mode.HALTED)
            self._println(f"E ({self.uptime_ms()}) hil-sim: internal error, CPU halted: {exc!r}")

    async def _run(self, cause: ResetCause, *, download: bool, rom_banner: bool) -> None:
        if rom_banner:
            self._println("ESP-ROM:esp32c3-api1-20210207")
            self._println("Build:Feb  7 2021")
            if download:
                self._println(f"{cause.rom_line},boot:0x5 (DOWNLOAD(USB/UART0/1))")
                self._println("waiting for download")
                self._session = DownloadSession(
                    flash=self._download_flash,
                    registers=self._registers,
                    send=self._send,
                    on_event=self._on_download_event,
                )
                self._set_mode(Mode.DOWNLOAD)
                return
            self._println(f"{cause.rom_line},boot:0xc (SPI_FAST_FLASH_BOOT)")
            if cause.code is not RomResetCode.POWERON:
                self._println(f"Saved PC:0x{SAVED_PC:08x}")
        if not await self._rom_load_bootloader():
            return

        self._boot_clock.spend(ROM_LOAD_AND_BOOTLOADER_INIT_MS)
        target = Bootloader(self.flash, self.log, self._boot_cfg, spend_ms=self._boot_clock.spend).run()
        if isinstance(target, BootFailure):
            await asyncio.sleep(BOOTLOADER_RESET_DELAY_S)
            self.restart(ResetCause(RomResetCode.RTC_SW_SYS_RST))
            return

        image = target.image
        desc = image.descriptor
        behaviour = find_behaviour(image)
        self.app_info = {
            "partition": target.partition.label,
            "offset": target.partition.offset,
            "project": desc.project_name if desc else None,
            "version": desc.version if desc else None,
            "model": behaviour.model if behaviour else None,
            "defects": list(behaviour.defects) if behaviour else [],
        }
        self._boot_clock.spend(APP_START_MS)
        self._print_app_startup(desc.project_name if desc else "", desc, image.entry)
        if self.profile.boot_in_real_time:
            # The boot takes as long on the wall clock as its log stamps say it took.
            await asyncio.sleep(max(0.0, self._boot_clock.now_ms / 1000 - (self._clock() - self._t_reset)))
        self._boot_clock.stop()  # FreeRTOS runs: log time is the host's from here on
        self._t_app = self._clock()
        self._set_mode(Mode.APP)
        ctx = AppContext(
            flash=self.flash,
            table=target.table,
            running=target.partition,
            image=image,
            behaviour=behaviour,
            reset_cause=cause,
            mac=self.identity.mac,
            log=self.log,
            write=self._send,
            restart=self.restart,
            uptime_ms=self.uptime_ms,
            rtc_memory=self.rtc_memory,
            peripherals=self.peripherals,
            profile=self.profile,
            jitter=boot_rng(self.identity.mac, self.boots),
            sockets=self.sockets,
        )
        await self._app_factory(behaviour).run(ctx)

    async def _rom_load_bootloader(self) -> bool:
        """The ROM's part of a flash boot: load the 2nd-stage bootloader from 0x0."""
        data = self.flash.read(0, BOOTLOADER_MAX_SIZE)
        try:
            image = check_image(data, flash_offset=0, partition_size=None, check_hash=False)
        except ImageError as exc:
            if data[0] != IMAGE_MAGIC:
                line = f"invalid header: 0x{int.from_bytes(data[:4], 'little'):08x}"
            else:
                line = f"ets_main.c 333 ({exc})"
            for _ in range(ROM_RETRIES):
                self._println(line)
                await asyncio.sleep(ROM_RETRY_PERIOD_S)
            self.restart(ResetCause(RomResetCode.TG0WDT_SYS_RST))
            return False
        self._println("SPIWP:0xee")
        self._println("mode:DIO, clock div:1")
        for segment in image.segments:
            self._println(f"load:0x{segment.load_addr:08x},len:0x{len(segment.data):x}")
        self._println(f"entry 0x{image.entry:08x}")
        return True

    def _print_app_startup(self, project: str, desc: Any, entry: int) -> None:
        self.log("I", "cpu_start", "Unicore app")
        self.log("I", "cpu_start", "Pro cpu start user code")
        self.log("I", "cpu_start", "cpu freq: 160000000 Hz")
        self.log("I", "app_init", "Application information:")
        self.log("I", "app_init", f"Project name:     {project}")
        if desc is not None:
            self.log("I", "app_init", f"App version:      {desc.version}")
            self.log("I", "app_init", f"Compile time:     {desc.date} {desc.time}")
            self.log("I", "app_init", f"ELF file SHA256:  {desc.elf_sha256.hex()[:16]}...")
            self.log("I", "app_init", f"ESP-IDF:          {desc.idf_ver}")
        major, minor = divmod(self._boot_cfg.chip_rev_full, 100)
        self.log("I", "efuse_init", f"Chip rev:         v{major}.{minor}")
        self.log("I", "heap_init", "Initializing. RAM available for dynamic allocation:")
        self.log("I", "heap_init", "At 3FC94A10 len 0002B5F0 (173 KiB): RAM")
        chip = IDF_FLASH_CHIP_NAMES.get(self.flash.jedec_id & 0xFF, "generic")
        self.log("I", "spi_flash", f"detected chip: {chip}")
        self.log("I", "spi_flash", "flash io: dio")
        self.log("I", "main_task", "Started on CPU0")
        self.log("I", "main_task", "Calling app_main()")

    def _on_download_event(self, event: DownloadEvent) -> None:
        if isinstance(event, BaudRateChanged):
            self.baudrate = event.baud
        elif isinstance(event, RunUserCode):
            cause = self.last_cause or POWER_ON
            self._start(cause, download=False, rom_banner=False)
        elif isinstance(event, Reboot):
            self.restart(ResetCause(RomResetCode.RTC_SW_SYS_RST))

    # -- UART -----------------------------------------------------------------------
    def uart_rx(self, data: bytes) -> None:
        """Bytes from the host. Only the ROM's download mode listens in this model."""
        if self._rx_line is not None:
            self._rx_line.put(data)  # reaches the chip when the wire has carried it
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._session is not None:
            self._session.feed(data)

    def _send(self, data: bytes) -> None:
        self.tx_total += len(data)
        self._tx_history += data
        if len(self._tx_history) > TX_HISTORY_BYTES:
            del self._tx_history[: len(self._tx_history) - TX_HISTORY_BYTES]
        self._tx_event.set()
        self._tx_event = asyncio.Event()
        if self._tx_line is not None and self._busy is not None:
            self._tx_line.put(data, not_before=self._busy.until)  # after the work, at the baud rate
        else:
            self._tx(data)

    async def wait_tx(self, search: Callable[[bytes], Any], since: int, *, timeout: float) -> tuple[Any, int]:
        """Wait until ``search`` (a compiled pattern's search, or a time-boxed one) finds a
        match in TX after ``since``; return the match and its end."""
        async with asyncio.timeout(timeout):
            while True:
                data, end = self.tx_since(since)
                match = search(data)
                if match:
                    return match, end - len(data) + match.end()
                await self._tx_event.wait()

    def tx_since(self, position: int) -> tuple[bytes, int]:
        """TX bytes after absolute position ``position`` (as far as history reaches)."""
        start = max(position, self.tx_total - len(self._tx_history))
        offset = start - (self.tx_total - len(self._tx_history))
        return bytes(self._tx_history[offset:]), self.tx_total

    def _println(self, text: str) -> None:
        line = text.encode() + b"\r\n"
        self._send(line)
        self._boot_clock.transmit(len(line), self.baudrate)  # the CPU waits on a full FIFO

    def uptime_ms(self) -> int:
        """ms since the last chip reset, as the chip's log prints them: the modelled boot
        time (`hil.sim.bootclock`; the host's own time does not count until the app
        runs, so boot stamps are the same on every run), then the host's time."""
        if self._boot_clock.running:
            return int(self._boot_clock.now_ms)
        return int(self._boot_clock.now_ms + (self._clock() - self._t_app) * 1000)

    def log(self, level: str, tag: str, message: str) -> None:
        """ESP-IDF's log format: ``L (ms since reset) tag: message``."""
        self._println(f"{level} ({self.uptime_ms()}) {tag}: {message}")

    # -- state ----------------------------------------------------------------------
    def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float) -> None:
        """Wait until predicate() holds after some state change; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def state(self) -> dict[str, Any]:
        cause = self.last_cause
        return {
            "powered": self._powered,
            "mode": self.mode.value,
            "en": self._en_high,
            "reset_reason": cause.code.name if cause else None,
            "idf_reset_reason": cause.idf_reason if cause else None,
            "boots": self.boots,
            "stub_running": bool(self._session and self._session.stub_running),
            "baudrate": self.baudrate,
            "app": self.app_info,
            "profile": self.profile.name,
            "abandoned_connections": self.sockets.abandoned,
            "held_connections": self.sockets.held,
            "personality": "usb-jtag" if self._usb is not None else "devkit",
            **({"port": self.port_state()} if self.port_state is not None else {}),
        }

    async def close(self) -> None:
        if self._latch is not None:
            self._latch.cancel()
        for line in (self._rx_line, self._tx_line):
            if line is not None:
                line.clear()
        task = self._task
        self._stop(Mode.OFF)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sockets.close()
        self.flash.flush()
