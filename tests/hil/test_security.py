"""Security: no secret on the serial port or in MQTT payloads; the broker refuses strangers,
clients without a certificate on the mutual-TLS listener and publishes outside a device's own
topics; the device talks TLS only to a broker its provisioned CA vouches for."""

from __future__ import annotations

import dataclasses
import re
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion

from hil import contract

pytestmark = [pytest.mark.hil, pytest.mark.gate_security]


@pytest.mark.guards("prints_secrets")
def test_no_secret_on_the_serial_port_or_in_mqtt(dut, mqtt, hil_session) -> None:
    access = hil_session.broker_access()
    secrets = [s for s in (access.password, access.client_key, "hil-lab-password") if s]
    mqtt.wait_for(contract.health_topic(dut.device_id), timeout=15)
    serial_text = "\n".join(dut.console.lines())
    payloads = "\n".join(m.payload.decode(errors="replace") for m in mqtt.collect("#"))
    for secret in secrets:
        assert secret not in serial_text, "a secret was printed on the serial port"
        assert secret not in payloads, "a secret was published over MQTT"


@pytest.mark.parametrize("who", ["anonymous", "wrong password"])
def test_the_broker_refuses_strangers(broker, who) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"stranger-{who.replace(' ', '-')}")
    if who == "wrong password":
        client.username_pw_set("hil-observer", "not-the-password")
    answered = threading.Event()
    reasons: list[object] = []

    def on_connect(c: object, u: object, flags: object, reason: object, props: object) -> None:
        reasons.append(reason)
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", broker.plain_port)
    client.loop_start()
    try:
        assert answered.wait(5), "the broker never answered the CONNECT"
    finally:
        client.loop_stop()
    assert reasons[0].is_failure, f"{who} was let in"  # type: ignore[attr-defined]


# -- TLS and ACL (issue #5) -------------------------------------------------------------
# Either end of a connection attempt on the console: `connected` or `disconnected`.
ATTEMPT_ENDED = re.compile(r"[IW] \(\d+\) mqtt: (?:connected|disconnected) ")


def connect_outcome(port: int, *, who: str, ca_pem: str | None = None, identity: tuple[Path, Path] | None = None,
                    user: str | None = None, password: str | None = None) -> tuple[paho.Client, str]:
    """Connect a client of our own and say how it ended: "accepted", "refused: <reason>"
    (a CONNACK with a failure) or "dropped" (TLS or TCP closed before any CONNACK)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hil-probe-{who}-{uuid.uuid4().hex[:8]}")
    if ca_pem is not None:
        context = ssl.create_default_context(cadata=ca_pem)
        if identity is not None:
            context.load_cert_chain(*identity)
        client.tls_set_context(context)
    if user is not None:
        client.username_pw_set(user, password)
    outcome: list[str] = []
    answered = threading.Event()

    def on_connect(c: object, u: object, flags: object, reason: Any, props: object) -> None:
        outcome.append(f"refused: {reason}" if reason.is_failure else "accepted")
        answered.set()

    def on_disconnect(c: object, u: object, flags: object, reason: object, props: object) -> None:
        outcome.append("dropped")
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError):
        return client, "dropped"
    client.loop_start()
    assert answered.wait(10), f"{who}: the broker neither answered nor closed the connection"
    return client, outcome[0]


@pytest.mark.requires("broker_mtls")
@pytest.mark.parametrize("certificate", ["none", "the device's"])
def test_the_mutual_tls_listener_requires_a_client_certificate(broker, dut, tmp_path, certificate) -> None:
    identity = None
    if certificate == "the device's":
        creds = broker.credentials(dut.device_id)
        identity = (tmp_path / "cert.pem", tmp_path / "key.pem")
        identity[0].write_text(creds.client_cert_pem)
        identity[1].write_text(creds.client_key_pem)
    client, outcome = connect_outcome(broker.mtls_port, who="mtls", ca_pem=broker.ca_pem, identity=identity)
    client.disconnect()
    client.loop_stop()
    expected = "accepted" if identity else "dropped"
    assert outcome == expected, f"client certificate {certificate}: {outcome} on the mutual-TLS listener"


@pytest.mark.requires("broker_acl")
@pytest.mark.parametrize("target", ["sensors", "status", "command"])
def test_a_device_cannot_publish_under_another_devices_topics(broker, dut, mqtt, target) -> None:
    creds = broker.credentials(dut.device_id)
    client, outcome = connect_outcome(broker.plain_port, who="acl", user=creds.username, password=creds.password)
    try:
        assert outcome == "accepted", f"the device's own credentials were not let in: {outcome}"
        other = f"{dut.device_id}-other"
        forbidden = {"sensors": contract.sensors_topic, "status": contract.status_topic,
                     "command": contract.command_topic}[target](other)  # fmt: skip
        mark = mqtt.mark()
        client.publish(forbidden, b'{"forged": true}', qos=1).wait_for_publish(10)
        # The broker has handled the forged message once it acknowledged it; a fence the
        # observer publishes afterwards reaches it after anything that message fanned out to.
        fence = f"hil/fence/{uuid.uuid4().hex}"
        mqtt.publish(fence, b"fence")
        mqtt.wait_for(fence, since=mark, timeout=15)
    finally:
        client.disconnect()
        client.loop_stop()
    assert mqtt.collect(forbidden, since=mark) == [], f"{dut.device_id}'s credentials published to {forbidden}"


@pytest.fixture
def tls_provisioning(restore_firmware, hil_session, broker):
    """The session's provisioning pointed at the broker's TLS listeners (mqtts://); the
    session's own is restored after the test."""

    def make(listener: str, *, ca_pem: str | None = None):
        creds = broker.credentials(restore_firmware.device_id)
        return dataclasses.replace(
            hil_session.device_provisioning(),
            mqtt_uri=broker.uri(listener),
            ca_cert=ca_pem or broker.ca_pem,
            client_cert=creds.client_cert_pem if listener == "mtls" else None,
            client_key=creds.client_key_pem if listener == "mtls" else None,
        )

    return make


@pytest.mark.destructive
@pytest.mark.parametrize(
    "listener",
    [
        pytest.param("tls", marks=pytest.mark.requires("broker_tls")),
        pytest.param("mtls", marks=pytest.mark.requires("broker_mtls")),
    ],
)
def test_over_tls_with_the_provisioned_ca_the_device_comes_online(tls_provisioning, hil_session, dut, mqtt, console, listener) -> None:
    device = dut.device_id
    mark = mqtt.mark()
    since = hil_session.reprovision(tls_provisioning(listener))
    connected = console.expect(contract.MQTT_CONNECTED, timeout=60, since=since)
    assert connected["uri"].startswith("mqtts://")
    mqtt.wait_for(contract.status_topic(device), lambda m: m.json()["state"] == "online", since=mark, timeout=30)
    mqtt.wait_for(contract.sensors_topic(device), since=mark, count=2, timeout=30)


@pytest.mark.destructive
@pytest.mark.requires("broker_tls")
@pytest.mark.guards("tls_no_verify")
def test_the_device_refuses_a_broker_whose_certificate_is_from_another_ca(tls_provisioning, hil_session, dut, mqtt, console) -> None:
    device = dut.device_id
    stranger_ca = trustme.CA().cert_pem.bytes().decode()
    mark = mqtt.mark()
    since = hil_session.reprovision(tls_provisioning("tls", ca_pem=stranger_ca))
    # Each connection attempt ends refused, saying why (two of them: not a one-off).
    for attempt in (1, 2):
        ended = console.expect(ATTEMPT_ENDED, timeout=60, since=since if attempt == 1 else None)
        refused = contract.MQTT_DISCONNECTED.search(ended.string)
        assert refused, f"attempt {attempt} connected: {ended.string}"
        assert re.search("tls|cert|verif", refused["reason"]), f"not a TLS refusal: {refused[0]}"
    assert not any(contract.MQTT_CONNECTED.search(line) for line in console.lines(since)), "connected anyway"
    online = [m for m in mqtt.collect(contract.status_topic(device), since=mark) if m.json()["state"] == "online"]
    assert online == [], "the device came online through a broker it cannot have verified"
