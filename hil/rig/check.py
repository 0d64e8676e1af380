"""``hil rigs check``: everything about a rig that can be checked without flashing it, one
result per check, in the order a session depends on them, stopping at the first failure.

1. **reserved**: the rig is taken as a session takes it (its file lock, or a labgrid
   place), so no running session is disturbed, and held until the checks end.
2. **board** (a virtual rig or twin only): its board process started, as the session
   starts it (`hil.rig.attached`), and stopped afterwards.
3. **port present**: the device node exists (``/dev/serial/by-id/...``), or the lab host
   accepts connections on the RFC 2217 port.
4. **port free**: nobody holds it (the holders this host can see), and it opens the way the
   console and the flasher open it (exclusively; over RFC 2217, the negotiation completes).
5. **chip answers**: esptool reaches the ROM loader with the rig's own reset method
   (``--before`` from `Rig.flash_method`, a gpio rig power-cycled with GPIO9 held) and its
   flash baud, reads the chip id, MAC and flash size, and resets the board into its app.
6. **chip id** and **mac**: what the loader said, against the rig file's ``chip`` and
   ``mac`` (a rig file without ``mac`` is told the MAC it could pin).
7. **power**: the backend is built and reached without switching anything (`Probe`).
8. **sensor**: the sensor backend answers with a reading.

Each result says what was seen and, for a failure, the fix. A check that does not apply to
the rig (no power backend, no mac pinned) is ``skip``, which is not a failure.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from hil.errors import InfrastructureError, UsageError
from hil.link.port_busy import busy_message, is_busy, port_holders
from hil.rig.attached import AttachedRig, reserve_rig
from hil.rig.backends import Probe
from hil.rig.errors import NoRigAvailable, ReservationError, UnknownRig
from hil.rig.model import GpioExpanderSpec, ReferenceBme280Spec, Rig, UhubctlSpec
from hil.rig.wiring import NoBackend, download_mode

Status = Literal["ok", "FAIL", "skip"]
CONNECT_TIMEOUT_S = 5.0
"""How long a lab host's RFC 2217 port gets to accept a connection."""


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, ``ok`` / ``FAIL`` / ``skip``, what was seen, and the fix."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


class Reserve(Protocol):
    """`hil.rig.attached.reserve_rig`, or a fake of it."""

    def __call__(
        self, rigs: Sequence[Rig], *, name: str | None, timeout: float, lock_dir: Path | str | None
    ) -> AttachedRig: ...


OpenPort = Callable[[str], None]
"""Open a port as the console and the flasher do, and close it again."""


def open_port(port: str) -> None:
    """The flasher's own way in (`hil.link.port_borrow.Link`): exclusive on this host, the
    fast RFC 2217 client over the network. Opening resets nothing (DTR and RTS together)."""
    from hil.link.port_borrow import Link

    Link.open(port, fast_rfc2217=True).release()


def check_rigs(
    rigs: Sequence[Rig],
    name: str | None = None,
    *,
    lock_dir: Path | str | None = None,
    reserve: Reserve = reserve_rig,
    opener: OpenPort = open_port,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> Generator[CheckResult, None, None]:
    """Check the rig ``name`` names (a rig or a pool: one free member of it; None: the rig
    a bare session takes, the virtual one). The results come one by one as each check
    ends; after a failed one there are no more. The rig is released, and a virtual board
    stopped, when the results end (or the generator is closed).

    Raises `UnknownRig` when ``name`` matches no rig (a usage error, not a check)."""
    try:
        attached = reserve(rigs, name=name, timeout=0, lock_dir=lock_dir)
    except UnknownRig:
        raise
    except (ReservationError, InfrastructureError, UsageError) as exc:
        if isinstance(exc, NoRigAvailable):
            fix = "wait until the holder ends (hil rigs names it), or pick another rig"
        elif isinstance(exc, UsageError):
            fix = ""  # the message says what to do (install labgrid, fix the name)
        else:
            fix = (
                "reach what the message names: the lock directory ($HIL_LOCK_DIR), or a labgrid "
                "rig's coordinator ([labgrid] coordinator, else $LG_COORDINATOR)"
            )
        yield CheckResult("reserved", "FAIL", _one_line(exc), fix)
        return
    try:
        rig = attached.rig
        what = rig.kind + (f", {rig.description}" if rig.description else "")
        yield CheckResult("reserved", "ok", f"{rig.name} ({what}; {rig.source or 'no rig file'})")
        for result in _checks(attached, opener, connect_timeout):
            yield result
            if result.failed:
                return
    finally:
        try:
            attached.stop()
        finally:
            attached.release()


def _checks(attached: AttachedRig, opener: OpenPort, connect_timeout: float) -> Iterator[CheckResult]:
    """The checks after the reservation, in order; the caller stops at the first failure,
    so each may rely on the ones before it."""
    rig = attached.rig
    where = str(rig.source or "the rig file")
    try:
        attached.start()
    except Exception as exc:
        yield CheckResult(
            "board", "FAIL", f"could not start: {_one_line(exc)}", "see the board's log named above"
        )
        return
    board = attached.board
    if board is not None and board.endpoints is not None:
        yield CheckResult(
            "board",
            "ok",
            f"virtual board started (pid {board.endpoints.pid}, state {board.endpoints.state_dir})",
        )
    try:
        port = attached.port()
    except NoBackend as exc:
        yield CheckResult("port present", "FAIL", _one_line(exc), f'add port = "..." to {where}')
        return
    yield from _port(rig, port, opener, connect_timeout, where)

    method = rig.flash_method()
    try:
        with download_mode(rig, attached.boot_power, "hard-reset") as after:
            info = attached.flasher().identify(port, after=after)
    except Exception as exc:
        yield CheckResult(
            "chip answers",
            "FAIL",
            f"no ESP32-C3 ROM loader answered on {port} (esptool --before {method.before}"
            f"{_at_baud(method.flash_baud)}): {_reason(exc)}",
            _connect_fix(rig, where),
        )
        return
    yield CheckResult(
        "chip answers",
        "ok",
        f"{info.description} (esptool --before {info.before}, {info.baud} Bd); "
        f"flash {info.flash_size or 'size not detected'}",
    )
    if info.chip != rig.chip:
        yield CheckResult(
            "chip id",
            "FAIL",
            f"the board is {info.chip or 'an unknown chip'} (chip id {info.chip_id}); "
            f"the rig file says chip = {rig.chip!r}",
            f"the port leads to another board: correct port (or chip) in {where}",
        )
        return
    yield CheckResult("chip id", "ok", f"{info.chip_id} ({info.chip}), as the rig file says")
    if rig.mac is None:
        hint = (
            "a virtual board's own (stable per state dir)"
            if rig.is_virtual
            else f'the rig file pins none; add mac = "{info.mac}" to {where} so that a swapped board is caught'
        )
        yield CheckResult("mac", "skip", f"{info.mac}: {hint}")
    elif info.mac != rig.mac:
        yield CheckResult(
            "mac",
            "FAIL",
            f"the board on {port} has MAC {info.mac}; the rig file says {rig.mac}",
            f"another board is on this port (swapped, or its by-id path reused): "
            f"correct port, or mac, in {where}",
        )
        return
    else:
        yield CheckResult("mac", "ok", f"{info.mac}, as the rig file says")
    yield _power(attached, where)
    yield _sensor(attached, where)


def _port(rig: Rig, port: str, opener: OpenPort, timeout: float, where: str) -> Iterator[CheckResult]:
    """**port present**, then **port free**. A network port is opened first and probed with
    a bare connection only when that failed: a lab host's RFC 2217 server (and the virtual
    board's) serves one client at a time, and a probe just before the open could still be
    its client when the open arrives, a busy port that is not."""
    if "://" not in port:
        yield _device_present(rig, port, where)
        yield _port_free(port, opener)
        return
    parts = urlsplit(port)
    if parts.scheme != "rfc2217" or parts.hostname is None or parts.port is None:
        yield CheckResult("port present", "skip", f"{port}: only opening it tells")
        yield _port_free(port, opener)
        return
    address = f"{parts.hostname}:{parts.port}"
    try:
        opener(port)
    except Exception as exc:
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
        except OSError as refused:
            yield CheckResult(
                "port present",
                "FAIL",
                f"nothing accepts connections at {address} ({refused})",
                "start the lab host's ser2net (or esp_rfc2217_server) for this board, or correct "
                f"port in {where}",
            )
            return
        yield CheckResult("port present", "ok", f"{address} accepts connections")
        yield _open_failed(port, exc)
        return
    yield CheckResult("port present", "ok", f"{address} accepts connections")
    yield CheckResult("port free", "ok", f"{port} opens: RFC 2217 negotiated (nobody else holds it)")


def _device_present(rig: Rig, port: str, where: str) -> CheckResult:
    if os.path.exists(port):
        real = os.path.realpath(port)
        return CheckResult("port present", "ok", port if real == port else f"{port} -> {real}")
    listed = _listing(Path("/dev/serial/by-id"))
    fix = (
        f"plug the board in (a data cable, not a charging one) or correct port in {where}; "
        f"ls /dev/serial/by-id/ lists {listed}"
    )
    if rig.reset == "usb-jtag":
        fix += "; a USB-Serial-JTAG port is gone while the board is unpowered or re-enumerating"
    if rig.power.kind != "none":
        fix += f"; if its supply is off: hil power on --rig {rig.name}"
    return CheckResult("port present", "FAIL", f"{port} does not exist", fix)


def _port_free(port: str, opener: OpenPort) -> CheckResult:
    holders = port_holders(port)
    if holders:
        return CheckResult(
            "port free",
            "FAIL",
            f"{port} is held open by {', '.join(holders)}",
            f"close that program (a serial monitor, another hil session; fuser -v {port})",
        )
    try:
        opener(port)
    except Exception as exc:
        return _open_failed(port, exc)
    return CheckResult("port free", "ok", f"{port} opens (nobody else holds it)")


def _open_failed(port: str, exc: Exception) -> CheckResult:
    if is_busy(exc):
        return CheckResult("port free", "FAIL", busy_message(port, exc, "Nothing was checked past it."))
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        return CheckResult(
            "port free",
            "FAIL",
            f"{port}: permission denied",
            "add your user to the group owning it (sudo usermod -aG dialout $USER; log in again)",
        )
    fix = (
        "the lab host serves this port to one client at a time: find who else is connected "
        "(ser2net without kickolduser refuses a second one), and make sure its accepter is "
        "telnet(rfc2217)"
        if port.startswith("rfc2217:")
        else "unplug and plug the board in again"
    )
    return CheckResult("port free", "FAIL", f"{port} does not open: {_reason(exc)}", fix)


def _power(attached: AttachedRig, where: str) -> CheckResult:
    rig = attached.rig
    spec = rig.power
    try:
        power = attached.power()
        detail = power.probe() if isinstance(power, Probe) else f"{type(power).__name__} built (it has no read-only probe)"
    except NoBackend as exc:
        return CheckResult("power", "skip", _none(spec.kind, "power", "tests that need power_control are skipped", exc))
    except Exception as exc:
        if isinstance(spec, GpioExpanderSpec):
            fix = (
                f"is the {spec.chip} at 0x{spec.address:02x} on I2C bus {spec.bus} "
                f"(i2cdetect -y {spec.bus})? correct [power] in {where}"
            )
        elif isinstance(spec, UhubctlSpec):
            fix = (
                "is uhubctl installed, and may this user switch the hub (its udev rule, or sudo)? "
                f"uhubctl lists the hubs it can switch; correct [power] in {where}"
            )
        else:
            fix = "check the power backend named above"
        return CheckResult("power", "FAIL", f"{spec.kind}: {_reason(exc)}", fix)
    return CheckResult("power", "ok", detail)


def _sensor(attached: AttachedRig, where: str) -> CheckResult:
    spec = attached.rig.sensor
    try:
        reading = attached.sensor().get()
    except NoBackend as exc:
        return CheckResult("sensor", "skip", _none(spec.kind, "sensor", "no reference reading beside the board", exc))
    except Exception as exc:
        if isinstance(spec, ReferenceBme280Spec):
            fix = (
                f"is the reference BME280 at 0x{spec.address:02x} on I2C bus {spec.bus} "
                f"(i2cdetect -y {spec.bus}; SDO to GND answers at 0x76, to VDD at 0x77)? "
                f"correct [sensor] in {where}"
            )
        else:
            fix = "check the sensor backend named above"
        return CheckResult("sensor", "FAIL", f"{spec.kind}: {_reason(exc)}", fix)
    return CheckResult(
        "sensor",
        "ok",
        f"{spec.kind} reads {reading.temperature_c:.1f} °C, {reading.humidity_pct:.1f} %RH, "
        f"{reading.pressure_hpa:.1f} hPa",
    )


def _none(kind: str, table: str, meaning: str, exc: NoBackend) -> str:
    if kind == "none":
        return f'none in the rig file ({table} = "none"): {meaning}'
    return _one_line(exc)  # a backend the rig has in name only (a place without power)


def _connect_fix(rig: Rig, where: str) -> str:
    if rig.reset == "usb-jtag":
        fix = (
            "this board is reset through its USB-Serial-JTAG port (esptool --before usb-reset); "
            "an app that reuses those pins or sleeps can keep it from answering: hold BOOT "
            "(GPIO9) while plugging it in, then run again"
        )
    elif rig.reset == "gpio":
        fix = (
            "this board enters its loader by a power cycle with GPIO9 held low: check that "
            "[power] boot_pin is wired to GPIO9 and that the power pin switches the board"
        )
    else:
        fix = (
            "check that the board is powered and the cable carries data; if the DTR/RTS "
            "auto-reset does not reach it, hold BOOT, press RESET, release BOOT and run again"
        )
    if rig.flash_baud:
        fix += f"; if it fails only after the switch to {rig.flash_baud} Bd, lower flash_baud in {where}"
    return fix


def _at_baud(flash_baud: int | None) -> str:
    return f", then {flash_baud} Bd" if flash_baud else ""


def _listing(directory: Path) -> str:
    try:
        names = sorted(entry.name for entry in directory.iterdir())
    except OSError:
        return "nothing (no USB serial device is plugged in)"
    return ", ".join(names) or "nothing"


def _reason(exc: BaseException) -> str:
    """The cause of a failure, on one line: the last connection attempt's cause when the
    flasher gives them (its message ends with esptool's log), else the message's first
    paragraph."""
    causes = getattr(exc, "causes", ())
    text = str(causes[-1]) if causes else str(exc).split("\n  |")[0]
    return _one_line(text) or type(exc).__name__


def _one_line(exc: BaseException | str) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()
