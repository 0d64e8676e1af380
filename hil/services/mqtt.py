"""The MQTT observer: records everything a device says, and waits for what a test expects.

paho-mqtt v2 with a background network thread. Every message is kept with its receive
time; ``wait_for`` blocks on a condition variable (no polling) until a matching message
arrives or the deadline passes, and then says what it saw instead. ``seq_gaps`` and
``assert_gapless`` check a counter the device numbers its messages with (``seq`` of the
sensor readings, which starts at 0 each boot and has no gaps: DEVICE_CONTRACT.md §4), and
``find_seq_disorder`` its order (a backlog is sent in order on reconnect: §3).

A *fresh subscriber* (``persistent=False``, then ``sync``) sees what a newcomer to the
broker sees: only what the broker retained, with the retain flag set.
"""

from __future__ import annotations

import itertools
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hil.errors import InfrastructureError
from hil.secret import Secret, reveal, secret


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float
    qos: int | None = None
    """The QoS it was delivered with: the lower of the publisher's and the subscription's
    (the observer subscribes at 1, so 0 here means the sender published at QoS 0)."""

    def json(self) -> Any:
        return json.loads(self.payload)


class ObserverTimeout(AssertionError):
    """A wait ran out; the message lists what did arrive on the topic."""


class ObserverConnectError(InfrastructureError, ConnectionError):
    """The observer cannot reach the broker: the test's own instrument failed, not the
    device (a ConnectionError too, for callers that catch OSError)."""


@dataclass(frozen=True)
class SeqGap:
    """Messages a device numbered but that never arrived: ``missing`` on ``topic`` in boot
    ``boot_count``, between the message numbered ``after`` and the one numbered ``before``
    (``after`` is None when the boot's first numbers are missing, with ``from_zero``)."""

    topic: str
    boot_count: int | None
    missing: tuple[int, ...]
    after: Received | None
    before: Received
    after_seq: int | None
    before_seq: int

    def __str__(self) -> str:
        first, last = self.missing[0], self.missing[-1]
        lost = f"seq {first}" if first == last else f"seq {first}..{last} ({len(self.missing)} messages)"
        boot = "" if self.boot_count is None else f" boot {self.boot_count}:"
        before = f"seq {self.before_seq} received at {self.before.at:.3f}"
        if self.after is None:
            return f"{self.topic}{boot} {lost} missing: the first received was {before}"
        gap_s = self.before.at - self.after.at
        return (
            f"{self.topic}{boot} {lost} missing, between seq {self.after_seq} received at "
            f"{self.after.at:.3f} and {before} ({gap_s:.3f} s later)"
        )


@dataclass(frozen=True)
class SeqDisorder:
    """A number heard for the first time after a higher one of the same boot: ``seq``
    arrived after ``after_seq`` (out of order; a repeat of a number already heard is a
    QoS 1 redelivery, not this)."""

    topic: str
    boot_count: int | None
    seq: int
    after_seq: int
    message: Received
    after: Received

    def __str__(self) -> str:
        boot = "" if self.boot_count is None else f" boot {self.boot_count}:"
        return (
            f"{self.topic}{boot} seq {self.seq} received at {self.message.at:.3f}, after seq "
            f"{self.after_seq} (received at {self.after.at:.3f}): out of order"
        )


class SeqGapError(AssertionError):
    """Numbered messages are missing (``gaps`` says which, where, and around what) or
    arrived out of order (``disorder``)."""

    def __init__(self, message: str, gaps: Sequence[SeqGap], disorder: Sequence[SeqDisorder] = ()) -> None:
        super().__init__(message)
        self.gaps = tuple(gaps)
        self.disorder = tuple(disorder)


def _numbered(
    messages: Iterable[Received], seq_key: str, boot_key: str | None
) -> Iterator[tuple[Received, int, int | None]]:
    """Each message with its number and boot; ValueError naming one that has none."""
    for message in messages:
        try:
            body = message.json()
            seq = body[seq_key]
            boot = body[boot_key] if boot_key is not None else None
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(
                f"{message.topic}: message without {seq_key!r}"
                f"{'' if boot_key is None else f' and {boot_key!r}'} ({type(exc).__name__}: {exc}): "
                f"{message.payload[:200]!r}; narrow the topic to numbered messages"
            ) from None
        if isinstance(seq, bool) or not isinstance(seq, int) or (boot is not None and not isinstance(boot, int)):
            raise ValueError(f"{message.topic}: {seq_key}={seq!r} / {boot_key}={boot!r} are not integers")
        yield message, seq, boot


def find_seq_disorder(
    messages: Iterable[Received], *, seq_key: str = "seq", boot_key: str | None = "boot_count"
) -> list[SeqDisorder]:
    """Numbers that arrived out of order, per topic and per ``boot_key``: in arrival order
    (the order of ``messages``), each number heard for the first time must be higher than
    every number heard before it. A number heard again (a QoS 1 redelivery, a resend after
    a reconnect) is no disorder. Messages without the numbering raise ValueError."""
    highest: dict[tuple[str, int | None], tuple[int, Received]] = {}
    heard: dict[tuple[str, int | None], set[int]] = {}
    found: list[SeqDisorder] = []
    for message, seq, boot in _numbered(messages, seq_key, boot_key):
        run = (message.topic, boot)
        seen = heard.setdefault(run, set())
        if seq in seen:
            continue
        seen.add(seq)
        top = highest.get(run)
        if top is not None and seq < top[0]:
            found.append(SeqDisorder(message.topic, boot, seq, top[0], message, top[1]))
        else:
            highest[run] = (seq, message)
    return found


def find_seq_gaps(
    messages: Iterable[Received],
    *,
    seq_key: str = "seq",
    boot_key: str | None = "boot_count",
    from_zero: bool = False,
) -> list[SeqGap]:
    """The gaps in the ``seq_key`` numbering of ``messages`` (JSON payloads), per topic and
    per ``boot_key`` (the numbering starts again each boot; None: one numbering).

    A number received twice (a QoS 1 redelivery, the offline queue) and numbers out of
    order are not gaps. Only numbers between the lowest and highest received are known to
    be missing, unless ``from_zero`` says the record covers the boot from its start (seq 0).
    A message without the key, or not JSON, raises ValueError naming it: a gap check over
    messages that carry no numbering would otherwise pass on nothing.
    """
    runs: dict[tuple[str, int | None], dict[int, Received]] = {}
    for message, seq, boot in _numbered(messages, seq_key, boot_key):
        runs.setdefault((message.topic, boot), {}).setdefault(seq, message)
    gaps: list[SeqGap] = []
    for (topic, boot), by_seq in runs.items():  # in the order each run was first heard
        seqs = sorted(by_seq)
        if from_zero and seqs[0] > 0:
            gaps.append(SeqGap(topic, boot, tuple(range(seqs[0])), None, by_seq[seqs[0]], None, seqs[0]))
        for low, high in itertools.pairwise(seqs):
            if high - low > 1:
                gaps.append(
                    SeqGap(topic, boot, tuple(range(low + 1, high)), by_seq[low], by_seq[high], low, high)
                )
    return gaps


class MqttObserver:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | Secret | None = None,
        ca_pem: str | None = None,
        client_cert_pem: str | None = None,
        client_key_pem: str | Secret | None = None,
        subscribe: str | Sequence[str] = "#",
        persistent: bool = True,
        on_receive: Callable[[Received], None] | None = None,
        keep: bool = True,
    ) -> None:
        """``on_receive`` is called with each message as it arrives (on the network
        thread); ``keep=False`` keeps none in memory (a watch that runs for hours)."""
        self._messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._refused: str | None = None  # the broker's CONNACK said no (bad login)
        self._on_receive = on_receive
        self._keep = keep
        self.client_id = f"hil-observer-{os.getpid()}-{time.monotonic_ns()}"
        self.fence_topic = f"hil/fence/{self.client_id}"
        """Where `sync` publishes to itself (the observer account may write anywhere)."""
        filters = [subscribe] if isinstance(subscribe, str) else list(subscribe)
        if not any(mqtt.topic_matches_sub(f, self.fence_topic) for f in filters):
            filters.append(self.fence_topic)
        self._topic_filters = filters
        self._fences = itertools.count()
        # A persistent session (by default), so that what devices publish while the
        # observer itself is reconnecting (a broker restart drops everyone) is queued for
        # it, not lost. A fresh subscriber (persistent=False) starts with nothing kept.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username:
            self.client.username_pw_set(username, reveal(password))
        if ca_pem:
            context = ssl.create_default_context(cadata=ca_pem)
            if client_cert_pem and client_key_pem:
                _load_client_identity(context, client_cert_pem, secret(client_key_pem).reveal())
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:  # refused, unreachable, TLS handshake failed
            raise ObserverConnectError(f"observer could not connect to {host}:{port}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(10) or self._refused is not None:
            refused = self._refused
            self.close()
            if refused is not None:
                who = f" as {username}" if username else " without a login"
                raise ObserverConnectError(f"broker {host}:{port} refused the observer{who}: {refused}")
            raise ObserverConnectError(f"observer could not connect to {host}:{port} (no CONNACK in 10 s)")

    def __repr__(self) -> str:
        return f"<MqttObserver {self.client_id}>"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            if not self._connected.is_set():  # the first CONNACK: the constructor says so
                self._refused = str(reason)
                self._connected.set()
            return
        # Subscriptions do not survive a reconnect in paho: renew them every time.
        client.subscribe([(topic_filter, 1) for topic_filter in self._topic_filters])
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            received = Received(
                message.topic, bytes(message.payload), bool(message.retain), time.monotonic(), qos=int(message.qos)
            )
            if self._keep or mqtt.topic_matches_sub(self.fence_topic, received.topic):
                self._messages.append(received)
            self._cond.notify_all()
        if self._on_receive is not None:
            self._on_receive(received)

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def mark(self) -> int:
        """A position in the record; pass it as ``since`` to ignore what came before."""
        with self._cond:
            return len(self._messages)

    def collect(self, topic: str, *, since: int = 0) -> list[Received]:
        with self._cond:
            return [m for m in self._messages[since:] if mqtt.topic_matches_sub(topic, m.topic)]

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Received], bool] = lambda m: True,
        *,
        timeout: float,
        since: int = 0,
        count: int = 1,
    ) -> list[Received]:
        """Wait until ``count`` messages on ``topic`` (a filter) satisfy ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    m for m in self._messages[since:] if mqtt.topic_matches_sub(topic, m.topic) and predicate(m)
                ]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m for m in self._messages[since:] if mqtt.topic_matches_sub(topic, m.topic)][-5:]
                    shown = "\n".join(f"  {m.topic}: {m.payload[:300]!r}" for m in seen) or "  (nothing)"
                    raise ObserverTimeout(
                        f"waited {timeout} s for {count} message(s) on {topic!r} matching the predicate; "
                        f"got {len(found)}. Last messages on that topic:\n{shown}"
                    )
                self._cond.wait(left)

    def sync(self, timeout: float = 10.0) -> int:
        """Publish a message to this observer's own fence topic and wait for it; returns the
        mark after it. The broker handles one connection's packets in order, so whatever it
        sent this observer before (the retained messages of its subscriptions, sent on
        SUBSCRIBE) has arrived by then: "nothing retained" is known without a guessed wait."""
        token = f"{next(self._fences)}-{time.monotonic_ns()}"
        since = self.mark()
        self.publish(self.fence_topic, token)
        self.wait_for(self.fence_topic, lambda m: m.payload == token.encode(), since=since, timeout=timeout)
        return self.mark()

    def seq_gaps(
        self,
        topic: str,
        *,
        since: int = 0,
        seq_key: str = "seq",
        boot_key: str | None = "boot_count",
        from_zero: bool = False,
    ) -> list[SeqGap]:
        """Gaps in the numbering of what arrived on ``topic`` (a filter) since ``since``;
        see `find_seq_gaps`."""
        return find_seq_gaps(self.collect(topic, since=since), seq_key=seq_key, boot_key=boot_key, from_zero=from_zero)

    def assert_gapless(
        self,
        topic: str,
        *,
        since: int = 0,
        seq_key: str = "seq",
        boot_key: str | None = "boot_count",
        from_zero: bool = False,
        single_boot: bool = False,
        ordered: bool = True,
    ) -> dict[int | None, list[int]]:
        """Raise SeqGapError unless the numbering on ``topic`` since ``since`` has no gaps,
        arrived in order within each boot (``ordered``; repeats allowed: `find_seq_disorder`)
        and, with ``single_boot``, belongs to one boot (a reboot restarts ``seq``, which a
        gap check per boot would not call a loss). Returns the seqs received, per boot."""
        received = self.collect(topic, since=since)
        gaps = find_seq_gaps(received, seq_key=seq_key, boot_key=boot_key, from_zero=from_zero)
        disorder = find_seq_disorder(received, seq_key=seq_key, boot_key=boot_key) if ordered else []
        per_boot: dict[int | None, set[int]] = {}
        for message in received:
            body = message.json()
            per_boot.setdefault(body[boot_key] if boot_key else None, set()).add(body[seq_key])
        if not received:
            raise SeqGapError(f"no messages on {topic!r} since mark {since}: nothing to check for gaps", [])
        problems = [str(gap) for gap in gaps]
        if disorder:
            shown = [str(d) for d in disorder[:5]]
            more = f" (and {len(disorder) - 5} more)" if len(disorder) > 5 else ""
            arrived = [m.json()[seq_key] for m in received]
            problems += [*shown, f"{len(disorder)} out of order{more}; seqs in arrival order: {arrived}"]
        if single_boot and len(per_boot) > 1:
            problems.append(f"the device rebooted ({boot_key} {sorted(per_boot, key=str)}): {seq_key} started again")
        if problems:
            tail = "\n".join(f"  {m.at:.3f} {m.topic}: {m.payload[:200]!r}" for m in received[-5:])
            raise SeqGapError(
                f"{seq_key} on {topic!r} has {len(gaps)} gap(s) in {len(received)} message(s) since mark {since}:\n  "
                + "\n  ".join(problems)
                + f"\nLast messages:\n{tail}",
                gaps,
                disorder,
            )
        return {boot: sorted(seqs) for boot, seqs in per_boot.items()}

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, retain: bool = False) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttObserver:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _load_client_identity(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Mutual TLS: ``ssl`` loads a client identity only from files, so it lives in a
    private temp dir for the moment of loading, then is gone."""
    with tempfile.TemporaryDirectory(prefix="hil-observer-") as private:
        cert, key = Path(private) / "client.pem", Path(private) / "client.key"
        cert.write_text(cert_pem)
        key.touch(mode=0o600)
        key.write_text(key_pem)
        context.load_cert_chain(cert, key)
