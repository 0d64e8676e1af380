"""The MQTT session as the broker sees it: DEVICE_CONTRACT.md §3 and §8.

What the device sends at the protocol level (CONNECT: client id, keepalive, clean-session
flag, last will; SUBSCRIBE: its topic filters; PUBLISH: QoS) is read back from the
embedded mosquitto's log (`broker.protocol_log()`, asked for with
``requires("broker_protocol_log")``). What a newcomer sees on the status topic, the
retained status and will with their flags, through a fresh subscriber that connects after
the fact (``fresh_subscriber``).
"""

from __future__ import annotations

import pytest

from hil.device import contract
from hil.services.broker_log import BrokerLog
from hil.services.mqtt import MqttObserver, Received
from hil.session import ONLINE_TIMEOUT_S, RigSession
from tests.hil.live import wait_until_live
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def state_is(state: str):
    return lambda m: m.json()["state"] == state


def reconnect(broker, network, console):
    """Cut the device's connection (RST) and return the broker log's mark from before it:
    the CONNECT that follows is one of "every connect"."""
    log = broker.protocol_log()
    mark = log.mark()
    network.reset_all()
    console.expect(contract.MQTT_DISCONNECTED, timeout=30)
    console.expect(contract.MQTT_CONNECTED, timeout=30)
    return log, mark


def readings_within(hil_session, count: int) -> float:
    """Long enough for ``count`` readings at the session's measurement interval, and slack."""
    return count * setting(hil_session, "measurement_interval_s") + 10


def device_user(broker, dut) -> str:
    """The device's broker account: how its CONNECT is found whatever client id it used."""
    return broker.credentials(dut.device_id).username


def assert_connects_as_the_contract_says(log, mark, user: str, did: str) -> None:
    """Every CONNECT by the device's account since ``mark`` (one, unless an attempt failed):
    client id = device_id, keepalive 15 s, clean session off, the will on its status topic at
    QoS 1 retained; and the status published after the last of them retained (C3.5)."""
    status = contract.status_topic(did)

    def status_published(log) -> bool:
        return any(log.publishes_of(c.client_id, status) for c in log.connects_of(username=user))

    seen = log.wait_for(status_published, since=mark, timeout=15, what=f"a CONNECT by {user!r} and its status PUBLISH")
    connects = seen.connects_of(username=user)
    for connect in connects:
        assert connect.client_id == did, f"client id {connect.client_id!r}, not the device_id {did!r}"
        assert connect.keepalive_s == contract.MQTT_KEEPALIVE_S, (
            f"keepalive {connect.keepalive_s} s, contract {contract.MQTT_KEEPALIVE_S} s"
        )
        assert connect.clean_session is False, "clean session on: commands sent while offline are lost"
        assert connect.will is not None, "no last will"
        assert connect.will.topic == status, f"will on {connect.will.topic!r}, not {status!r}"
        assert (connect.will.qos, connect.will.retain) == (1, True), (
            f"will at QoS {connect.will.qos}, retained {connect.will.retain}: contract QoS 1, retained"
        )
    online = [p for p in seen.publishes_of(connects[-1].client_id, status) if p.line > connects[-1].line]
    assert online and online[0].retain, f"the status after the connect was published without retain: {online}"


@pytest.mark.requires("broker_protocol_log", "network_faults")
@pytest.mark.clause("C3.1", "C3.2", "C3.3", "C3.4", "C3.5", "C3.11")
@pytest.mark.guards(
    "default_client_id", "keepalive_120s", "clean_session", "no_lwt", "will_qos0", "will_not_retained",
    "online_not_retained", "clean_session_at_boot",
)  # fmt: skip
def test_every_connect_carries_the_device_id_keepalive_persistent_session_and_will(
    dut, broker, network, console, mqtt, hil_session
) -> None:
    """A reconnect (the connection cut) and the first connect of a boot (after `reset`):
    "every connect" is both, and a device off or restarting is offline too (C3.3)."""
    did = dut.device_id
    user = device_user(broker, dut)
    log, mark = reconnect(broker, network, console)
    assert_connects_as_the_contract_says(log, mark, user, did)
    mark, since = log.mark(), mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "reset"})
    mqtt.wait_for(contract.status_topic(did), lambda m: m.json()["state"] == "online", since=since, timeout=ONLINE_TIMEOUT_S)
    assert_connects_as_the_contract_says(log, mark, user, did)
    assert_nothing_counted_dropped_in_a_young_boot(mqtt, did, hil_session)


def assert_nothing_counted_dropped_in_a_young_boot(mqtt: MqttObserver, did: str, hil_session: RigSession) -> None:
    """C3.11: only an overflow of the offline queue drops readings and counts them, and no
    boot younger than the queue's length in measurement periods can have overflowed it (it
    holds `OFFLINE_QUEUE_LENGTH` readings): its `dropped_readings` is 0, not a count carried
    over from an earlier boot or an uninitialised counter (a loss that never happened)."""
    since = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    health = mqtt.wait_for(contract.health_topic(did), since=since, timeout=15)[0].json()
    young = contract.OFFLINE_QUEUE_LENGTH * setting(hil_session, "measurement_interval_s")
    assert health["uptime_s"] < young, f"a boot of {health['uptime_s']} s is no fresh boot: {health}"
    assert health["dropped_readings"] == 0, (
        f"dropped_readings {health['dropped_readings']} {health['uptime_s']} s into a boot: fewer than "
        f"{contract.OFFLINE_QUEUE_LENGTH} readings were measured, so none can have been dropped ({health})"
    )


@pytest.mark.requires("broker_protocol_log", "network_faults")
@pytest.mark.clause("C8.6", "C3.3")
@pytest.mark.guards("wildcard_subscription", "subscribes_qos0")
def test_the_device_subscribes_to_exactly_its_own_topics(dut, broker, network, console, hil_session) -> None:
    """Its own request topics, no wildcard, on every connect; the command topic at QoS 1 at
    least (C3.3: a broker keeps for an offline persistent session only what was subscribed
    above QoS 0, so a command sent meanwhile is lost to a QoS 0 subscription)."""
    did = dut.device_id
    expected = contract.device_subscriptions(did)
    log, mark = reconnect(broker, network, console)
    user = device_user(broker, dut)
    sensors = contract.sensors_topic(did)

    def settled(log) -> bool:
        # Its subscriptions made, and two readings published after the last of them: a
        # device subscribes when it connects, not minutes later.
        connects = log.connects_of(username=user)
        connect = connects[-1] if connects else None
        if connect is None or len(connect.subscriptions) < len(expected):
            return False
        readings = [p for p in log.publishes_of(connect.client_id, sensors) if p.line > connect.line]
        return len(readings) >= 2

    seen = log.wait_for(settled, since=mark, timeout=readings_within(hil_session, 3), what=f"{user!r}'s SUBSCRIBEs and two readings after them")
    connect = seen.connects_of(username=user)[-1]
    filters = connect.topic_filters
    assert not [f for f in filters if "+" in f or "#" in f], f"wildcard subscription(s): {filters}"
    assert sorted(set(filters)) == sorted(expected), f"subscribed to {filters}, contract: {list(expected)}"
    assert not connect.unsubscribed, f"unsubscribed {connect.unsubscribed}"
    command = contract.command_topic(did)
    below = [(s.topic_filter, s.qos) for s in connect.subscriptions if s.topic_filter == command and s.qos < 1]
    assert not below, f"subscribed to its command topic at QoS 0 {below}: nothing is kept for it while it is offline"


def telemetry_topics(did: str) -> tuple[str, ...]:
    """What C3.9's "telemetry" covers here: what the device reports of its own accord on
    §4's topics (readings, health, metrics, alerts, mirrored logs). Not the answers to a
    request (command/ack, config/status, ota/status, programs/status), the status (its QoS
    is the will's, C3.4) or a program's own `programs/<suffix>`: the contract gives them no
    QoS."""
    return (contract.sensors_topic(did), contract.health_topic(did), contract.metrics_topic(did),
            contract.alerts_topic(did), contract.logs_topic(did))  # fmt: skip


@pytest.mark.requires("broker_protocol_log")
@pytest.mark.clause("C3.9")
@pytest.mark.guards("telemetry_qos0", "reports_qos0")
def test_telemetry_is_published_at_qos_1(dut, broker, mqtt, hil_session) -> None:
    """Three readings, a heartbeat, metrics, and the alert and mirrored warning of a rejected
    config update: each PUBLISH at QoS 1 in the broker's log, and delivered to the observer
    at QoS 1. (Whether readings are retained the contract does not say, so neither does
    this test.)"""
    did = dut.device_id
    sensors = contract.sensors_topic(did)
    telemetry = telemetry_topics(did)
    log = broker.protocol_log()
    mark, since = log.mark(), mqtt.mark()
    mqtt.publish(contract.config_update_topic(did), {"measurement_interval_s": 0})  # an alert and a log
    periods = [3 * setting(hil_session, "measurement_interval_s"), setting(hil_session, "heartbeat_interval_s"),
               setting(hil_session, "status_report_interval_s")]  # fmt: skip
    wait_s = max(periods) * 1.5 + 10

    def each_seen(log) -> bool:
        counts = {topic: len([p for p in log.publishes if p.topic == topic]) for topic in telemetry}
        return counts[sensors] >= 3 and all(counts.values())

    seen = log.wait_for(each_seen, since=mark, timeout=wait_s, what=f"three readings and a publish on each of {telemetry}")
    published = [p for p in seen.publishes if p.topic in telemetry]
    not_qos1 = sorted({(p.topic, p.qos) for p in published if p.qos != 1})
    assert not_qos1 == [], f"telemetry published below QoS 1 (topic, QoS): {not_qos1}"
    # The observer (subscribed at QoS 1) gets them at the QoS they were sent with.
    received = mqtt.wait_for(sensors, since=since, count=3, timeout=readings_within(hil_session, 3))
    assert {m.qos for m in received} == {1}, f"delivered at QoS {[m.qos for m in received]}"


@pytest.mark.requires("broker_protocol_log", "network_faults")
@pytest.mark.clause("C3.9", "C3.10")
@pytest.mark.guards("backlog_qos0")
def test_readings_queued_while_offline_are_published_at_qos_1_too(dut, broker, network, console, mqtt, hil_session) -> None:
    """C3.9 holds for every reading, not only the live ones: the backlog a reconnect sends
    (C3.10) goes at QoS 1 as well. The path refused (connects and the live connection) for
    two measurement intervals at least, by the delays the device announces, so readings
    queue; then every PUBLISH on `sensors` after the reconnect is QoS 1 in the broker's log."""
    did = dut.device_id
    sensors = contract.sensors_topic(did)
    interval = setting(hil_session, "measurement_interval_s")
    mqtt.wait_for(sensors, since=mqtt.mark(), timeout=readings_within(hil_session, 1))  # up
    log, cut = broker.protocol_log(), console.mark()
    network.partition(120.0)
    network.reset_all()
    offline, lost = 0.0, console.expect(contract.MQTT_DISCONNECTED, since=cut, timeout=30)
    while offline < 2 * interval:  # each line announces the delay before the next attempt
        offline += int(lost["retry_ms"]) / 1000
        lost = console.expect(contract.MQTT_DISCONNECTED, timeout=45)
    mark, healed = log.mark(), mqtt.mark()
    network.heal()
    wait_until_live(mqtt, sensors, healed, interval)  # the backlog, then live readings
    delivered = {m.json()["seq"] for m in mqtt.collect(sensors, since=healed)}
    user = device_user(broker, dut)

    def all_logged(log: BrokerLog) -> bool:
        ids = {c.client_id for c in log.connects_of(username=user)}
        return len([p for p in log.publishes if p.topic == sensors and p.client_id in ids]) >= len(delivered)

    seen = log.wait_for(all_logged, since=mark, timeout=15, what=f"the {len(delivered)} readings' PUBLISHes after the reconnect")
    ids = {c.client_id for c in seen.connects_of(username=user)}
    published = [p for p in seen.publishes if p.topic == sensors and p.client_id in ids]
    below = [(p.line, p.qos) for p in published if p.qos != 1]
    assert not below, (
        f"{len(below)} of the {len(published)} readings published after the reconnect (a backlog of those measured in "
        f"{offline:.1f} s offline, then live ones) went below QoS 1 (log line, QoS): {below}"
    )


@pytest.mark.clause("C3.5")
@pytest.mark.guards("online_not_retained")
def test_a_newcomer_sees_the_online_status_retained_describing_the_running_boot(
    dut, mqtt, firmware, fresh_subscriber, hil_session
) -> None:
    did = dut.device_id
    status = contract.status_topic(did)
    mark = mqtt.mark()
    mqtt.wait_for(contract.sensors_topic(did), since=mark, timeout=readings_within(hil_session, 1))  # up
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    health = mqtt.wait_for(contract.health_topic(did), since=mark, timeout=15)[0].json()
    newcomer = fresh_subscriber(status)
    kept = newcomer.collect(status)
    assert kept, f"nothing retained on {status}: a newcomer cannot tell the device is online"
    [message] = kept
    assert message.retain, "the status a newcomer got was not flagged retained"
    body = message.json()
    assert body["state"] == "online", f"retained status {body} while the device is up"
    assert body["version"] == firmware.version == health["version"], f"{body} vs firmware {firmware.version}"
    assert (body["boot_count"], body["reset_reason"]) == (health["boot_count"], health["reset_reason"]), (
        f"retained status {body} does not describe the running boot (health: {health})"
    )


# The latest the broker may publish the will of a device that went silent: 1.5 keepalive
# periods after its last packet (MQTT 3.1.1 §3.1.2.10; a board that loses power sends
# nothing, not even a FIN), and one more period for the broker's sweep and the delivery.
WILL_AFTER_SILENCE_S = 1.5 * contract.MQTT_KEEPALIVE_S + contract.MQTT_KEEPALIVE_S
# The earliest it may, from the device's last packet: 1.5 keepalive periods, less a second
# for a broker that keeps time in whole seconds (mosquitto 2.0 expires a client more than
# keepalive × 3 / 2 = 22 whole seconds after its last packet).
WILL_NOT_BEFORE_S = 1.5 * contract.MQTT_KEEPALIVE_S - 1


def assert_the_will_waited_for_the_keepalive(mqtt: MqttObserver, did: str, mark: int, will: Received, why: str) -> None:
    """A device whose link died silently (``why``) cannot be declared lost before its
    keepalive has run out: a will earlier than 1.5 × keepalive after the device's last
    message was set off by something other than the broker's expiry (a FIN or RST the
    device had no way to send). Its last message stands in for its last packet, which can
    only be later (a PINGREQ), so the bound holds a fortiori."""
    sent = [m.at for m in mqtt.collect(contract.device_publish_prefix(did) + "#", since=mark) if m.at < will.at]
    assert will.at - max(sent) >= WILL_NOT_BEFORE_S, (
        f"{why}: the will came {will.at - max(sent):.1f} s after the device's last message; a silent device is declared "
        f"lost only after 1.5 × keepalive ({1.5 * contract.MQTT_KEEPALIVE_S:g} s, less {1.5 * contract.MQTT_KEEPALIVE_S - WILL_NOT_BEFORE_S:g} s for a broker's whole seconds)"
    )


@pytest.mark.requires("wifi_control")
@pytest.mark.clause("C3.4", "C3.5")
@pytest.mark.guards("will_not_retained", "will_qos0", "no_lwt", "online_not_retained")
def test_after_an_ungraceful_loss_a_newcomer_sees_the_will_then_online_again(
    dut, mqtt, wifi, fresh_subscriber, hil_session
) -> None:
    did = dut.device_id
    status = contract.status_topic(did)
    mark = mqtt.mark()
    before = mqtt.wait_for(contract.sensors_topic(did), since=mark, timeout=readings_within(hil_session, 1))[0].json()
    wifi.ap(up=False)  # no DISCONNECT: the broker publishes the will once it sees the link gone
    will = mqtt.wait_for(status, state_is("offline"), since=mark, timeout=40)[0]
    gone = fresh_subscriber(status).collect(status)
    assert [m.json() for m in gone] == [{"state": "offline"}], f"a newcomer after the loss got {[m.payload for m in gone]}"
    assert gone[0].retain and gone[0].qos == 1, f"the will was kept retained={gone[0].retain} at QoS {gone[0].qos}"
    if hil_session.rig.timing.silent_tcp_on_reset:
        # A board whose TCP goes silent when its chip stops (a real one; the real-board
        # profile) is as silent when its AP goes: off the air, nothing it sends reaches the
        # broker. (A virtual board on the default profile closes the connection instead.)
        assert_the_will_waited_for_the_keepalive(mqtt, did, mark, will, "the AP gone")
    back_mark = mqtt.mark()
    wifi.ap(up=True)
    mqtt.wait_for(status, state_is("online"), since=back_mark, timeout=60)
    back = fresh_subscriber(status).collect(status)
    assert len(back) == 1 and back[0].retain, f"after the return a newcomer got {[(m.payload, m.retain) for m in back]}"
    body = back[0].json()
    assert body["state"] == "online" and body["boot_count"] == before["boot_count"], f"retained {body} after the return"


@pytest.mark.requires("power_control")
@pytest.mark.clause("C3.4", "C3.5")
def test_after_a_power_cut_a_newcomer_sees_the_will_then_the_next_boot_online(
    dut, mqtt, power, fresh_subscriber, hil_session
) -> None:
    """The loss a chip cannot announce: its supply cut. The broker publishes the will
    (a board without power says no goodbye, so nothing it did before may have stood in for
    one), retained at QoS 1 for a newcomer; back on, the retained status is the new boot's
    `online` (POWERON, boot_count one higher)."""
    did = dut.device_id
    status = contract.status_topic(did)
    mark = mqtt.mark()
    before = mqtt.wait_for(contract.sensors_topic(did), since=mark, timeout=readings_within(hil_session, 1))[0].json()
    power.off()
    try:
        will = mqtt.wait_for(status, state_is("offline"), since=mark, timeout=WILL_AFTER_SILENCE_S)[0]
        gone = fresh_subscriber(status).collect(status)
    finally:
        power.on()
    assert [(m.json(), m.retain, m.qos) for m in gone] == [({"state": "offline"}, True, 1)], (
        f"with the device's power off a newcomer got {[(m.payload, m.retain, m.qos) for m in gone]}"
    )
    if hil_session.rig.timing.silent_tcp_on_reset:
        # A board whose TCP dies with its power (a real one; the real-board profile).
        assert_the_will_waited_for_the_keepalive(mqtt, did, mark, will, "the power cut")
    mqtt.wait_for(status, state_is("online"), since=mark, timeout=ONLINE_TIMEOUT_S)
    [back] = fresh_subscriber(status).collect(status)
    body = back.json()
    assert back.retain and (body["state"], body["reset_reason"], body["boot_count"]) == (
        "online", "POWERON", before["boot_count"] + 1
    ), f"after the power came back a newcomer got {body} (retained {back.retain}), boot before {before['boot_count']}"
