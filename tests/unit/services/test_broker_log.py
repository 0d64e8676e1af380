"""Reading CONNECT, SUBSCRIBE and PUBLISH back from mosquitto's log (`hil.services.broker_log`): on
lines a real mosquitto 2.0.11 wrote (``data/mosquitto-2.0.11-protocol.log``, captured with
the config `hil.services.broker` writes), and end to end through a running one."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.services.broker import AmqttBroker, BrokerUnsupported, MosquittoBroker
from hil.services.broker_log import (
    BrokerLogReader,
    BrokerLogTimeout,
    Subscription,
    Will,
    parse_broker_log,
)

CAPTURED = Path(__file__).parent / "data" / "mosquitto-2.0.11-protocol.log"
DEVICE = "hil-dev-0001"


def test_a_connect_with_its_flags_and_will() -> None:
    log = parse_broker_log(CAPTURED.read_text().splitlines())
    first, second = log.connects
    assert (first.client_id, first.username, first.protocol) == (DEVICE, DEVICE, 2)
    assert first.clean_session is False and first.keepalive_s == 15
    assert first.will == Will(f"esp32/{DEVICE}/status", 19, qos=1, retain=True)
    assert first.peer.startswith("127.0.0.1:")
    assert first.disconnected is True  # it sent DISCONNECT
    # Another client id for the same account: esp-mqtt's default id, clean, 120 s, no will.
    assert (second.client_id, second.username) == ("ESP32_A1B2C3", DEVICE)
    assert second.clean_session is True and second.keepalive_s == 120 and second.will is None
    assert second.disconnected is False  # it only closed the socket
    assert log.connects_of(username=DEVICE) == [first, second]
    assert log.connects_of(client_id=DEVICE) == [first]
    assert first.line < second.line


def test_subscriptions_and_unsubscriptions_belong_to_their_connection() -> None:
    [first, _] = parse_broker_log(CAPTURED.read_text().splitlines()).connects
    # One SUBSCRIBE with two filters, then two of one each; the "<id> <qos> <filter>" lines
    # mosquitto logs after each filter are not filters.
    assert first.subscriptions == [
        Subscription(f"esp32/{DEVICE}/command", 1),
        Subscription(f"esp32/{DEVICE}/emergency", 1),
        Subscription(f"config/update/{DEVICE}", 1),
        Subscription("esp32/+/command", 1),
    ]
    assert first.unsubscribed == ["esp32/+/command"]


def test_publishes_with_their_qos_and_retain_flags() -> None:
    log = parse_broker_log(CAPTURED.read_text().splitlines())
    status, reading, quick = log.publishes_of(DEVICE)
    assert (status.topic, status.qos, status.retain, status.size) == (f"esp32/{DEVICE}/status", 1, True, 19)
    assert (reading.topic, reading.qos, reading.retain, reading.dup, reading.mid) == (f"esp32/{DEVICE}/sensors", 1, False, False, 6)
    assert (quick.qos, quick.mid) == (0, 0)
    assert log.publishes_of(DEVICE, f"esp32/{DEVICE}/sensors") == [reading, quick]


def test_lines_without_timestamps_and_odd_client_ids() -> None:
    lines = [
        "New client connected from 127.0.0.1:1 as a client (with) parens (p5, c1, k0, u'x').",
        "No will message specified.",
        "New client connected from ::1:2 as anon (p4, c0, k60).",
        "Will message specified (0 bytes) (r0, q0).",
        "\tsome/will topic",
        "Received SUBSCRIBE from a client (with) parens",
        "\ta/+/b (QoS 2)",
        "Received SUBSCRIBE from a client nobody saw connect",
        "\tx/y (QoS 1)",
        "Received PUBLISH from anon (d1, q2, r1, m65535, 'it''s/a topic', ... (0 bytes))",
    ]
    log = parse_broker_log(lines)
    parens, anon = log.connects
    assert (parens.client_id, parens.protocol, parens.clean_session, parens.keepalive_s) == ("a client (with) parens", 5, True, 0)
    assert parens.subscriptions == [Subscription("a/+/b", 2)]
    assert anon.username is None and anon.will == Will("some/will topic", 0, qos=0, retain=False)
    assert anon.subscriptions == []
    [publish] = log.publishes
    assert (publish.topic, publish.dup, publish.qos, publish.retain, publish.mid) == ("it''s/a topic", True, 2, True, 65535)


def test_a_connects_will_topic_is_not_taken_for_a_subscription() -> None:
    lines = [
        "1: New client connected from 127.0.0.1:1 as d (p2, c0, k15, u'd').",
        "1: Will message specified (19 bytes) (r1, q1).",
        "1: \tesp32/d/status",
        "1: Sending CONNACK to d (0, 0)",
        "1: \tstray (QoS 1)",  # a tab line outside any entry: ignored
    ]
    [connect] = parse_broker_log(lines).connects
    assert connect.will is not None and connect.will.topic == "esp32/d/status"
    assert connect.subscriptions == []


def test_the_reader_parses_from_a_mark_and_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.log"
    path.write_text("1: New client connected from 127.0.0.1:1 as old (p2, c0, k15, u'old').\n")
    reader = BrokerLogReader(path)
    mark = reader.mark()
    with path.open("a") as log:
        log.write("2: New client connected from 127.0.0.1:2 as new (p2, c0, k15, u'new').\n")
        log.write("2: New client connected from 127.0.0.1:3 as half (p2")  # still being written
    assert [c.client_id for c in reader.read().connects] == ["old", "new"]
    assert [c.client_id for c in reader.read(mark).connects] == ["new"]
    assert [c.client_id for c in BrokerLogReader(path, origin=mark).read().connects] == ["new"]
    with pytest.raises(BrokerLogTimeout, match="a CONNECT from 'nobody'"):
        reader.wait_for(lambda log: bool(log.connects_of(client_id="nobody")), timeout=0.2, what="a CONNECT from 'nobody'")
    assert BrokerLogReader(tmp_path / "absent.log").read().connects == []


# -- through a real broker --------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    log_path = tmp_path / "logs" / "mosquitto.log"
    log_path.parent.mkdir()
    log_path.write_text("0: New client connected from 127.0.0.1:9 as hil-dev-0001 (p2, c0, k15, u'hil-dev-0001').\n")
    broker = MosquittoBroker(tmp_path / "broker", log_path=log_path)
    broker.add_device(DEVICE)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def test_the_broker_reads_back_what_a_client_sent(broker: MosquittoBroker) -> None:
    assert "protocol_log" in broker.features
    reader = broker.protocol_log()
    assert reader.read().connects == []  # what an earlier run left in the log file is not this broker's
    creds = broker.credentials(DEVICE)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, clean_session=False)
    client.username_pw_set(creds.username, creds.password.reveal())
    client.will_set(f"esp32/{DEVICE}/status", json.dumps({"state": "offline"}), qos=1, retain=True)
    client.connect("127.0.0.1", broker.plain_port, keepalive=15)
    client.loop_start()
    try:
        client.subscribe([(f"esp32/{DEVICE}/command", 1), (f"config/update/{DEVICE}", 1)])
        client.publish(f"esp32/{DEVICE}/sensors", b"{}", qos=1).wait_for_publish(5)
        log = reader.wait_for(
            lambda log: any(len(c.subscriptions) == 2 for c in log.connects_of(client_id=DEVICE))
            and bool(log.publishes_of(DEVICE)),
            timeout=10,
            what="the client's SUBSCRIBE and PUBLISH",
        )
    finally:
        client.disconnect()
        client.loop_stop()
    [connect] = log.connects_of(client_id=DEVICE)
    assert connect.keepalive_s == 15 and connect.clean_session is False and connect.username == DEVICE
    assert connect.will == Will(f"esp32/{DEVICE}/status", len(json.dumps({"state": "offline"})), qos=1, retain=True)
    assert connect.topic_filters == [f"esp32/{DEVICE}/command", f"config/update/{DEVICE}"]
    assert [(p.topic, p.qos, p.retain) for p in log.publishes_of(DEVICE)] == [(f"esp32/{DEVICE}/sensors", 1, False)]


def test_amqtt_has_no_protocol_log(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    amqtt = AmqttBroker(tmp_path)
    assert "protocol_log" not in amqtt.features
    with pytest.raises(BrokerUnsupported, match="protocol_log"):
        amqtt.protocol_log()
