"""The MQTT observer's sequence-gap checks (DEVICE_CONTRACT.md §4: ``seq`` starts at 0 each
boot and has no gaps): on fed messages, and end to end through a real mosquitto."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.broker import OBSERVER_USER, MosquittoBroker
from hil.mqtt import MqttObserver, Received, SeqGap, SeqGapError, find_seq_gaps

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


# -- through a real broker --------------------------------------------------------------------
@pytest.fixture
def observer(tmp_path: Path) -> Iterator[MqttObserver]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        with MqttObserver(
            "127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password
        ) as obs:
            yield obs
    finally:
        broker.kill()


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
