"""Security: no secret on the serial port or in MQTT payloads; the broker refuses strangers."""

from __future__ import annotations

import threading

import paho.mqtt.client as paho
import pytest
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
