"""OTA at fleet scale: one update offered to every device of a fleet at once, from the OTA
server (`hil.services.ota.OtaServer`: Range requests, a per-download byte rate), and
every device's outcome: installed and confirmed, or what went wrong, per device.

A device has installed and confirmed the update when it has reported ``success`` on its
``ota/status`` (its self-test passed and it marked the new app valid, C6.7) and announced
``online`` with the new version (C3.5) since the offer. Anything else is a failure, listed
with the device's own words: its last verdict and reason (``failed``, ``rejected``,
``rolled_back``), or the last state it reached before the deadline (``downloading``,
``rebooting``, nothing at all).

The fleet is ``hil sim fleet`` as a process (`hil.load.fleet`), provisioned with the
signer's public key (``--ota-pubkey``); the offers and the watching go through the broker
with the observer account, as the load run's collector does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hil.device import contract
from hil.firmware.catalog import update_image
from hil.load.errors import LoadError
from hil.load.fleet import FleetProcess
from hil.load.run import fleet_args, private_dir
from hil.load.target import LoadTarget, device_ids
from hil.reporting.gate import LoadProfile
from hil.secret import reveal
from hil.services.ota import OtaServer, OtaSigner

VERDICTS = ("success", "rejected", "failed", "rolled_back")
IMAGE_NAME = "fleet-update.bin"
SELFTEST_S = 60.0  # C5.9: ota_selftest_timeout_s by default
REBOOT_ALLOWANCE_S = 30.0
"""A device's reboot, reconnect (its backoff from 1 s) and first reading, beyond the download."""


@dataclass(frozen=True)
class FleetOta:
    """How an update offered to a fleet went."""

    devices: int
    version: str
    image_bytes: int
    bytes_per_s: int | None  # each download's rate (None: full speed)
    succeeded: int
    failures: Mapping[str, str]  # device -> what it said, or did not
    requests: int  # image requests the server answered
    resumed: int  # of them with a Range header: a download picked up where it was cut
    seconds: float  # offer -> the last device's outcome (or the deadline)
    confirmed_after: tuple[float, ...] = field(default=())  # each confirmed device, s after the offer, sorted

    def summary(self) -> str:
        rate = "full speed" if self.bytes_per_s is None else f"{self.bytes_per_s / 1024:g} KiB/s per download"
        p50 = self.confirmed_after[len(self.confirmed_after) // 2] if self.confirmed_after else None
        times = f"median {p50:.1f} s, last {self.confirmed_after[-1]:.1f} s" if p50 is not None else "none"
        return (
            f"OTA {self.version} ({self.image_bytes} bytes, {rate}) offered to {self.devices} devices: "
            f"{self.succeeded} installed and confirmed ({times}), {len(self.failures)} failed; "
            f"{self.requests} downloads, {self.resumed} resumed with Range; {self.seconds:.1f} s"
        )


class OtaWatcher:
    """A paho subscriber (observer account) recording each device's ``ota/status`` states
    and ``online`` versions, with per-device waits as `hil.load.collector.FleetCollector`'s."""

    def __init__(self, target: LoadTarget, devices: Sequence[str]) -> None:
        self.devices = tuple(devices)
        self.states: dict[str, list[tuple[float, dict[str, Any]]]] = {d: [] for d in devices}
        self.online: dict[str, list[tuple[float, str]]] = {d: [] for d in devices}  # (mono, version)
        self.ready: set[str] = set()
        """Devices that published a reading after announcing online: a device subscribes
        between the two (C3.3: its session keeps the subscription), so an offer reaches it."""
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hil-ota-{os.getpid()}-{time.monotonic_ns()}")
        if target.observer_user:
            self.client.username_pw_set(target.observer_user, reveal(target.observer_password))
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("esp32/+/ota/status", 1), ("esp32/+/status", 1), ("esp32/+/sensors", 0)]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        try:
            self.client.connect(target.host, target.port, keepalive=30)
        except OSError as exc:
            raise LoadError(f"OTA watcher could not connect to {target.host}:{target.port}: {exc}") from None
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise LoadError(f"OTA watcher could not subscribe on {target.host}:{target.port}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        device = parts[1] if len(parts) >= 3 else ""
        if device not in self.states or message.retain:
            return
        with contextlib.suppress(ValueError, AttributeError):
            data = json.loads(message.payload)
            with self._cond:
                if parts[2:] == ["ota", "status"]:
                    self.states[device].append((time.monotonic(), data))
                elif parts[2:] == ["status"] and data.get("state") == "online":
                    self.online[device].append((time.monotonic(), str(data.get("version"))))
                elif parts[2:] == ["sensors"] and self.online[device]:
                    self.ready.add(device)
                self._cond.notify_all()

    def wait_each(self, check: Callable[[str], bool], timeout: float) -> set[str]:
        """Until ``check(device)`` holds for every device (run under the lock); the ones it
        does not hold for at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            pending = {d for d in self.devices if not check(d)}
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
                pending = {d for d in pending if not check(d)}
            return pending

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Nothing recorded meanwhile: a caller reads several fields that must agree."""
        with self._cond:
            yield

    def offer(self, device: str, request: Mapping[str, Any]) -> None:
        self.client.publish(contract.ota_update_topic(device), json.dumps(request), qos=1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> OtaWatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def outcome(states: Sequence[tuple[float, Mapping[str, Any]]], online: Sequence[tuple[float, str]], version: str, since: float) -> str | None:
    """None when the device installed and confirmed ``version`` since ``since``; else what
    it said (its verdict and reason, or its last state), in words."""
    said = [s for t, s in states if t >= since]
    verdicts = [s for s in said if s.get("state") in VERDICTS]
    if verdicts and verdicts[0].get("state") == "success":
        if any(t >= since and v == version for t, v in online):
            return None
        seen = sorted({v for t, v in online if t >= since})
        return f"reported success but never came online as {version} (online as {seen or 'nothing'})"
    if verdicts:
        first = verdicts[0]
        return f"{first.get('state')}: {first.get('reason') or first.get('error') or json.dumps(first)}"
    last = said[-1].get("state") if said else None
    return f"no verdict (last state: {last or 'none reported'})"


def download_timeout(image_bytes: int, bytes_per_s: int | None) -> float:
    """How long a device may take: its download at the server's rate (doubled: a cut and
    its resumption, a loaded host), its reboot and its self-test."""
    download = image_bytes / bytes_per_s if bytes_per_s else 10.0
    return 2 * download + REBOOT_ALLOWANCE_S + SELFTEST_S


def run_fleet_ota(
    target: LoadTarget,
    devices: int,
    *,
    workdir: Path,
    version: str = "1.1.0",
    app: str | None = None,
    bytes_per_s: int | None = None,
    cut_after: int | None = None,
    processes: int | str = "auto",
    progress: Callable[[str], None] = lambda _line: None,
) -> FleetOta:
    """Start a fleet of ``devices`` against ``target``, offer every device ``app`` rebuilt
    as ``version`` at once, and wait for each one's outcome. ``bytes_per_s`` paces each
    download (`OtaServer.throttle`); ``cut_after`` cuts the first download after that
    many bytes, so at least one device resumes with a Range request."""
    ids = device_ids(devices)
    signer = OtaSigner()
    image = update_image(app, version)
    profile = LoadProfile(devices=devices, rate_hz=1.0, duration_s=2.0)
    state_dir = workdir / "fleet-state"
    with contextlib.ExitStack() as stack:
        private = stack.enter_context(private_dir("hil-ota-"))
        pubkey = private / "ota-pubkey.pem"
        pubkey.write_text(signer.public_pem)
        server = stack.enter_context(OtaServer())
        url = server.add(IMAGE_NAME, image)
        server.throttle(bytes_per_s)
        watcher = stack.enter_context(OtaWatcher(target, ids))
        args = [*fleet_args(target, profile, None, state_dir, private, app), "--ota-pubkey", str(pubkey)]
        progress(f"starting {devices} devices against {target.name}")
        fleet = stack.enter_context(FleetProcess([*args, "--processes", str(processes)], workdir / "fleet.log", count=devices))
        stack.callback(lambda: shutil.rmtree(state_dir, ignore_errors=True))
        silent = watcher.wait_each(lambda d: d in watcher.ready, 60.0 + 0.05 * devices)
        if silent:
            raise LoadError(
                f"{len(silent)} of {devices} devices never came online and published, e.g. {sorted(silent)[:5]}:\n"
                f"{fleet.tail()}"
            )
        request = signer.request(image, url, version)
        if cut_after is not None:
            server.drop_next_after(cut_after)
        progress(f"offering {version} ({len(image)} bytes) to {devices} devices")
        offered = time.monotonic()
        for device in ids:
            watcher.offer(device, request)
        timeout = download_timeout(len(image), bytes_per_s) + 0.05 * devices

        def settled(d: str) -> bool:
            said = [s for t, s in watcher.states[d] if t >= offered and s.get("state") in VERDICTS]
            return bool(said) and (said[0].get("state") != "success" or outcome(watcher.states[d], watcher.online[d], version, offered) is None)

        watcher.wait_each(settled, timeout)
        ended = time.monotonic()
        with watcher.frozen():
            found = {d: outcome(watcher.states[d], watcher.online[d], version, offered) for d in ids}
            confirmed = sorted(
                min(t for t, s in watcher.states[d] if t >= offered and s.get("state") == "success") - offered
                for d, why in found.items()
                if why is None
            )
        requests = [rng for name, rng in server.requests if name == IMAGE_NAME]
    failures = {d: why for d, why in found.items() if why is not None}
    return FleetOta(
        devices=devices,
        version=version,
        image_bytes=len(image),
        bytes_per_s=bytes_per_s,
        succeeded=devices - len(failures),
        failures=failures,
        requests=len(requests),
        resumed=sum(1 for rng in requests if rng),
        seconds=ended - offered,
        confirmed_after=tuple(confirmed),
    )
