"""Connectivity: outages of the broker, the network path and the Wi-Fi, with no reading lost.

DEVICE_CONTRACT.md §3: persistent session, last will on an ungraceful loss, reconnect with
exponential backoff and jitter (reset after a connect), failover over `brokers`, readings
queued while offline and sent in order (`seq` without gaps).
"""

from __future__ import annotations

import itertools
import time

import pytest

from hil import contract
from hil.charts import Instant, Span, timeline_chart
from hil.report import attach_svg
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def stay_offline(console, seconds: float) -> int:
    """Wait for the device's reconnect attempts until it has been offline ``seconds`` at least.

    Each disconnect line announces the delay before the next attempt, so the delays of all
    but the latest line bound the time offline from below: an event to wait for, where a
    fixed sleep would guess. Returns how many disconnect lines were seen.
    """
    offline = 0.0
    lines = 0
    while True:
        lost = console.expect(contract.MQTT_DISCONNECTED, timeout=45)
        lines += 1
        if offline >= seconds:
            return lines
        offline += int(lost["retry_ms"]) / 1000


def offline_long_enough(hil_session) -> float:
    """Two measurement intervals: at least one reading is taken while the device is offline,
    so a firmware that drops offline readings is seen to."""
    return 2 * setting(hil_session, "measurement_interval_s")


def state_is(state: str):
    return lambda m: m.json()["state"] == state


@pytest.mark.guards("offline_drop")
def test_a_broker_restart_loses_no_reading(dut, mqtt, broker, hil_session) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mark, serial = mqtt.mark(), dut.console.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    outage = [time.monotonic()]
    try:
        broker.stop()
        stay_offline(dut.console, offline_long_enough(hil_session))
        broker.start()
        outage.append(time.monotonic())
        after = mqtt.mark()
        mqtt.wait_for(topic, since=after, count=3, timeout=60)
        mqtt.assert_gapless(topic, since=mark, single_boot=True)
    finally:
        attach_reconnect_timeline(dut, mqtt, topic, mark, serial, outage)


def attach_reconnect_timeline(dut, mqtt, topic: str, mark: int, serial, outage: list[float]) -> None:
    """The outage, the device's attempts and recovery, and every reading by arrival time
    (a queue delivered on reconnect shows as a burst), on the report."""
    spans = [Span("broker", outage[0], outage[-1] if len(outage) > 1 else time.monotonic(), "down")]
    instants = [
        Instant("device", line.monotonic, label)
        for line in dut.console.records(serial)
        for label, pattern in (("disconnected", contract.MQTT_DISCONNECTED), ("connected", contract.MQTT_CONNECTED))
        if pattern.search(line.text)
    ]
    instants += [Instant("readings", m.at) for m in mqtt.collect(topic, since=mark)]
    attach_svg("reconnect timeline", timeline_chart(spans, instants, title="broker restart: outage, attempts, readings"))


@pytest.mark.requires("wifi_control")
@pytest.mark.guards("no_lwt")
def test_wifi_loss_fires_the_will_and_the_device_returns(dut, mqtt, wifi) -> None:
    status = contract.status_topic(dut.device_id)
    mark = mqtt.mark()
    wifi.ap(up=False)
    will = mqtt.wait_for(status, lambda m: m.json()["state"] == "offline", since=mark, timeout=40)[0]
    assert will.json() == {"state": "offline"}
    wifi.ap(up=True)
    back = mqtt.wait_for(status, lambda m: m.json()["state"] == "online", since=mark, timeout=60)[0].json()
    assert back["boot_count"] >= 1


# -- the network path ---------------------------------------------------------------------
def partition(network) -> None:
    """Refused connects, and the live connection cut (RST): the device knows at once."""
    network.partition(120.0)
    network.reset_all()


def blackhole(network) -> None:
    """Nothing forwarded, nothing closed: only the missing PUBACKs tell the device."""
    network.blackhole(True)


def half_open(network) -> None:
    """The live connection silenced for good (its peer gone without FIN or RST)."""
    network.half_open()


@pytest.mark.requires("network_faults")
@pytest.mark.parametrize(
    ("fault", "retries_refused"),
    [
        pytest.param(partition, True, id="partition", marks=pytest.mark.guards("offline_drop")),
        pytest.param(blackhole, False, id="blackhole"),
        pytest.param(half_open, False, id="half-open"),
    ],
)
def test_a_network_fault_ends_in_a_reconnect_with_no_reading_lost(
    dut, mqtt, network, console, hil_session, fault, retries_refused
) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    fault(network)
    # The loss is noticed (a dead path only by its missing acknowledgements: QoS 1
    # publishes time out); with a partition the retries are refused too, until the device
    # has been offline long enough to measure while offline.
    stay_offline(console, offline_long_enough(hil_session) if retries_refused else 0.0)
    network.heal()
    console.expect(contract.MQTT_CONNECTED, timeout=45)
    after = mqtt.mark()
    mqtt.wait_for(topic, since=after, count=3, timeout=60)  # the queue, then live readings
    mqtt.assert_gapless(topic, since=mark, single_boot=True)


@pytest.mark.requires("network_faults")
def test_readings_and_commands_still_flow_over_a_slow_path(dut, mqtt, network, console) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mqtt.wait_for(topic, since=mqtt.mark(), timeout=15)
    network.set_latency(0.25)  # each way: a 0.5 s round trip for every QoS 1 publish
    quiet = console.mark()
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "report"})
    ack = mqtt.wait_for(contract.command_ack_topic(dut.device_id), since=mark, timeout=20)[0].json()
    assert ack == {"cmd": "report", "ok": True}
    mqtt.wait_for(topic, since=mark, count=4, timeout=30)
    mqtt.assert_gapless(topic, since=mark, single_boot=True)
    dropped = [line for line in console.lines(since=quiet) if contract.MQTT_DISCONNECTED.search(line)]
    assert not dropped, f"the connection dropped under latency: {dropped}"


# -- Wi-Fi --------------------------------------------------------------------------------
@pytest.mark.requires("wifi_control")
@pytest.mark.guards("no_wifi_reconnect", "offline_drop")
def test_the_device_rejoins_a_returning_ap_with_no_reading_lost(dut, mqtt, wifi, console) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    before = mqtt.wait_for(topic, since=mark, timeout=15)[0].json()
    wifi.ap(up=False)
    console.expect(contract.WIFI_WARNING, timeout=30)  # the AP is gone
    console.expect(contract.WIFI_WARNING, timeout=30)  # a join that found no AP: time offline
    wifi.ap(up=True)
    console.expect(contract.WIFI_CONNECTED, timeout=30)
    back = mqtt.wait_for(contract.status_topic(dut.device_id), state_is("online"), since=mark, timeout=40)
    assert back[0].json()["boot_count"] == before["boot_count"], "rebooted instead of rejoining"
    mqtt.wait_for(topic, since=mqtt.mark(), count=3, timeout=40)
    mqtt.assert_gapless(topic, since=mark, single_boot=True)


@pytest.mark.requires("wifi_control")
@pytest.mark.guards("wifi_fail_reboot")
def test_a_wrong_wifi_passphrase_is_retried_and_logged_without_a_reboot(dut, mqtt, wifi, console) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    before = mqtt.wait_for(topic, since=mark, timeout=15)[0].json()
    quiet = console.mark()
    wifi.ap(password="not-the-provisioned-passphrase")
    # Dropped by the AP, then every join fails: each attempt says so, and none ends in a reset.
    for _ in range(3):
        console.expect(contract.WIFI_WARNING, timeout=30)
    resets = [line for line in console.lines(since=quiet) if contract.ROM_RESET.search(line)]
    assert not resets, f"a wrong passphrase made the device reboot ({len(resets)}x): {resets[0]}"
    wifi.restore()
    console.expect(contract.WIFI_CONNECTED, timeout=30)
    back = mqtt.wait_for(contract.status_topic(dut.device_id), state_is("online"), since=mark, timeout=40)
    assert back[0].json()["boot_count"] == before["boot_count"], "rebooted instead of rejoining"


# -- reconnect policy ---------------------------------------------------------------------
@pytest.mark.requires("network_faults")
@pytest.mark.guards("no_backoff")
def test_reconnect_attempts_back_off_exponentially_with_jitter(dut, mqtt, broker, network, console) -> None:
    first, cap = contract.RECONNECT_BACKOFF_S
    jitter = contract.RECONNECT_JITTER
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), timeout=15)
    since = len(network.timeline)
    broker.stop()  # connected until now: the backoff starts from its first delay
    try:
        lost = [console.expect(contract.MQTT_DISCONNECTED, timeout=45) for _ in range(4)]
    finally:
        broker.start()
    # On the wire, by the host's clock: the attempts that reached the proxy while the broker
    # was down are as far apart as the device said they would be (a log is not a proof).
    attempts = [at for at, event in network.timeline[since:] if event.startswith("conn ") and ": accepted" in event]
    delays = [int(m["retry_ms"]) / 1000 for m in lost]
    nominal = [min(first * 2**k, cap) for k in range(len(delays))]
    for delay, base in zip(delays, nominal, strict=True):
        assert base * (1 - jitter) - 0.001 <= delay <= base * (1 + jitter), f"delays {delays}, contract {nominal} ±{jitter:.0%}"
    assert any(abs(d - b) > 0.001 for d, b in zip(delays, nominal, strict=True)), f"no jitter: {delays}"
    # The attempts really are that far apart (device clock, from one line to the next).
    spacing = [(int(b["ms"]) - int(a["ms"])) / 1000 for a, b in itertools.pairwise(lost)]
    for gap, delay in zip(spacing, delays, strict=False):
        assert gap >= delay - 0.05, f"attempts {spacing} s apart, announced {delays}"
    assert len(attempts) >= 3, f"{len(attempts)} connection attempts reached the broker's path: {network.timeline[since:]}"
    wire = [b - a for a, b in itertools.pairwise(attempts[:3])]
    for gap, delay in zip(wire, delays[1:3], strict=True):
        assert delay - 0.1 <= gap <= delay + 2.0, f"attempts {wire} s apart on the wire, announced {delays}"
    console.expect(contract.MQTT_CONNECTED, timeout=45)
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), timeout=15)  # session up
    network.reset_all()  # after a successful connect the backoff starts over
    again = console.expect(contract.MQTT_DISCONNECTED, timeout=30)
    assert first * (1 - jitter) - 0.001 <= int(again["retry_ms"]) / 1000 <= first * (1 + jitter)
    console.expect(contract.MQTT_CONNECTED, timeout=30)


# -- last will ------------------------------------------------------------------------------
@pytest.mark.requires("power_control", "network_faults")
@pytest.mark.guards("will_on_shutdown")
def test_a_graceful_shutdown_says_offline_itself_and_fires_no_will(dut, mqtt, power, network) -> None:
    status = contract.status_topic(dut.device_id)
    mark = mqtt.mark()
    mqtt.publish(contract.emergency_topic(dut.device_id), contract.EMERGENCY_SHUTDOWN)
    offline = mqtt.wait_for(status, state_is("offline"), since=mark, timeout=15)[0]
    assert offline.json() == {"state": "offline"}
    network.wait_for_connections(0, timeout=45)  # the device hung up (a will would fire now)
    woken = mqtt.mark()
    power.cycle()  # deep sleep lasts until the next power-on
    back = mqtt.wait_for(status, state_is("online"), since=woken, timeout=60)[0]
    said = [m.json() for m in mqtt.collect(status, since=mark) if m.at < back.at]
    assert said == [{"state": "offline"}], f"a clean disconnect published the will as well: {said}"


# -- persistent session -------------------------------------------------------------------
@pytest.mark.requires("network_faults")
@pytest.mark.guards("clean_session")
def test_a_command_sent_while_the_device_is_offline_arrives_when_it_returns(dut, mqtt, network, console) -> None:
    did = dut.device_id
    mark = mqtt.mark()
    mqtt.wait_for(contract.sensors_topic(did), since=mark, timeout=15)  # the session is up
    partition(network)
    console.expect(contract.MQTT_DISCONNECTED, timeout=30)
    mqtt.wait_for(contract.status_topic(did), state_is("offline"), since=mark, timeout=30)  # the broker knows
    sent = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})  # QoS 1, kept for the session
    network.heal()
    ack = mqtt.wait_for(contract.command_ack_topic(did), since=sent, timeout=45)[0].json()
    assert ack == {"cmd": "report", "ok": True}
    health = mqtt.wait_for(contract.health_topic(did), since=sent, timeout=30)[0].json()
    assert not contract.validate_payload("health", health)


# -- failover -------------------------------------------------------------------------------
@pytest.mark.requires("network_faults")
@pytest.mark.guards("no_failover")
def test_the_device_fails_over_to_the_next_broker(dut, mqtt, broker, restore_firmware, network, console) -> None:
    # Two addresses of the session's broker: the faulty path first, then the broker itself.
    primary, secondary = f"mqtt://{network.host}:{network.port}", broker.uri("plain")
    did = dut.device_id
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(did), {"brokers": [primary, secondary]})
    assert mqtt.wait_for(contract.config_status_topic(did), since=mark, timeout=15)[0].json()["ok"] is True
    assert console.expect(contract.MQTT_CONNECTED, timeout=60)["uri"] == primary  # after the restart
    boot = mqtt.wait_for(contract.status_topic(did), state_is("online"), since=mark, timeout=30)[0].json()
    mqtt.wait_for(contract.sensors_topic(did), lambda m: m.json()["boot_count"] == boot["boot_count"], since=mark, timeout=15)
    partition(network)
    for _ in range(1 + contract.BROKER_FAILOVER_ATTEMPTS):  # the loss, then the failed attempts
        console.expect(contract.MQTT_DISCONNECTED, timeout=45)
    assert console.expect(contract.MQTT_CONNECTED, timeout=60)["uri"] == secondary
    moved = mqtt.mark()
    mqtt.wait_for(contract.sensors_topic(did), since=moved, count=2, timeout=30)
    network.heal()  # before restore_firmware brings back the provisioned (proxied) broker
