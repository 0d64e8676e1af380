"""The MQTT observer: its sequence-gap checks (DEVICE_CONTRACT.md §4: ``seq`` starts at 0 each
boot and has no gaps) and order checks (§3: a backlog is sent in order), on fed messages;
``wait_for``'s predicate, count and since, QoS and retain flags, and a fresh subscriber's
``sync``, end to end through a real mosquitto."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.services.broker import OBSERVER_USER, MosquittoBroker
from hil.services.mqtt import (
    MqttObserver,
    ObserverTimeout,
    Received,
    SeqDisorder,
    SeqGap,
    SeqGapError,
    find_seq_disorder,
    find_seq_gaps,
)

TOPIC = "esp32/dev1/sensors"


def reading(seq: int, boot: int = 1, *, at: float | None = None, topic: str = TOPIC) -> Received:
    body = {"device_id": "dev1", "boot_count": boot, "seq": seq, "temperature_c": 21.5}
    return Received(topic, json.dumps(body).encode(), False, float(seq) if at is None else at)


def test_no_gap_in_a_whole_numbering_even_with_repeats_and_out_of_order() -> None:
    messages = [reading(s) for s in (0, 1, 2, 2, 4, 3, 5)]  # a redelivery, a late one
    assert find_seq_gaps(messages) == []


def test_a_gap_names_the_missing_seqs_and_the_messages_around_it() -> None:
    messages = [reading(s, at=100.0 + s) for s in (0, 1, 2, 6, 7)]
    [gap] = find_seq_gaps(messages)
    assert gap.missing == (3, 4, 5) and gap.boot_count == 1 and gap.topic == TOPIC
    assert (gap.after_seq, gap.before_seq) == (2, 6)
    assert gap.after is messages[2] and gap.before is messages[3]
    text = str(gap)
    assert "boot 1: seq 3..5 (3 messages) missing" in text
    assert "between seq 2 received at 102.000 and seq 6 received at 106.000 (4.000 s later)" in text


def test_each_boot_numbers_from_zero_again_which_is_not_a_gap() -> None:
    messages = [reading(s, boot=1) for s in (5, 6, 7)] + [reading(s, boot=2) for s in (0, 1, 3)]
    [gap] = find_seq_gaps(messages)
    assert (gap.boot_count, gap.missing) == (2, (2,))
    assert "seq 2 missing" in str(gap)
    # Without a boot key, the restart is one numbering, and the drop back is no gap either.
    assert [g.missing for g in find_seq_gaps(messages, boot_key=None)] == [(2,), (4,)]


def test_from_zero_counts_a_boots_missing_first_readings() -> None:
    messages = [reading(s) for s in (2, 3)]
    assert find_seq_gaps(messages) == []
    [gap] = find_seq_gaps(messages, from_zero=True)
    assert gap.missing == (0, 1) and gap.after is None
    assert "seq 0..1 (2 messages) missing: the first received was seq 2" in str(gap)


def test_topics_are_numbered_apart() -> None:
    other = "esp32/dev2/sensors"
    messages = [reading(0), reading(0, topic=other), reading(2, topic=other), reading(1)]
    assert [(g.topic, g.missing) for g in find_seq_gaps(messages)] == [(other, (1,))]


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"boot_count": 1}', b'{"seq": "3", "boot_count": 1}', b'{"seq": true, "boot_count": 1}'],
)
def test_a_message_without_a_numbering_is_an_error_not_a_pass(payload: bytes) -> None:
    with pytest.raises(ValueError, match=TOPIC):
        find_seq_gaps([reading(0), Received(TOPIC, payload, False, 1.0)])


# -- order (C3.10) ----------------------------------------------------------------------------
def test_in_order_with_redeliveries_is_no_disorder() -> None:
    # A QoS 1 resend after a reconnect repeats what was already heard: allowed.
    assert find_seq_disorder([reading(s) for s in (0, 1, 2, 1, 2, 3, 3, 4)]) == []


def test_a_backlog_replayed_newest_first_is_out_of_order() -> None:
    arrived = [reading(s, at=float(i)) for i, s in enumerate((0, 1, 5, 4, 3, 2, 6))]
    assert find_seq_gaps(arrived) == []  # the gap check alone lets it through
    disorder = find_seq_disorder(arrived)
    assert [(d.seq, d.after_seq) for d in disorder] == [(4, 5), (3, 5), (2, 5)]
    assert all(isinstance(d, SeqDisorder) and d.after is arrived[2] for d in disorder)
    assert str(disorder[0]) == f"{TOPIC} boot 1: seq 4 received at 3.000, after seq 5 (received at 2.000): out of order"


def test_order_is_per_boot_and_per_topic() -> None:
    other = "esp32/dev2/sensors"
    arrived = [reading(7, boot=1), reading(0, boot=2), reading(3, topic=other), reading(1, boot=2), reading(8, boot=1)]
    assert find_seq_disorder(arrived) == []
    # Without a boot key a reboot's restart from 0 is one numbering going backwards.
    assert [(d.seq, d.after_seq) for d in find_seq_disorder(arrived, boot_key=None)] == [(0, 7), (1, 7)]


def test_a_late_message_is_out_of_order_even_when_nothing_is_missing() -> None:
    arrived = [reading(s) for s in (0, 2, 1, 3)]
    assert [(d.seq, d.after_seq) for d in find_seq_disorder(arrived)] == [(1, 2)]


def test_the_order_check_wants_numbered_messages() -> None:
    with pytest.raises(ValueError, match="narrow the topic"):
        find_seq_disorder([Received(TOPIC, b'{"boot_count": 1}', False, 0.0)])


# -- through a real broker --------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def observer(broker: MosquittoBroker) -> Iterator[MqttObserver]:
    with MqttObserver("127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password) as obs:
        yield obs


def fresh(broker: MosquittoBroker, topic: str) -> MqttObserver:
    return MqttObserver(
        "127.0.0.1",
        broker.plain_port,
        username=OBSERVER_USER,
        password=broker.observer_password,
        subscribe=topic,
        persistent=False,
    )


def publish(observer: MqttObserver, seqs: list[int], boot: int = 1) -> None:
    for seq in seqs:
        observer.publish(TOPIC, {"device_id": "dev1", "boot_count": boot, "seq": seq})
    observer.wait_for(TOPIC, lambda m: m.json()["seq"] == seqs[-1] and m.json()["boot_count"] == boot, timeout=10)


def test_assert_gapless_through_mosquitto(observer: MqttObserver) -> None:
    publish(observer, [0, 1, 2, 3])
    assert observer.assert_gapless(TOPIC, from_zero=True, single_boot=True) == {1: [0, 1, 2, 3]}
    mark = observer.mark()
    publish(observer, [4, 7, 8])  # 5 and 6 lost
    [gap] = observer.seq_gaps(TOPIC, since=mark)
    assert gap.missing == (5, 6) and isinstance(gap, SeqGap)
    with pytest.raises(SeqGapError) as info:
        observer.assert_gapless(TOPIC)
    message = str(info.value)
    assert f"seq on '{TOPIC}' has 1 gap(s) in 7 message(s)" in message
    assert "boot 1: seq 5..6 (2 messages) missing, between seq 4" in message
    assert "Last messages:" in message and '"seq": 8' in message
    assert [g.missing for g in info.value.gaps] == [(5, 6)]


def test_a_reboot_is_no_gap_but_single_boot_says_the_device_rebooted(observer: MqttObserver) -> None:
    publish(observer, [0, 1, 2], boot=1)
    publish(observer, [0, 1], boot=2)
    assert observer.assert_gapless(TOPIC, from_zero=True) == {1: [0, 1, 2], 2: [0, 1]}
    with pytest.raises(SeqGapError, match=r"the device rebooted \(boot_count \[1, 2\]\)"):
        observer.assert_gapless(TOPIC, single_boot=True)


def test_nothing_received_is_not_gapless(observer: MqttObserver) -> None:
    with pytest.raises(SeqGapError, match="no messages on 'esp32/nobody/sensors'"):
        observer.assert_gapless("esp32/nobody/sensors")


def test_assert_gapless_is_ordered_by_default(observer: MqttObserver) -> None:
    publish(observer, [0, 1, 4, 3, 2, 5])
    with pytest.raises(SeqGapError, match=r"seq 3 received at .*, after seq 4 .*: out of order") as info:
        observer.assert_gapless(TOPIC, from_zero=True)
    assert info.value.gaps == () and [d.seq for d in info.value.disorder] == [3, 2]
    assert "seqs in arrival order: [0, 1, 4, 3, 2, 5]" in str(info.value)
    assert observer.assert_gapless(TOPIC, from_zero=True, ordered=False) == {1: [0, 1, 2, 3, 4, 5]}


# -- wait_for: predicate, count, since -------------------------------------------------------------
def test_wait_for_returns_only_messages_that_satisfy_the_predicate(observer: MqttObserver) -> None:
    publish(observer, [0, 1, 2, 3])
    odd = observer.wait_for(TOPIC, lambda m: m.json()["seq"] % 2 == 1, timeout=5, count=2)
    assert [m.json()["seq"] for m in odd] == [1, 3]
    [first] = observer.wait_for(TOPIC, lambda m: m.json()["seq"] >= 2, timeout=5)
    assert first.json()["seq"] == 2  # the first that matches, not the first on the topic
    with pytest.raises(ObserverTimeout, match=r"waited 0.5 s for 1 message\(s\) on '.*' matching the predicate; got 0"):
        observer.wait_for(TOPIC, lambda m: m.json()["seq"] == 99, timeout=0.5)


def test_wait_for_counts_matching_messages_and_returns_exactly_count(observer: MqttObserver) -> None:
    publish(observer, [0, 1, 2])
    assert [m.json()["seq"] for m in observer.wait_for(TOPIC, timeout=5, count=2)] == [0, 1]
    with pytest.raises(ObserverTimeout, match="got 3"):
        observer.wait_for(TOPIC, timeout=0.5, count=4)
    with pytest.raises(ObserverTimeout, match="got 1"):  # three on the topic, one of them matching
        observer.wait_for(TOPIC, lambda m: m.json()["seq"] == 0, timeout=0.5, count=2)


def test_wait_for_ignores_what_came_before_since_and_on_other_topics(observer: MqttObserver) -> None:
    publish(observer, [0, 1])
    mark = observer.mark()
    with pytest.raises(ObserverTimeout, match="got 0"):
        observer.wait_for(TOPIC, timeout=0.3, since=mark)
    observer.publish("esp32/dev2/sensors", {"device_id": "dev2", "boot_count": 1, "seq": 0})
    publish(observer, [2])
    [after] = observer.wait_for(TOPIC, timeout=5, since=mark)
    assert after.json()["seq"] == 2 and after.topic == TOPIC
    assert [m.topic for m in observer.wait_for("esp32/+/sensors", timeout=5, since=mark, count=2)] == ["esp32/dev2/sensors", TOPIC]


def test_received_messages_carry_their_qos_and_retain_flag(broker: MosquittoBroker, observer: MqttObserver) -> None:
    observer.publish("esp32/dev1/q0", "zero", qos=0)
    observer.publish("esp32/dev1/q1", "one", qos=1)
    [zero] = observer.wait_for("esp32/dev1/q0", timeout=5)
    [one] = observer.wait_for("esp32/dev1/q1", timeout=5)
    assert (zero.qos, one.qos) == (0, 1)
    assert not zero.retain and not one.retain  # live delivery: never flagged retained


def test_a_fresh_subscriber_sees_only_what_is_retained_and_sync_says_when_it_has_all(
    broker: MosquittoBroker, observer: MqttObserver
) -> None:
    status = "esp32/dev1/status"
    with fresh(broker, status) as newcomer:
        newcomer.sync()
        assert newcomer.collect(status) == []  # nothing retained yet: known without a guessed wait
    observer.publish(status, {"state": "offline"}, retain=True)
    observer.publish(status, {"state": "online", "boot_count": 3}, retain=True)
    observer.publish(status, {"state": "passing"}, retain=False)  # live only: not kept
    observer.wait_for(status, lambda m: m.json()["state"] == "passing", timeout=5)
    with fresh(broker, status) as newcomer:
        newcomer.sync()
        [kept] = newcomer.collect(status)
        assert kept.json() == {"state": "online", "boot_count": 3} and kept.retain and kept.qos == 1
    observer.publish(status, {"state": "at qos 0"}, qos=0, retain=True)
    observer.wait_for(status, lambda m: m.json()["state"] == "at qos 0", timeout=5)
    with fresh(broker, status) as newcomer:
        newcomer.sync()
        [kept] = newcomer.collect(status)
        assert kept.retain and kept.qos == 0  # retained at QoS 0: delivered at 0 to a QoS 1 subscriber
