"""Security: no secret on the serial port or in MQTT payloads; the broker refuses strangers,
clients without a certificate on the mutual-TLS listener and publishes outside a device's own
topics; the device talks TLS only to a broker its provisioned CA vouches for."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
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

from hil.device import contract
from hil.secret import Secret
from hil.services.tls_front import TlsFront
from tests.hil.leaks import leaked, secret_texts

pytestmark = [pytest.mark.hil, pytest.mark.gate_security]


def ota_offer_under(version: str) -> dict[str, Any]:
    """An ``ota/update`` that any device must reject at once (its version is older than
    any it could run): the OTA path's error, mirrored to `logs`, without an OTA server."""
    return {"version": "0.0.1", "url": "http://127.0.0.1:9/never.bin", "size": 1024, "sha256": "0" * 64, "signature": "AA=="}


@pytest.mark.guards("prints_secrets", "uri_with_credentials")
@pytest.mark.clause("C1.4", "C8.5", "C4.9")
def test_no_secret_on_the_serial_port_or_in_mqtt(dut, mqtt, console, hil_session) -> None:
    """Through a command, a rejected config update and a rejected OTA offer (each mirrors a
    warning or an error to `logs`), and a `reset` (a boot, a new broker session): no
    password and no line of the private key on the serial port, in any MQTT payload or in
    the mirrored logs, over the whole session. Meanwhile everything on the broker outside
    the device's own `esp32/{id}/` is what this test published itself."""
    device = dut.device_id
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "report"})
    mqtt.wait_for(contract.command_ack_topic(device), since=mark, timeout=15)
    mqtt.publish(contract.config_update_topic(device), {"measurement_interval_s": 0})
    mqtt.wait_for(contract.config_status_topic(device), since=mark, timeout=15)
    mqtt.publish(contract.ota_update_topic(device), ota_offer_under(dut.version))
    mqtt.wait_for(contract.ota_status_topic(device), since=mark, timeout=15)
    rebooted, booted = mqtt.mark(), console.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "reset"})
    mqtt.wait_for(contract.status_topic(device), lambda m: m.json()["state"] == "online", since=rebooted, timeout=60)
    mqtt.wait_for(contract.sensors_topic(device), since=rebooted, timeout=30)
    console.expect(contract.MQTT_CONNECTED, timeout=10, since=booted)
    mirrored = mqtt.collect(contract.logs_topic(device), since=mark)
    assert mirrored, "nothing was mirrored to logs: the rejected config and OTA offer say nothing there"
    secrets = secret_texts(hil_session.device_provisioning(), access=hil_session.broker_access())
    assert leaked(secrets, dut.console.lines(), mqtt.collect("#")) == []
    ours = {contract.config_update_topic(device), contract.ota_update_topic(device)}
    foreign = {m.topic for m in mqtt.collect("#", since=mark)} - ours
    assert {t for t in foreign if not t.startswith(contract.device_publish_prefix(device))} == set()


# The broker in front of the devices (the session's, or a staging broker under `hil gate`).
@pytest.mark.clause("C8.7")
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
@pytest.mark.clause("C8.2")
@pytest.mark.parametrize("certificate", ["none", "the device's"])
def test_the_mutual_tls_listener_requires_a_client_certificate(broker, dut, tmp_path, certificate) -> None:
    identity = None
    if certificate == "the device's":
        creds = broker.credentials(dut.device_id)
        identity = (tmp_path / "cert.pem", tmp_path / "key.pem")
        identity[0].write_text(creds.client_cert_pem)
        identity[1].write_text(creds.client_key_pem.reveal())
    client, outcome = connect_outcome(broker.mtls_port, who="mtls", ca_pem=broker.ca_pem, identity=identity)
    client.disconnect()
    client.loop_stop()
    expected = "accepted" if identity else "dropped"
    assert outcome == expected, f"client certificate {certificate}: {outcome} on the mutual-TLS listener"


@pytest.mark.requires("broker_acl")
@pytest.mark.clause("C8.5")  # "the broker's ACL enforces this too"
@pytest.mark.parametrize("target", ["sensors", "status", "command"])
def test_a_device_cannot_publish_under_another_devices_topics(broker, dut, mqtt, target) -> None:
    creds = broker.credentials(dut.device_id)
    client, outcome = connect_outcome(broker.plain_port, who="acl", user=creds.username, password=creds.password.reveal())
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


DENIED_OR_RECEIVED_PUBLISH = re.compile(r"(?:Received|Denied) PUBLISH from (?P<id>.*) \(d[01], q[0-2], r[01], m\d+, '(?P<topic>.*)', \.\.\.")


@pytest.mark.requires("broker_protocol_log")
@pytest.mark.guards("announces_outside_prefix")
@pytest.mark.clause("C8.5", "C9.7")
def test_the_device_publishes_only_under_its_own_topics(broker, dut, mqtt) -> None:
    """Read from the broker (the ACL drops a publish outside the device's subtree before any
    subscriber could see it): through a command, a rejected config, a rejected OTA offer, a
    program that publishes, and a reset (a new session), every PUBLISH the device's account
    sent is under `esp32/{id}/`, and each of those provoked topics is among them."""
    device = dut.device_id
    log = broker.protocol_log()
    since, mark = log.mark(), mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "report"})
    mqtt.publish(contract.config_update_topic(device), {"measurement_interval_s": 0})
    mqtt.publish(contract.ota_update_topic(device), ota_offer_under(dut.version))
    source = '(publish "probe" 1)'
    mqtt.publish(contract.programs_deploy_topic(device), {"name": "probe", "source": source, "sha256": hashlib.sha256(source.encode()).hexdigest()})
    mqtt.wait_for(contract.program_publish_topic(device, "probe"), since=mark, timeout=15)
    for topic in (contract.command_ack_topic(device), contract.config_status_topic(device), contract.ota_status_topic(device)):
        mqtt.wait_for(topic, since=mark, timeout=15)
    rebooted = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "reset"})
    mqtt.wait_for(contract.sensors_topic(device), since=rebooted, timeout=60)
    user = broker.credentials(device).username

    def reading_after_reconnect(seen) -> bool:
        connects = seen.connects_of(username=user)
        return bool(connects) and any(
            p.topic == contract.sensors_topic(device) and p.line > connects[-1].line
            for c in {c.client_id for c in connects} for p in seen.publishes_of(c)
        )

    seen = log.wait_for(reading_after_reconnect, timeout=15, since=since, what="a reading after the device's reconnect")
    clients = {c.client_id for c in seen.connects_of(username=user)}
    # mosquitto logs a PUBLISH its ACL refuses as "Denied PUBLISH from ...", not "Received".
    published = [
        m["topic"] for line in log.lines(since) if (m := DENIED_OR_RECEIVED_PUBLISH.search(line)) and m["id"] in clients
    ]
    outside = sorted({t for t in published if not t.startswith(contract.device_publish_prefix(device))})
    assert outside == [], f"{device} published outside esp32/{device}/: {outside}"
    provoked = {contract.command_ack_topic(device), contract.config_status_topic(device), contract.ota_status_topic(device),
                contract.program_publish_topic(device, "probe"), contract.status_topic(device)}  # fmt: skip
    assert provoked <= set(published), f"the broker log misses {provoked - set(published)}"


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
@pytest.mark.clause("C8.1", "C8.2", "C2.7", "C1.2", "C1.4")
def test_over_tls_with_the_provisioned_ca_the_device_comes_online(tls_provisioning, hil_session, dut, mqtt, console, listener) -> None:
    """Connected on exactly the provisioned `mqtts://` URI, online, readings; and the
    mutual-TLS device's private key shows nowhere (serial, MQTT)."""
    device = dut.device_id
    prov = tls_provisioning(listener)
    mark = mqtt.mark()
    since = hil_session.reprovision(prov)
    connected = console.expect(contract.MQTT_CONNECTED, timeout=60, since=since)
    assert connected["uri"] == prov.mqtt_uri, f"connected to {connected['uri']}, provisioned {prov.mqtt_uri}"
    mqtt.wait_for(contract.status_topic(device), lambda m: m.json()["state"] == "online", since=mark, timeout=30)
    mqtt.wait_for(contract.sensors_topic(device), since=mark, count=2, timeout=30)
    assert leaked(secret_texts(prov), console.lines(since), mqtt.collect("#", since=mark)) == []


@pytest.mark.destructive
@pytest.mark.requires("broker_tls")
@pytest.mark.guards("tls_no_verify", "tls_fail_logs_creds")
@pytest.mark.clause("C8.1", "C8.3", "C2.8", "C1.4")
def test_the_device_refuses_a_broker_whose_certificate_is_from_another_ca(tls_provisioning, hil_session, dut, mqtt, console) -> None:
    stranger_ca = trustme.CA().cert_pem.bytes().decode()
    prov = tls_provisioning("tls", ca_pem=stranger_ca)
    mark = mqtt.mark()
    since = hil_session.reprovision(prov)
    assert_refused_over_tls(console, mqtt, dut.device_id, since, mark, prov)


@pytest.fixture
def other_host_front(broker):
    """A TLS front on loopback whose certificate the broker's own CA issued for another
    host name, forwarding to the broker's plain listener."""
    ca = getattr(broker, "ca", None)
    if ca is None:
        pytest.skip("the broker under test issues no certificates (an external broker)")
    with TlsFront(ca, ("mqtt.other-host.invalid",), ("127.0.0.1", broker.plain_port)) as front:
        yield front


@pytest.mark.destructive
@pytest.mark.requires("broker_tls")
@pytest.mark.guards("tls_no_hostname", "tls_no_verify")
@pytest.mark.clause("C8.1", "C8.4", "C2.8", "C1.4")
def test_the_device_refuses_a_broker_whose_certificate_names_another_host(
    tls_provisioning, other_host_front, hil_session, dut, mqtt, console
) -> None:
    """The certificate is from the provisioned CA, for `mqtt.other-host.invalid`; the
    device dials 127.0.0.1. Host-name verification must refuse it: no TLS session is
    completed, each attempt ends `disconnected`, never online."""
    prov = dataclasses.replace(tls_provisioning("tls"), mqtt_uri=other_host_front.uri())
    mark = mqtt.mark()
    since = hil_session.reprovision(prov)
    assert_refused_over_tls(console, mqtt, dut.device_id, since, mark, prov)
    handshakes = other_host_front.handshakes
    assert handshakes and all(h.startswith("failed") for h in handshakes), f"TLS sessions: {handshakes}"


@pytest.mark.destructive
@pytest.mark.guards("auth_refusal_restarts")
@pytest.mark.clause("C3.6", "C2.8", "C1.4")
@pytest.mark.parametrize(
    "wrong",
    [
        "mqtt_pass",
        # The right password under a user name the broker does not know: a device that logs
        # in as its device id (the session broker's account name) instead of the provisioned
        # `mqtt_user` gets in.
        pytest.param("mqtt_user", marks=[pytest.mark.guards("mqtt_user_ignored"), pytest.mark.clause("C1.2")]),
    ],
)
def test_a_broker_refusing_the_credentials_is_retried_with_backoff_without_a_reboot(
    restore_firmware, hil_session, dut, mqtt, console, wrong
) -> None:
    """Provisioned with a wrong `mqtt_pass`, or a wrong `mqtt_user` with the right password,
    the broker refuses every CONNECT (not authorised): each attempt says `disconnected`
    with its delay, the delays back off from the first (1, 2, 4 s ±20 %, waited on the
    device clock), no reboot, never online, and no password (the one tried, the right
    one) shows anywhere."""
    device = dut.device_id
    right = hil_session.device_provisioning()
    if wrong == "mqtt_pass":
        prov = dataclasses.replace(right, mqtt_pass=Secret(f"not-{uuid.uuid4().hex}"))
    else:
        prov = dataclasses.replace(right, mqtt_user=f"{right.mqtt_user or device}-nobody")
    first, _ = contract.RECONNECT_BACKOFF_S
    jitter = contract.RECONNECT_JITTER
    nominal = [first * 2**n for n in range(3)]
    mark = mqtt.mark()
    since = hil_session.reprovision(prov)
    ended = console.expect(ATTEMPT_ENDED, timeout=60, since=since)
    refused = contract.MQTT_DISCONNECTED.search(ended.string)
    assert refused, f"connected with a wrong {wrong}: {ended.string.strip()}"
    lost = [refused]
    for base in nominal[:-1]:
        lost.append(console.expect(contract.MQTT_DISCONNECTED, timeout=base * (1 + jitter) + 15))
    lines = console.lines(since)
    banners = [line for line in lines if contract.ROM_RESET.search(line)]
    assert len(banners) == 1, f"a refused login made the device reboot: {len(banners) - 1} more boot(s) after the reflash"
    delays = [int(m["retry_ms"]) / 1000 for m in lost]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected * (1 - jitter) - 0.001 <= delay <= expected * (1 + jitter), (
            f"delays {delays} s after refused logins, contract {nominal} s ±{jitter:.0%}"
        )
    spacing = [(int(b["ms"]) - int(a["ms"])) / 1000 for a, b in itertools.pairwise(lost)]
    assert all(gap >= delay - 0.05 for gap, delay in zip(spacing, delays, strict=False)), (
        f"attempts {spacing} s apart on the device clock, announced {delays}"
    )
    assert not any(contract.MQTT_CONNECTED.search(line) for line in lines), f"connected with a wrong {wrong}"
    online = [m for m in mqtt.collect(contract.status_topic(device), since=mark) if m.json()["state"] == "online"]
    assert online == [], f"online with a wrong {wrong}"
    assert leaked(secret_texts(prov, right), lines, mqtt.collect("#", since=mark)) == []


def assert_refused_over_tls(console, mqtt, device: str, since, mark: int, prov) -> None:
    """Each connection attempt ends refused, saying so on the serial port with the
    contract's `disconnected` line (two of them: not a one-off; its reason's words, and any
    TLS error line beside it, are the firmware's); never connected, never online; and saying
    why names no secret of ``prov`` (the failure path is where a debugging print is left in)."""
    for attempt in (1, 2):
        ended = console.expect(ATTEMPT_ENDED, timeout=60, since=since if attempt == 1 else None)
        assert contract.MQTT_DISCONNECTED.search(ended.string), f"attempt {attempt} connected: {ended.string}"
    assert not any(contract.MQTT_CONNECTED.search(line) for line in console.lines(since)), "connected anyway"
    online = [m for m in mqtt.collect(contract.status_topic(device), since=mark) if m.json()["state"] == "online"]
    assert online == [], "the device came online through a broker it cannot have verified"
    assert leaked(secret_texts(prov), console.lines(since), mqtt.collect("#", since=mark)) == []
