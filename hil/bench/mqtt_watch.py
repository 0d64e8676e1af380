"""``hil mqtt watch``: what the devices say over MQTT, live, one readable line a message.

At the bench a sensor change shows only over MQTT (the firmware logs nothing per
reading). This subscribes as the test observer and prints, per message, the time it
arrived, the device, the topic after ``esp32/<id>/``, ``[retained]`` for what the broker
kept, and the payload compacted (JSON as ``key=value``, numbers to two decimals)::

    21:04:05.123  bench-1  sensors   seq=12 boot_count=1 temperature_c=31.5 humidity_pct=55 ...
    21:04:00.871  bench-1  status    [retained] state=online version=1.4.0 ...

The login comes from ``--credentials FILE`` (a kept rig's ``mosquitto_sub`` file, or a
``credentials.json``), else from the bench state (``hil broker up``'s credentials file
and URL); the broker from ``--broker``, else the file, else the bench broker. Passwords
are never printed, and payload fields named like one (``*pass*``, ``*secret*``,
``*token*``, ``*_key``) show ``***``. SIGINT and SIGTERM end it cleanly (exit 0).
"""

from __future__ import annotations

import json
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from hil.bench.state import BenchError, BenchInputError
from hil.secret import MASK
from hil.services.mqtt import Received
from hil.services.mqtt_login import BrokerLogin, LoginError, read_login

PREFIX = "esp32/"
LINE_MAX = 300  # a payload beyond this is cut, with an ellipsis
POLL_S = 0.2  # how soon a quit request is acted on
SECRET_WORDS = ("pass", "secret", "token", "psk")


@dataclass(frozen=True)
class WatchRequest:
    state_dir: Path
    device: str | None = None
    topics: Sequence[str] = ()
    broker: str | None = None
    credentials: Path | None = None
    count: int | None = None  # stop after this many messages
    timeout: float | None = None  # stop after this many seconds
    as_json: bool = False


def topic_filters(request: WatchRequest) -> list[str]:
    """``--topic`` filters as given, else the device's topics, else every device's."""
    if request.topics:
        return list(request.topics)
    if request.device is not None:
        if not request.device or any(c in request.device for c in "/#+"):
            raise BenchInputError(f"--device {request.device!r}: a device id is one topic level (no '/', '#', '+')")
        return [f"{PREFIX}{request.device}/#"]
    return [f"{PREFIX}#"]


def find_login(request: WatchRequest) -> tuple[BrokerLogin, str]:
    """The login to use, and where it came from (for the banner: a path, never a secret)."""
    if request.count is not None and request.count < 1:
        raise BenchInputError(f"--count {request.count}: give 1 or more")
    if request.timeout is not None and not request.timeout > 0:
        raise BenchInputError(f"--timeout {request.timeout}: give a number of seconds > 0")
    from hil.bench import broker as bench_broker

    bench = bench_broker.status(request.state_dir)
    bench_url = bench.record["urls"]["plain"] if bench.alive else None
    try:
        if request.credentials is not None:
            json_file = request.credentials.is_file() and request.credentials.read_text().lstrip().startswith("{")
            address = request.broker or (bench_url if json_file else None)
            return read_login(request.credentials, broker=address), str(request.credentials)
        if bench.alive:
            creds = Path(bench.record["credentials_file"])
            login = read_login(creds, broker=request.broker or bench_url, ca_file=Path(bench.record["ca_file"]))
            return login, f"{creds} (hil broker up in {request.state_dir})"
    except LoginError as exc:
        raise BenchInputError(str(exc)) from None
    if request.broker is None:
        why = "its broker is not running" if bench.record else "no broker is up there"
        raise BenchInputError(
            f"no login: give --credentials FILE (and --broker URL), or run 'hil broker up' "
            f"(bench state {request.state_dir}: {why})"
        )
    from hil.device.contract import parse_broker_uri

    parsed = parse_broker_uri(request.broker)
    if parsed is None or parsed.tls:
        raise BenchInputError(
            f"--broker {request.broker!r}: give mqtt://HOST:PORT (an mqtts:// broker needs --credentials with --cafile)"
        )
    return BrokerLogin(parsed.host, parsed.port), "no login (an open broker)"


# -- one line a message ------------------------------------------------------------------------
def split_topic(topic: str) -> tuple[str, str]:
    """(device, the topic after esp32/<device>/); ("-", the topic) for others."""
    if topic.startswith(PREFIX):
        device, _, rest = topic[len(PREFIX) :].partition("/")
        if device and rest:
            return device, rest
    return "-", topic


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS) or lowered == "key" or lowered.endswith("_key")


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value if value and not any(c.isspace() or c in "={}[]\"" for c in value) else json.dumps(value)
    if isinstance(value, dict):
        return "{" + _pairs(value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return json.dumps(value)


def _pairs(body: dict[str, Any], *, drop: str | None = None) -> str:
    return " ".join(
        f"{key}={MASK if _secret_name(key) else _value(value)}"
        for key, value in body.items()
        if not (key == "device_id" and value == drop)  # the device column says it
    )


def compact(payload: bytes, device: str | None = None) -> str:
    """A payload in one short line: JSON objects as key=value (secrets masked), other
    JSON compact, text as it is (control characters escaped), binary as its size."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return f"<{len(payload)} bytes: {payload[:16].hex()}{'...' if len(payload) > 16 else ''}>"
    try:
        body = json.loads(text)
    except ValueError:
        shown = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    else:
        shown = _pairs(body, drop=device) if isinstance(body, dict) else _value(body)
    if not shown:
        return "(empty)"
    return shown if len(shown) <= LINE_MAX else shown[: LINE_MAX - 3] + "..."


def format_line(message: Received, wallclock: float, widths: dict[str, int] | None = None) -> str:
    """``HH:MM:SS.mmm  device  suffix  [retained] payload``; ``widths`` (kept by the caller
    between lines) grows the columns to the widest device and suffix seen, so they align."""
    device, suffix = split_topic(message.topic)
    widths = {} if widths is None else widths
    widths["device"] = max(widths.get("device", 8), len(device))
    widths["suffix"] = max(widths.get("suffix", 8), len(suffix))
    stamp = datetime.fromtimestamp(wallclock)
    retained = "[retained] " if message.retain else ""
    return (
        f"{stamp:%H:%M:%S}.{stamp.microsecond // 1000:03d}  {device:<{widths['device']}}  "
        f"{suffix:<{widths['suffix']}}  {retained}{compact(message.payload, device)}"
    )


def as_json(message: Received, wallclock: float) -> str:
    device, suffix = split_topic(message.topic)
    try:
        payload: Any = json.loads(message.payload)
        if isinstance(payload, dict):
            payload = {k: MASK if _secret_name(k) else v for k, v in payload.items()}
    except ValueError:
        payload = message.payload.decode(errors="replace")
    record = {"time": round(wallclock, 3), "device": device, "topic": message.topic, "suffix": suffix}
    return json.dumps({**record, "retained": message.retain, "payload": payload})


# -- the watch -----------------------------------------------------------------------------------
def watch(
    login: BrokerLogin,
    filters: Sequence[str],
    emit: Callable[[str], None],
    stop: threading.Event,
    *,
    count: int | None = None,
    timeout: float | None = None,
    json_lines: bool = False,
) -> int:
    """Print each message on ``filters`` through ``emit`` until ``stop`` is set, ``count``
    messages were shown or ``timeout`` seconds passed. Returns how many were shown."""
    arrived: queue.Queue[tuple[float, Received]] = queue.Queue()
    try:
        observer = login.observer(
            subscribe=list(filters), on_receive=lambda m: arrived.put((time.time(), m)), keep=False
        )
    except LoginError as exc:
        raise BenchInputError(str(exc)) from None
    except OSError as exc:  # refused, unreachable, TLS handshake, bad login
        raise BenchError(str(exc)) from None
    shown = 0
    widths: dict[str, int] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not stop.is_set() and (count is None or shown < count):
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                break
            try:
                wallclock, message = arrived.get(timeout=left)
            except queue.Empty:
                continue
            if message.topic == observer.fence_topic:
                continue
            emit(as_json(message, wallclock) if json_lines else format_line(message, wallclock, widths))
            shown += 1
    finally:
        observer.close()
    return shown


def run(request: WatchRequest, emit: Callable[[str], None], note: Callable[[str], None]) -> int:
    """`watch` as ``hil mqtt watch`` runs it: the login found, a banner (``note``: stderr),
    SIGINT and SIGTERM ending it cleanly. Returns the exit code (0)."""
    filters = topic_filters(request)
    login, source = find_login(request)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        who = f" as {login.username}" if login.username else ""
        note(f"hil mqtt watch: {' '.join(filters)} on {login.url}{who} (login: {source}); quit: Ctrl-C")
        watch(login, filters, emit, stop, count=request.count, timeout=request.timeout, json_lines=request.as_json)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__ = ["WatchRequest", "compact", "find_login", "format_line", "run", "split_topic", "topic_filters", "watch"]
