"""What clients sent the broker at the protocol level, read from mosquitto's own log.

A device's CONNECT (client id, keepalive, clean-session flag, last will) and SUBSCRIBE
(topic filters) never reach an MQTT observer: only the broker sees them. mosquitto
logs both with ``log_type all`` (`hil.services.broker` writes that config), one entry per packet,
for example (mosquitto 2.0.11, timestamps are epoch seconds)::

    1796661189: New client connected from 127.0.0.1:58147 as dev-1 (p2, c0, k15, u'dev-1').
    1796661189: Will message specified (20 bytes) (r1, q1).
    1796661189: \tesp32/dev-1/status
    1796661189: Received SUBSCRIBE from dev-1
    1796661189: \tesp32/dev-1/command (QoS 1)
    1796661189: Received PUBLISH from dev-1 (d0, q1, r0, m6, 'esp32/dev-1/sensors', ... (10 bytes))
    1796661190: Client dev-1 closed its connection.

(``p`` is the protocol level, ``c`` the clean-session flag, ``k`` the keepalive in seconds,
``u`` the user name; a will's payload is logged only by its length.) mosquitto handles
one packet at a time, so a multi-line entry (the will's topic, a SUBSCRIBE's filters)
is never interleaved with another client's lines.

`parse_broker_log` turns lines into `Connect` records (each with the will and the
SUBSCRIBEs that followed it on that connection) and `Publish` records; `BrokerLogReader`
reads a growing log file from a mark and waits for what a test expects.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.05
"""How often a wait re-reads the log: a file has no event to wait on."""

_STAMP = re.compile(r"^(?:\d+: )?(?P<text>.*)$")
_CONNECTED = re.compile(
    r"^New client connected from (?P<peer>\S+) as (?P<id>.*) "
    r"\(p(?P<protocol>\d+), c(?P<clean>[01]), k(?P<keepalive>\d+)(?:, u'(?P<user>.*)')?\)\.$"
)
_WILL = re.compile(r"^Will message specified \((?P<size>\d+) bytes\) \(r(?P<retain>[01]), q(?P<qos>[0-2])\)\.$")
_NO_WILL = "No will message specified."
_SUBSCRIBE = re.compile(r"^Received SUBSCRIBE from (?P<id>.*)$")
_UNSUBSCRIBE = re.compile(r"^Received UNSUBSCRIBE from (?P<id>.*)$")
_FILTER = re.compile(r"^\t(?P<filter>.*) \(QoS (?P<qos>\d+)\)$")
_PUBLISH = re.compile(
    r"^Received PUBLISH from (?P<id>.*) \(d(?P<dup>[01]), q(?P<qos>[0-2]), r(?P<retain>[01]), "
    r"m(?P<mid>\d+), '(?P<topic>.*)', \.\.\. \((?P<size>\d+) bytes\)\)$"
)
_DISCONNECT = re.compile(r"^Received DISCONNECT from (?P<id>.*)$")


@dataclass(frozen=True)
class Will:
    """A CONNECT's last will (mosquitto logs the payload only by its size)."""

    topic: str
    size: int
    qos: int
    retain: bool


@dataclass(frozen=True)
class Subscription:
    topic_filter: str
    qos: int


@dataclass
class Connect:
    """One accepted CONNECT and what the client subscribed to on that connection."""

    client_id: str
    peer: str
    protocol: int
    clean_session: bool
    keepalive_s: int
    username: str | None
    line: int
    """Line number in the part of the log that was parsed (0-based): the order of events."""
    will: Will | None = None
    subscriptions: list[Subscription] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    disconnected: bool = False
    """The client sent DISCONNECT (a clean goodbye: no will)."""

    @property
    def topic_filters(self) -> list[str]:
        return [s.topic_filter for s in self.subscriptions]


@dataclass(frozen=True)
class Publish:
    """A PUBLISH the broker received from a client."""

    client_id: str
    topic: str
    qos: int
    retain: bool
    dup: bool
    mid: int
    size: int
    line: int


@dataclass
class BrokerLog:
    """What a stretch of the broker's log says clients sent, in log order."""

    connects: list[Connect] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)

    def connects_of(self, *, client_id: str | None = None, username: str | None = None) -> list[Connect]:
        """The CONNECTs by this client id and/or user name, oldest first."""
        return [
            c
            for c in self.connects
            if (client_id is None or c.client_id == client_id) and (username is None or c.username == username)
        ]

    def publishes_of(self, client_id: str, topic: str | None = None) -> list[Publish]:
        return [p for p in self.publishes if p.client_id == client_id and (topic is None or p.topic == topic)]


def parse_broker_log(lines: Iterable[str]) -> BrokerLog:
    """CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT and PUBLISH entries of mosquitto log lines
    (with or without the timestamp prefix); every other line is skipped.

    A SUBSCRIBE is attached to the latest CONNECT of its client id: mosquitto lets one
    connection per client id live, so that is the connection it came on. A SUBSCRIBE
    from a client whose CONNECT is before the parsed stretch is dropped.
    """
    log = BrokerLog()
    latest: dict[str, Connect] = {}
    # The entry whose tab-indented lines may follow: ("will" | "subscribe" | "unsubscribe",
    # client id, its connection if seen).
    pending: tuple[str, str, Connect | None] | None = None
    for number, raw in enumerate(lines):
        text = raw.rstrip("\r\n")
        stamped = _STAMP.match(text)
        text = stamped["text"] if stamped else text
        if text.startswith("\t") and pending is not None:
            kind, _, connect = pending
            if connect is None:
                continue
            if kind == "will" and connect.will is not None:
                connect.will = Will(text[1:], connect.will.size, connect.will.qos, connect.will.retain)
                pending = None
            elif kind == "subscribe" and (found := _FILTER.match(text)):
                connect.subscriptions.append(Subscription(found["filter"], int(found["qos"])))
            elif kind == "unsubscribe":
                connect.unsubscribed.append(text[1:])
            continue
        if pending is not None and pending[0] != "will" and text.startswith(f"{pending[1]} "):
            continue  # "<id> <qos> <filter>": mosquitto's echo of each filter, between them
        pending = None
        if found := _CONNECTED.match(text):
            connect = Connect(
                client_id=found["id"],
                peer=found["peer"],
                protocol=int(found["protocol"]),
                clean_session=found["clean"] == "1",
                keepalive_s=int(found["keepalive"]),
                username=found["user"],
                line=number,
            )
            log.connects.append(connect)
            latest[connect.client_id] = connect
        elif found := _WILL.match(text):
            if log.connects:
                connect = log.connects[-1]  # logged right after its CONNECT
                # The topic comes on the next line; until then it is unknown.
                connect.will = Will("", int(found["size"]), int(found["qos"]), found["retain"] == "1")
                pending = ("will", connect.client_id, connect)
        elif found := _SUBSCRIBE.match(text):
            pending = ("subscribe", found["id"], latest.get(found["id"]))
        elif found := _UNSUBSCRIBE.match(text):
            pending = ("unsubscribe", found["id"], latest.get(found["id"]))
        elif found := _DISCONNECT.match(text):
            if (connect := latest.get(found["id"])) is not None:
                connect.disconnected = True
        elif found := _PUBLISH.match(text):
            log.publishes.append(
                Publish(
                    client_id=found["id"],
                    topic=found["topic"],
                    qos=int(found["qos"]),
                    retain=found["retain"] == "1",
                    dup=found["dup"] == "1",
                    mid=int(found["mid"]),
                    size=int(found["size"]),
                    line=number,
                )
            )
    return log


class BrokerLogTimeout(AssertionError):
    """A wait on the broker's log ran out (the client never sent what was expected)."""


class BrokerLogReader:
    """A mosquitto log file that grows while it is read: marks, parsing from a mark, waits.

    A mark is a byte offset; only complete lines are parsed, so a line mosquitto is still
    writing is read on the next look.
    """

    def __init__(self, path: Path, *, origin: int = 0) -> None:
        self.path = path
        self.origin = origin
        """Where this broker's run starts in the file (earlier runs may have appended to it)."""

    def mark(self) -> int:
        """The current end of the log: what is logged from now on is after it."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return self.origin

    def lines(self, since: int | None = None) -> list[str]:
        start = self.origin if since is None else since
        try:
            with self.path.open("rb") as handle:
                handle.seek(start)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        return complete.decode(errors="replace").splitlines()

    def read(self, since: int | None = None) -> BrokerLog:
        """What the log says from ``since`` (default: this broker's start)."""
        return parse_broker_log(self.lines(since))

    def wait_for(
        self, predicate: Callable[[BrokerLog], bool], *, timeout: float, since: int | None = None, what: str = ""
    ) -> BrokerLog:
        """Re-read the log from ``since`` until ``predicate`` holds; returns that reading,
        or raises `BrokerLogTimeout` saying what was waited for and what was there."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.read(since)
            if predicate(log):
                return log
            if time.monotonic() >= deadline:
                connects = "\n".join(f"  {c}" for c in log.connects[-5:]) or "  (none)"
                raise BrokerLogTimeout(
                    f"waited {timeout} s for the broker log ({self.path}) to show {what or 'the predicate'}; "
                    f"last CONNECTs since the mark:\n{connects}"
                )
            time.sleep(POLL_S)  # polling a file that has no event to wait on
