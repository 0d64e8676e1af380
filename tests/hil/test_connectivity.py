"""Connectivity: outages of the broker, the network path and the Wi-Fi, with no reading lost.

DEVICE_CONTRACT.md §3: persistent session, last will on an ungraceful loss, reconnect with
exponential backoff and jitter to its cap (reset after a connect), failover over `brokers`
round robin, readings queued while offline and sent in order (`seq` without gaps, and in
order within a boot: `assert_gapless` checks both), each the reading it was when measured:
its `timestamp` is the measurement's, so a backlog sent in one burst still reads one
measurement interval apart on the device's clock (`assert_measured_apart`). What the broker
itself sees (CONNECT, SUBSCRIBE, QoS, retained status) is in test_mqtt_session.py.

The serial port's account of it (§2): each lost connection and each failed attempt is a
`mqtt: disconnected` line whose `retry_ms` is the delay before the next attempt, the loss
itself announcing the backoff's first delay; `mqtt: connected` names the URI in use (after
a failover, not the provisioned one); `wifi: connected` the station's RSSI; log times never
go back within a boot.

Of C3.11 only the count is asserted here: an outage that lost nothing leaves
`dropped_readings` where it was. The overflow itself (512 readings, the oldest dropped and
counted) is not: at the fastest measurement interval the contract allows (1 s) it takes 8.5
minutes offline to fill, more than the whole suite's budget; `tests/hil/test_soak.py`
(HIL_SOAK=1) and the firmware model's unit test (tests/unit/sim/firmware/test_outbox.py)
cover it.
"""

from __future__ import annotations

import itertools
import math
import re
import time

import pytest

from hil.device import contract
from hil.device.periodic import spacing_problems, wait_timeout
from hil.reporting.charts import Instant, Span, timeline_chart
from hil.reporting.report import attach_svg
from hil.services.broker import free_port
from hil.services.netfault import FaultProxy
from tests.hil.leaks import leaked, secret_texts
from tests.hil.live import broker_uses_tls, wait_until_live
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def stay_offline(console, seconds: float, since) -> list[re.Match[str]]:
    """Wait for the device's reconnect attempts until it has been offline ``seconds`` at least.

    Each disconnect line announces the delay before the next attempt, so the delays of all
    but the latest line bound the time offline from below: an event to wait for, where a
    fixed sleep would guess. Returns the disconnect lines seen, from the first after the
    console mark ``since`` (taken before the fault) on.
    """
    offline = 0.0
    lost = [console.expect(contract.MQTT_DISCONNECTED, timeout=45, since=since)]
    while offline < seconds:
        offline += int(lost[-1]["retry_ms"]) / 1000
        lost.append(console.expect(contract.MQTT_DISCONNECTED, timeout=45))
    return lost


def assert_the_loss_is_announced(lost: re.Match[str]) -> None:
    """C2.8, C3.7: the end of a live session is a disconnect line of its own (not only the
    failed attempts after it), announcing the backoff's first delay, from which it starts
    again after every connect. ``lost`` is the first disconnect line after the fault."""
    first, jitter = contract.RECONNECT_BACKOFF_S[0], contract.RECONNECT_JITTER
    delay = int(lost["retry_ms"]) / 1000
    assert first * (1 - jitter) - 0.001 <= delay <= first * (1 + jitter), (
        f"the first disconnect line after the loss of a live session announces {delay} s, not the first "
        f"delay {first} s ±{jitter:.0%}: {lost.group(0)!r} (the loss itself not announced, or the backoff not reset)"
    )


def health_now(mqtt, did: str) -> dict:
    """Health on the `report` command (C4.6): what the device says of itself at this moment."""
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    return mqtt.wait_for(contract.health_topic(did), since=mark, timeout=contract.MQTT_KEEPALIVE_S)[0].json()


def offline_long_enough(hil_session) -> float:
    """Two measurement intervals: at least one reading is taken while the device is offline,
    so a firmware that drops offline readings is seen to."""
    return 2 * setting(hil_session, "measurement_interval_s")


def state_is(state: str):
    return lambda m: m.json()["state"] == state


def assert_measured_apart(mqtt, topic: str, since: int, interval: float) -> None:
    """C3.10, C4.1: a reading queued while offline is the same reading sent later, with the
    `timestamp` of its measurement. Ordered by `seq` (a repeat counted once), the readings
    since ``since`` are one measurement interval apart on the device's clock
    (`spacing_problems`, no receive times: the backlog arrives as a burst by design); a
    backlog stamped when it is sent reads as several readings of one instant."""
    first: dict[int, float] = {}
    for message in mqtt.collect(topic, since=since):
        body = message.json()
        first.setdefault(body["seq"], body["timestamp"])
    stamps = [first[seq] for seq in sorted(first)]
    problems = spacing_problems(interval, device_times=stamps, what="readings by seq, queued ones included")
    assert not problems, "\n".join(problems) + f"\n  timestamps by seq: {[round(t, 3) for t in stamps]}"


@pytest.mark.clause("C3.10", "C3.11", "C4.3", "C4.1", "C2.8")
@pytest.mark.guards("offline_drop", "backlog_lifo", "backlog_stamped_when_sent", "backlog_counted_dropped")
def test_a_broker_restart_loses_no_reading(dut, mqtt, broker, hil_session) -> None:
    """The broker down for two measurement intervals: the loss announced, every reading
    measured meanwhile delivered in order with its own time, and none counted in
    `dropped_readings` (C3.11: only an overflow drops and counts; nothing was dropped)."""
    did = dut.device_id
    topic = contract.sensors_topic(did)
    interval = setting(hil_session, "measurement_interval_s")
    mark, serial = mqtt.mark(), dut.console.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    dropped_before = health_now(mqtt, did)["dropped_readings"]
    outage = [time.monotonic()]
    try:
        stopped = dut.console.mark()
        broker.stop()
        lost = stay_offline(dut.console, offline_long_enough(hil_session), since=stopped)
        broker.start()
        outage.append(time.monotonic())
        after = mqtt.mark()
        wait_until_live(mqtt, topic, after, interval)  # the queue, then live readings
        mqtt.assert_gapless(topic, since=mark, single_boot=True)
        assert_measured_apart(mqtt, topic, mark, interval)
        assert_the_loss_is_announced(lost[0])
        health = health_now(mqtt, did)
        assert health["dropped_readings"] == dropped_before, (
            f"dropped_readings {dropped_before} before the outage, {health['dropped_readings']} after it, "
            "though every reading measured meanwhile was delivered (no overflow: nothing dropped, nothing to count)"
        )
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
@pytest.mark.clause("C3.4", "C3.5")
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
@pytest.mark.clause("C3.10", "C4.3", "C4.1", "C2.8", "C3.7")
@pytest.mark.parametrize(
    ("fault", "retries_refused"),
    [
        pytest.param(
            partition, True, id="partition", marks=pytest.mark.guards("offline_drop", "backlog_lifo", "backlog_stamped_when_sent")
        ),
        pytest.param(blackhole, False, id="blackhole", marks=pytest.mark.guards("timeout_loss_unlogged")),
        pytest.param(half_open, False, id="half-open", marks=pytest.mark.guards("timeout_loss_unlogged")),
    ],
)
def test_a_network_fault_ends_in_a_reconnect_with_no_reading_lost(
    dut, mqtt, network, console, hil_session, fault, retries_refused
) -> None:
    topic = contract.sensors_topic(dut.device_id)
    interval = setting(hil_session, "measurement_interval_s")
    mark = mqtt.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    before_fault = console.mark()
    fault(network)
    # The loss is noticed (a dead path only by its missing acknowledgements: QoS 1
    # publishes time out) and announced; with a partition the retries are refused too,
    # until the device has been offline long enough to measure while offline.
    lost = stay_offline(console, offline_long_enough(hil_session) if retries_refused else 0.0, since=before_fault)
    assert_the_loss_is_announced(lost[0])
    network.heal()
    after = mqtt.mark()
    console.expect(contract.MQTT_CONNECTED, timeout=45)
    wait_until_live(mqtt, topic, after, interval)  # the queue, then live readings
    mqtt.assert_gapless(topic, since=mark, single_boot=True)
    assert_measured_apart(mqtt, topic, mark, interval)


@pytest.mark.requires("network_faults")
@pytest.mark.clause("C4.2", "C3.10", "C4.3", "C4.1")
def test_a_path_stalled_for_a_keepalive_and_back_carries_the_readings_again(dut, mqtt, network, hil_session) -> None:
    """A path that stalls for one keepalive (C3.2) and comes back on its own: held, not
    closed, and shorter than the broker's 1.5 × keepalive of patience (MQTT 3.1.1
    §3.1.2.10), so the session may outlive it on both ends. Whether the device noticed (a
    QoS 1 publish that went unacknowledged, and a new session) or not (its pings answered
    once the path is back), its readings flow again, the ones measured during the stall
    included: a device that gave up publishing but kept the session up is online and
    silent for good."""
    topic = contract.sensors_topic(dut.device_id)
    interval = setting(hil_session, "measurement_interval_s")
    stall = float(contract.MQTT_KEEPALIVE_S)
    mark = mqtt.mark()
    last = mqtt.wait_for(topic, since=mark, timeout=15)[-1].json()["seq"]
    network.partition(stall)  # heals itself after `stall`: no wait of the test's own
    # A reading measured after the stall (seq counts measurements, C4.3), so everything
    # queued during it is in before it (C3.10: in order). It comes once the path is back:
    # at worst after the longest backoff delay (C3.6) and a connect (the rig's timing).
    timing = hil_session.rig.timing
    reconnect = contract.RECONNECT_BACKOFF_S[1] * (1 + contract.RECONNECT_JITTER) + timing.broker_connect_s
    if broker_uses_tls(hil_session):
        reconnect += timing.tls_handshake_s
    after_stall = last + math.ceil(stall / interval) + 2  # one interval's margin for the device's clock
    mqtt.wait_for(
        topic,
        lambda m: m.json()["seq"] >= after_stall,
        since=mark,
        timeout=stall + reconnect + wait_timeout(interval, 2),
    )
    mqtt.assert_gapless(topic, since=mark, single_boot=True)
    assert_measured_apart(mqtt, topic, mark, interval)


@pytest.mark.requires("network_faults")
@pytest.mark.clause("C4.3", "C4.10")
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
def log_time_problems(lines: list[str]) -> list[str]:
    """C2.3: application lines of one boot whose milliseconds since boot go back."""
    stamped = [(int(m["ms"]), line) for line in lines if (m := contract.LOG_LINE.search(line))]
    return [f"{a!r} then {b!r}" for (ms_a, a), (ms_b, b) in itertools.pairwise(stamped) if ms_b < ms_a]


# A signal the AP returns with, unlike the rig's default, so the connect line is seen to
# report the station's RSSI rather than a constant.
RETURN_RSSI_DBM = -67
# How much weaker the signal then gets while the station stays joined: well above any
# C3's sensitivity, so a station that keeps its AP has no reason to leave it.
STEADY_RSSI_STEP_DB = 6


@pytest.mark.requires("wifi_control")
@pytest.mark.clause("C3.10", "C4.3", "C2.6", "C2.8", "C2.3")
@pytest.mark.guards("no_wifi_reconnect", "offline_drop", "wifi_loss_unlogged", "wifi_rssi_unsigned", "wifi_warnings_in_ticks")
def test_the_device_rejoins_a_returning_ap_with_no_reading_lost(dut, mqtt, wifi, console) -> None:
    """The AP away for a while: the Wi-Fi loss and the broker connection's loss each said on
    the serial port, the failed joins too, with times that never go back; back with
    another signal strength: rejoined in the same boot, `wifi: connected` on the
    provisioned SSID with that RSSI, and no reading lost. Then the signal changes again,
    the AP staying: no loss, no new join, the broker connection kept (an RSSI event is
    not a disconnect)."""
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    before = mqtt.wait_for(topic, since=mark, count=2, timeout=15)[0].json()  # up and measuring
    down = console.mark()
    wifi.ap(up=False)
    console.expect(contract.WIFI_WARNING, timeout=30)  # the AP is gone
    console.expect(contract.WIFI_WARNING, timeout=30)  # a join that found no AP: time offline
    # The broker connection went with the AP: a lost connection, which the mqtt tag says (C2.8).
    console.expect(contract.MQTT_DISCONNECTED, timeout=30, since=down)
    wifi.ap(up=True, rssi=RETURN_RSSI_DBM)  # the fixture puts the rig's own signal back
    joined = console.expect(contract.WIFI_CONNECTED, timeout=30)
    assert abs(int(joined["rssi"]) - RETURN_RSSI_DBM) <= wifi.rssi_tolerance_db, (
        f"{joined.group(0)!r}: the AP is received at {RETURN_RSSI_DBM} dBm (±{wifi.rssi_tolerance_db} dB)"
    )
    back = mqtt.wait_for(contract.status_topic(dut.device_id), state_is("online"), since=mark, timeout=40)
    assert back[0].json()["boot_count"] == before["boot_count"], "rebooted instead of rejoining"
    steady = console.mark()
    wifi.ap(rssi=RETURN_RSSI_DBM - STEADY_RSSI_STEP_DB)  # the same AP, a weaker signal: nothing to rejoin
    mqtt.wait_for(topic, since=mqtt.mark(), count=3, timeout=40)  # three measurement intervals of it
    mqtt.assert_gapless(topic, since=mark, single_boot=True)
    assert log_time_problems(console.lines(since=down)) == [], "log time went back within one boot (C2.3)"
    said = [line.strip() for line in console.lines(since=steady)
            if any(p.search(line) for p in (contract.WIFI_WARNING, contract.WIFI_CONNECTED, contract.MQTT_DISCONNECTED))]  # fmt: skip
    assert said == [], f"a change of signal strength, the AP staying, taken for a loss or a new join: {said}"


@pytest.mark.requires("wifi_control")
@pytest.mark.clause("C3.5", "C2.6", "C1.4")
@pytest.mark.guards("wifi_fail_reboot", "wifi_fail_logs_pass")
def test_a_wrong_wifi_passphrase_is_retried_and_logged_without_a_reboot(dut, mqtt, wifi, console, hil_session) -> None:
    """The AP's passphrase changed: each failed join says so, none ends in a reset, and
    none names the provisioned passphrase (or any other secret); the right one back:
    rejoined in the same boot."""
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
    # The failed joins and the return (the backlog and the mirrored warnings included).
    secrets = secret_texts(hil_session.device_provisioning(), access=hil_session.broker_access())
    assert leaked(secrets, console.lines(since=quiet), mqtt.collect("#", since=mark)) == []


# -- reconnect policy ---------------------------------------------------------------------
def backoff_schedule() -> list[float]:
    """The contract's nominal delays from the first to the cap, and one more at the cap
    (1, 2, 4, 8, 16, 30, 30 s): the shortest run that shows the doubling, the cap reached,
    and the delay staying there."""
    first, cap = contract.RECONNECT_BACKOFF_S
    delays = [first]
    while delays[-1] < cap:
        delays.append(min(delays[-1] * 2, cap))
    return [*delays, cap]


# How long one failed attempt may add to the announced delay between two attempts: a TCP
# connect on the rig's own host, answered at once by the proxy's reset (the broker behind it
# stopped), plus the scheduling noise of a loaded host. A delay is ±20 % by the contract and
# the announced one already carries its jitter: a device that waits a second more than it
# says (a settle delay on top of the backoff) is 2 s apart where it says 1 s.
REFUSED_ATTEMPT_S = 0.5


@pytest.mark.requires("network_faults")
@pytest.mark.clause("C3.6", "C3.7", "C3.10", "C4.3", "C2.8", "C4.1")
@pytest.mark.guards("no_backoff", "backoff_cap_60s", "backoff_extra_1s", "backoff_jitter_once")
def test_reconnect_attempts_back_off_exponentially_to_the_cap_with_jitter(
    dut, mqtt, broker, network, console, hil_session
) -> None:
    """The whole schedule to the cap: about 90 s of broker downtime, the only way to see the
    cap held (the first delay at the cap, 30 s, is within 20 % of an uncapped 32 s)."""
    first, cap = contract.RECONNECT_BACKOFF_S
    jitter = contract.RECONNECT_JITTER
    nominal = backoff_schedule()
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    since = len(network.timeline)
    broker.stop()  # connected until now: the backoff starts from its first delay
    try:
        lost = []
        for base in [first, *nominal[:-1]]:  # each line comes one (jittered) delay after the last
            lost.append(console.expect(contract.MQTT_DISCONNECTED, timeout=base * (1 + jitter) + 15))
            delay = int(lost[-1]["retry_ms"]) / 1000
            expected = nominal[len(lost) - 1]
            assert expected * (1 - jitter) - 0.001 <= delay <= expected * (1 + jitter), (
                f"attempt {len(lost)}: delay {delay} s, contract {expected} s ±{jitter:.0%} "
                f"(so far {[int(m['retry_ms']) / 1000 for m in lost]}, schedule {nominal})"
            )
    finally:
        broker.start()
    delays = [int(m["retry_ms"]) / 1000 for m in lost]
    at_cap = [d for d, base in zip(delays, nominal, strict=True) if base == cap]
    assert len(at_cap) >= 2, f"delays {delays}: the cap {cap} s is not reached and held"
    # Each delay with a jitter of its own (C3.6): one fraction for all of them is no jitter
    # between devices that lost the broker together. Apart by more than the announced
    # figures' millisecond rounding (a thousandth of the 1 s delay).
    fractions = [d / b - 1 for d, b in zip(delays, nominal, strict=True)]
    assert max(fractions) - min(fractions) > 0.002, (
        f"delays {delays} s all off the schedule {nominal} s by the same fraction ({fractions[0]:+.3f}): "
        "no jitter, or one drawn once for every delay"
    )
    # The attempts really are that far apart, and no further (device clock, from one line to
    # the next: the announced delay, then one attempt that a stopped broker refuses at once).
    spacing = [(int(b["ms"]) - int(a["ms"])) / 1000 for a, b in itertools.pairwise(lost)]
    for gap, delay in zip(spacing, delays, strict=False):
        assert delay - 0.05 <= gap <= delay + REFUSED_ATTEMPT_S, (
            f"attempts {spacing} s apart on the device clock, announced {delays} (+ at most {REFUSED_ATTEMPT_S} s an attempt)"
        )
    # On the wire, by the host's clock: the attempts that reached the proxy while the broker
    # was down are as far apart as the device said they would be (a log is not a proof).
    attempts = [at for at, event in network.timeline[since:] if event.startswith("conn ") and ": accepted" in event]
    failed = len(delays) - 1  # the attempts whose failure announced delays[1:]
    assert len(attempts) >= failed, f"{len(attempts)} connection attempts reached the broker's path: {network.timeline[since:]}"
    wire = [b - a for a, b in itertools.pairwise(attempts[:failed])]
    for gap, delay in zip(wire, delays[1:], strict=False):
        assert delay - 0.1 <= gap <= delay + REFUSED_ATTEMPT_S, (
            f"attempts {wire} s apart on the wire, announced {delays} (+ at most {REFUSED_ATTEMPT_S} s an attempt)"
        )
    console.expect(contract.MQTT_CONNECTED, timeout=cap * (1 + jitter) + 15)
    mqtt.wait_for(topic, since=mqtt.mark(), timeout=15)  # session up
    network.reset_all()  # after a successful connect the backoff starts over
    again = console.expect(contract.MQTT_DISCONNECTED, timeout=30)
    replay = mqtt.mark()  # offline now: nothing arrives until the reconnect
    assert first * (1 - jitter) - 0.001 <= int(again["retry_ms"]) / 1000 <= first * (1 + jitter), (
        f"after a connect the backoff did not start over: {again.group(0)}"
    )
    console.expect(contract.MQTT_CONNECTED, timeout=30)
    # A minute and a half of readings queued and replayed: none lost, none reordered, each
    # with the time it was measured at.
    wait_until_live(mqtt, topic, replay, setting(hil_session, "measurement_interval_s"))
    mqtt.assert_gapless(topic, since=mark, single_boot=True, ordered=True)
    assert_measured_apart(mqtt, topic, mark, setting(hil_session, "measurement_interval_s"))


# -- last will ------------------------------------------------------------------------------
@pytest.mark.requires("power_control", "network_faults")
@pytest.mark.clause("C3.4", "C5.4", "C3.5")
@pytest.mark.guards("will_on_shutdown", "shutdown_offline_not_retained")
def test_a_graceful_shutdown_says_offline_itself_and_fires_no_will(dut, mqtt, power, network, fresh_subscriber) -> None:
    """The device's own `offline`, then the hang-up, then no will; and a newcomer told
    `offline`: with no will to replace it, only the device's own status can take the place of
    the retained `online` (C3.5), which would otherwise describe a boot that is asleep."""
    status = contract.status_topic(dut.device_id)
    mark = mqtt.mark()
    mqtt.publish(contract.emergency_topic(dut.device_id), contract.EMERGENCY_SHUTDOWN)
    offline = mqtt.wait_for(status, state_is("offline"), since=mark, timeout=15)[0]
    assert offline.json() == {"state": "offline"}
    network.wait_for_connections(0, timeout=45)  # the device hung up (a will would fire now)
    kept = fresh_subscriber(status).collect(status)
    assert [(m.json(), m.retain) for m in kept] == [({"state": "offline"}, True)], (
        f"after a graceful shutdown a newcomer got {[(m.payload, m.retain) for m in kept]} on {status}: "
        "the device's offline status must be retained, or the broker keeps saying it is online"
    )
    woken = mqtt.mark()
    power.cycle()  # deep sleep lasts until the next power-on
    back = mqtt.wait_for(status, state_is("online"), since=woken, timeout=60)[0]
    said = [m.json() for m in mqtt.collect(status, since=mark) if m.at < back.at]
    assert said == [{"state": "offline"}], f"a clean disconnect published the will as well: {said}"


# -- persistent session -------------------------------------------------------------------
@pytest.mark.requires("network_faults")
@pytest.mark.clause("C3.3")
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
MQTT_EITHER = re.compile(r"mqtt: (?:connected uri=|disconnected reason=)")


def mqtt_lines_to_first_connect(console, since) -> list[str]:
    """The mqtt connected/disconnected lines of the latest boot after ``since``, up to its
    first connect."""
    lines = console.lines(since=since)
    boots = [i for i, line in enumerate(lines) if contract.ROM_RESET.search(line)]
    said: list[str] = []
    for line in lines[boots[-1] if boots else 0 :]:
        if MQTT_EITHER.search(line):
            said.append(line)
            if contract.MQTT_CONNECTED.search(line):
                break
    return said


def assert_backoff_schedule(lost: list[re.Match[str]], what: str) -> None:
    """C3.6: the delays announced by consecutive disconnect lines, from the first of a
    backoff (at boot, or after a connect), are the contract's schedule 1, 2, 4 ... s ±20 %."""
    delays = [int(m["retry_ms"]) / 1000 for m in lost]
    nominal = backoff_schedule()[: len(delays)]
    jitter = contract.RECONNECT_JITTER
    off = [(d, n) for d, n in zip(delays, nominal, strict=True) if not n * (1 - jitter) - 0.001 <= d <= n * (1 + jitter)]
    assert not off, f"delays {delays} s {what}, contract {nominal} s ±{jitter:.0%}"


def attempts_on(path: FaultProxy, since: int) -> list[str]:
    """The connections that reached ``path`` after its timeline entry ``since``: the
    device's attempts there, whether the broker behind took them or not."""
    return [event for _, event in path.timeline[since:] if event.startswith("conn ") and ": accepted" in event]


def next_attempt_in(lost: re.Match[str]) -> float:
    """The longest a disconnect line's announced delay may last (C3.6: ±20 % is in the
    announced figure already), plus the time of one attempt on the rig's loopback."""
    return int(lost["retry_ms"]) / 1000 * (1 + contract.RECONNECT_JITTER) + 15


@pytest.mark.requires("network_faults")
@pytest.mark.clause("C3.8", "C3.6", "C3.7", "C2.7", "C2.8")
@pytest.mark.guards(
    "no_failover", "failover_no_wrap", "failover_counts_loss", "connected_uri_provisioned",
    "failover_count_kept_on_move", "failover_count_kept_on_connect", "backoff_reset_on_failover",
    "backoff_zero_at_boot",
)  # fmt: skip
def test_the_device_fails_over_round_robin_after_the_contracts_failed_attempts(
    dut, mqtt, restore_firmware, console, broker
) -> None:
    """``brokers`` = [an address nobody listens on, a second path to the broker: a fault
    proxy of this test's own, so its URI is not the provisioned one and its attempts are
    counted on its timeline]. `BROKER_FAILOVER_ATTEMPTS` (3) failed attempts, counted afresh
    after every connect and every move:

    - from boot exactly 3 failed attempts at the first, backing off from 1 s (C3.6: at boot
      too), then connected to the second, which the serial port names (C2.7: the URI in
      use, not the provisioned one);
    - the second lost for a moment: one failed attempt there, then connected again (an
      attempt that failed before a connect does not count towards the next failover);
    - the second lost for good (its broker stopped): exactly 3 attempts reach it after the
      loss, then the device goes round to the first, where its count starts afresh: all 3
      attempts there, although the second broker is back by then (the third, at the cap,
      is the one that tells a count that restarted at 1 rather than 0: half a minute more
      of this test); the delays follow one backoff throughout (C3.6)."""
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    attempts = contract.BROKER_FAILOVER_ATTEMPTS
    did = dut.device_id
    mqtt.wait_for(contract.sensors_topic(did), since=mqtt.mark(), timeout=15)  # the session is up
    with FaultProxy("127.0.0.1", broker.plain_port, name="second-broker") as second:
        reachable = f"mqtt://{second.host}:{second.port}"
        mark, before = mqtt.mark(), console.mark()
        mqtt.publish(contract.config_update_topic(did), {"brokers": [dead, reachable]})
        assert mqtt.wait_for(contract.config_status_topic(did), since=mark, timeout=15)[0].json()["ok"] is True
        connected = console.expect(contract.MQTT_CONNECTED, timeout=60)  # after the restart
        assert connected["uri"] == reachable, (
            f"{connected.group(0)!r}: the device is on the second of `brokers`, {reachable} (its path took the "
            f"connection: {attempts_on(second, 0)}), and the line must name the URI in use"
        )
        said = mqtt_lines_to_first_connect(console, before)
        refused = [line for line in said if contract.MQTT_DISCONNECTED.search(line)]
        assert len(refused) == attempts and contract.MQTT_CONNECTED.search(said[-1]), (
            f"from boot: {len(refused)} failed attempt(s) at {dead} before the move to {reachable}, contract "
            f"{attempts}:\n  " + "\n  ".join(said)
        )
        assert_backoff_schedule([m for line in refused if (m := contract.MQTT_DISCONNECTED.search(line))], "from boot")
        boot = mqtt.wait_for(contract.status_topic(did), state_is("online"), since=mark, timeout=30)[0].json()
        mqtt.wait_for(contract.sensors_topic(did), lambda m: m.json()["boot_count"] == boot["boot_count"], since=mark, timeout=15)
        # A brief loss of the second: the loss, one refused attempt, then back on it.
        second.partition(120.0)
        second.reset_all()
        console.expect(contract.MQTT_DISCONNECTED, timeout=30)  # the loss
        refused_once = console.expect(contract.MQTT_DISCONNECTED, timeout=15)  # one failed attempt
        second.heal()
        again = console.expect(contract.MQTT_CONNECTED, timeout=next_attempt_in(refused_once))
        assert again["uri"] == reachable, f"after one failed attempt the device moved on: {again.group(0)!r}"
        # Now the second fails for good: the loss, exactly as many failed attempts at it as
        # the contract says, counted from the connect, then round to the first. Its broker is
        # stopped, not its path cut: the proxy still takes each attempt (and resets it), so
        # the attempts at the second are counted on its path, where the first's dead port
        # never shows (the disconnect lines cannot tell the two URIs apart).
        stopped = len(second.timeline)
        broker.stop()
        try:
            said_lost = [console.expect(contract.MQTT_DISCONNECTED, timeout=30)]  # the loss
            for _ in range(attempts):
                said_lost.append(console.expect(contract.MQTT_DISCONNECTED, timeout=45))
            last = said_lost[-1]
            at_second = attempts_on(second, stopped)
        finally:
            since = len(second.timeline)
            broker.start()  # the second is up again: only round robin keeps the device from it
        assert len(at_second) == attempts, (
            f"after the loss of the second broker {len(at_second)} attempt(s) reached it before the {attempts} "
            f"failure lines were out, contract {attempts} (counted from its last connect): {second.timeline[stopped:]}"
        )
        # One backoff across the move (C3.6, C3.7: it starts again only after a connect), the
        # last of these delays being the one before the first attempt at the first broker.
        assert_backoff_schedule(said_lost, "from the loss across the failover")
        # At the first again: its attempts (3, counted afresh after the move) are refused
        # while the second is back; the second of them tells a count carried over from the
        # second broker, the third a count restarted one too high (the move itself counted).
        for attempt in range(1, attempts + 1):
            next_line = console.expect(MQTT_EITHER, timeout=next_attempt_in(last))
            text = next_line.string
            reached = attempts_on(second, since)
            assert contract.MQTT_DISCONNECTED.search(text) and not reached, (
                f"after {attempts} failed attempts at the second (last) broker, attempt {attempt} of {attempts} at "
                f"the first ({dead}) did not come: next it said {text.strip()!r}, connections on the second's path: {reached}"
            )
            last = contract.MQTT_DISCONNECTED.search(text)  # its delay: when the next attempt is due
            said_lost.append(last)
        assert_backoff_schedule(said_lost, "from the loss, round to the first broker and on")
