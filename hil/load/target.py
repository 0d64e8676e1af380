"""Where the fleet and the collector connect: the broker under test, its address and the
accounts the fleet's devices and the collector log in with."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.device import contract
from hil.load.errors import LoadError, LoadUnsupported
from hil.load.limits import HostLimitError, check_host, needs
from hil.load.storm import RestartableBroker
from hil.reporting.gate import LoadProfile
from hil.secret import Secret, optional_secret
from hil.services.broker import OBSERVER_USER, BrokerError, BrokerLimits, MosquittoBroker

DEVICE_PREFIX = "fleet-"  # hil sim fleet names its boards fleet-0000, fleet-0001, ...
CREDENTIALS_ENV = "HIL_LOAD_CREDENTIALS_FILE"
"""External broker: a JSON file ``{"fleet-0000": {"username": ..., "password": ...}, ...}``
with an account per fleet device; without it every device logs in with the session's
``HIL_BROKER_USERNAME``/``HIL_BROKER_PASSWORD``."""


def device_ids(count: int) -> tuple[str, ...]:
    return tuple(f"{DEVICE_PREFIX}{index:04d}" for index in range(count))


@dataclass(frozen=True)
class LoadTarget:
    """The broker under test as the fleet and the collector reach it."""

    name: str  # "mosquitto", "amqtt", or the external URI
    host: str
    port: int
    tls: bool = False
    ca_pem: str | None = None
    credentials: Mapping[str, tuple[str, Secret]] | None = None  # device id -> (user, password)
    observer_user: str | None = None
    observer_password: Secret | None = None
    observer_client_cert: str | None = None
    observer_client_key: Secret | None = None
    via_proxy: bool = True
    """False when the devices cannot go through the loopback proxy: a TLS broker elsewhere,
    whose certificate does not name 127.0.0.1. No reconnect storm then."""
    restartable: RestartableBroker | None = None
    """The broker the run may stop and start (the embedded one), for the restart storm."""

    @classmethod
    def direct(cls, broker: MosquittoBroker, devices: Sequence[str]) -> LoadTarget:
        """A mosquitto on this host reached directly (no fault proxy: no reconnect storm),
        each device with its own account on it (`MosquittoBroker.add_device`)."""
        return cls(
            name=broker.name,
            host="127.0.0.1",
            port=broker.plain_port,
            credentials={d: (broker.credentials(d).username, broker.credentials(d).password) for d in devices},
            observer_user=OBSERVER_USER,
            observer_password=broker.observer_password,
            via_proxy=False,
        )


def broker_limits(profile: LoadProfile) -> BrokerLimits:
    """The embedded broker as ``profile`` wants it for its fleet (`check_host` has checked
    this host can give it)."""
    return BrokerLimits(
        clients=needs(profile, via_proxy=True).broker.clients,
        max_queued_messages=profile.max_queued_messages,
        persistence=profile.broker_persistence,
    )


def session_target(session: Any, count: int, profile: LoadProfile | None = None) -> LoadTarget:
    """The session's broker (``hil.session.RigSession``) with accounts for ``count`` fleet
    devices. An embedded broker gets the accounts added and reloaded (nobody connected is
    dropped on mosquitto), and, given the run's ``profile``, is sized for its fleet (its
    descriptors, queue limit and persistence; `HostLimitError` when this host cannot);
    an external one is used with the credentials the environment
    names (`CREDENTIALS_ENV`, else the session's own for every device)."""
    ids = device_ids(count)
    if not session.external_broker:
        broker = session.start_broker()
        if profile is not None:
            check_host(profile, via_proxy=True, embedded_broker=True)
            try:
                broker.apply_limits(broker_limits(profile))
            except BrokerError as exc:
                raise HostLimitError(str(exc)) from exc
        creds: dict[str, tuple[str, Secret]] = {}
        added = False
        for device in ids:
            try:
                account = broker.credentials(device)
            except BrokerError:
                account = broker.add_device(device)
                added = True
            creds[device] = (account.username, account.password)
        if added:
            try:
                broker.reload()
            except BrokerError as exc:
                raise LoadError(f"the fleet's accounts did not take on {broker.name}: {exc}") from exc
        return LoadTarget(
            name=broker.name,
            host="127.0.0.1",
            port=broker.plain_port,
            credentials=creds,
            observer_user=OBSERVER_USER,
            observer_password=broker.observer_password,
            restartable=broker,
        )
    access = session.broker_access()
    parsed = contract.parse_broker_uri(access.device_uri)
    if parsed is None:  # broker_access has checked it already
        raise LoadError(f"--broker {access.device_uri!r} is not mqtt(s)://host:port")
    if access.client_cert:
        raise LoadUnsupported(
            "the broker wants client certificates; the fleet's boards log in with passwords only "
            "(hil sim fleet has no per-board certificates)"
        )
    return LoadTarget(
        name=access.device_uri,
        host=parsed.host,
        port=parsed.port,
        tls=parsed.tls,
        ca_pem=access.ca_pem,
        credentials=external_credentials(ids, access.username, access.password, os.environ),
        observer_user=access.observer_user,
        observer_password=access.observer_password,
        observer_client_cert=access.observer_client_cert,
        observer_client_key=access.observer_client_key,
        via_proxy=not parsed.tls,
    )


def external_credentials(
    ids: Sequence[str], username: str | None, password: str | Secret | None, env: Mapping[str, str]
) -> dict[str, tuple[str, Secret]] | None:
    """Per-device accounts from `CREDENTIALS_ENV`, else one shared account (or none)."""
    path = env.get(CREDENTIALS_ENV)
    if path:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise LoadError(f"${CREDENTIALS_ENV}={path}: {exc}") from None
        missing = [d for d in ids if not isinstance(raw, dict) or d not in raw]
        if missing:
            raise LoadError(f"${CREDENTIALS_ENV}={path}: no account for {missing[0]} (and {len(missing) - 1} more)")
        try:
            return {d: (str(raw[d]["username"]), Secret(str(raw[d]["password"]))) for d in ids}
        except (KeyError, TypeError):
            raise LoadError(f'${CREDENTIALS_ENV}={path}: entries are {{"username": ..., "password": ...}}') from None
    if username is None:
        return None  # a broker that takes anonymous clients
    shared = optional_secret(password) or Secret("")
    return {d: (username, shared) for d in ids}
