"""The firmware model's connectivity defects, each against the reference behaviour it breaks
(DEVICE_CONTRACT.md §3, §5): a persistent session (``clean_session``), a clean DISCONNECT
on an emergency shutdown (``shutdown_without_disconnect``), failover over ``brokers``
(``no_broker_failover``), and retrying a failed Wi-Fi join without a reboot
(``reboots_on_wifi_failure``).

Host level: the mqtt and wifi tasks of a ``ReferenceFirmware``, with a stand-in MQTT client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import aiomqtt
import pytest

from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig, Provisioning
from hil.images.app import BehaviourRecord
from hil.sim.firmware.mqtt_link import BrokerUri
from hil.sim.firmware.reference import MODEL_NAME, ReferenceFirmware
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.firmware.tasks.outbox import Outbox
from hil.sim.firmware.tasks.shared import Firmware

DEVICE_ID = "hil-conn-0001"
PRIMARY, SECONDARY = "mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1884"


def firmware(defects: Sequence[str] = (), *, rig: RigPeripherals | None = None) -> ReferenceFirmware:
    """A ReferenceFirmware with the state its ``boot()`` sets up that the MQTT and Wi-Fi tasks use."""
    app = ReferenceFirmware(BehaviourRecord(MODEL_NAME, tuple(defects)), peripherals=rig)
    fw = app.fw
    fw.prov = Provisioning(DEVICE_ID, wifi_ssid="hil-lab", wifi_pass="hil-lab-password", mqtt_uri=PRIMARY)
    fw.device_id = DEVICE_ID
    fw.config = DeviceConfig(brokers=(PRIMARY, SECONDARY))
    fw.outbox = Outbox()
    fw.connected = asyncio.Event()
    fw.wifi_up = asyncio.Event()
    fw.wifi_down = asyncio.Event()
    fw.logged = []  # type: ignore[attr-defined]
    fw.log = lambda level, tag, message: fw.logged.append(f"{level} {tag}: {message}")  # type: ignore[attr-defined]
    fw.restarts = []  # type: ignore[attr-defined]
    fw.restart = fw.restarts.append  # type: ignore[attr-defined,method-assign]
    return app


class FakeClient:
    """What the model uses of ``aiomqtt.Client``: records how it was made and what it sent."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, *args: Any, incoming: Sequence[tuple[str, bytes]] = (), **kwargs: Any) -> None:
        FakeClient.made.append(kwargs)
        self._client = SimpleNamespace(on_disconnect=None, socket=lambda: None)
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._incoming = incoming
        self.published: list[tuple[str, bytes]] = []

    async def __aenter__(self) -> FakeClient:
        raise aiomqtt.MqttError("[code:5] Connection refused")

    async def __aexit__(self, *exc: object) -> None:
        return None

    @property
    async def messages(self) -> AsyncIterator[SimpleNamespace]:
        for topic, payload in self._incoming:
            yield SimpleNamespace(topic=topic, payload=payload)
        await asyncio.Event().wait()  # nothing more arrives

    async def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.published.append((topic, payload))


@pytest.mark.parametrize(("defects", "clean"), [((), False), ((D.CLEAN_SESSION,), True)])
def test_the_session_is_persistent_unless_the_defect_cleans_it(
    monkeypatch: pytest.MonkeyPatch, defects: tuple[str, ...], clean: bool
) -> None:
    monkeypatch.setattr(aiomqtt, "Client", FakeClient)
    FakeClient.made.clear()
    reason = asyncio.run(firmware(defects).mqtt._session(BrokerUri.parse(PRIMARY)))
    assert reason == "connection_refused"
    assert FakeClient.made[0]["clean_session"] is clean


@pytest.mark.parametrize(("defects", "aborted"), [((), False), ((D.SHUTDOWN_WITHOUT_DISCONNECT,), True)])
def test_an_emergency_shutdown_disconnects_cleanly_unless_the_defect_drops_the_link(
    defects: tuple[str, ...], aborted: bool
) -> None:
    async def shut_down() -> tuple[str, FakeClient]:
        client = FakeClient(incoming=[(contract.emergency_topic(DEVICE_ID), b"shutdown")])
        return await firmware(defects).mqtt._connected(client), client  # type: ignore[arg-type]

    result, client = asyncio.run(shut_down())
    assert result == "shutdown"
    assert client.published == [(contract.status_topic(DEVICE_ID), json.dumps({"state": "offline"}).encode())]
    # An aborted link (no DISCONNECT) is what makes the broker publish the will.
    assert client._disconnected.done() is aborted


def test_failover_uses_every_broker_unless_the_defect_keeps_to_the_first() -> None:
    assert [str(b) for b in firmware().mqtt._brokers()] == [PRIMARY, SECONDARY]
    assert [str(b) for b in firmware([D.NO_BROKER_FAILOVER]).mqtt._brokers()] == [PRIMARY]


@pytest.mark.parametrize(("defects", "restarts"), [((), []), ((D.REBOOTS_ON_WIFI_FAILURE,), ["SW"])])
def test_a_failed_wifi_join_is_retried_unless_the_defect_reboots(
    defects: tuple[str, ...], restarts: list[str]
) -> None:
    async def join_with_a_wrong_passphrase() -> Firmware:
        rig = RigPeripherals()
        rig.ap.password = "not-the-provisioned-one"
        app = firmware(defects, rig=rig)
        task = asyncio.ensure_future(app.wifi.run())
        await asyncio.sleep(0.2)  # the first join fails at once; the next is 5 s away
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return app.fw

    fw = asyncio.run(join_with_a_wrong_passphrase())
    assert fw.logged == ["W wifi: connect failed ssid=hil-lab reason=auth_fail"]  # type: ignore[attr-defined]
    assert fw.restarts == restarts  # type: ignore[attr-defined]
    assert not fw.wifi_up.is_set()
