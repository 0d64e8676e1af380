"""The real-board profile of the virtual board (``hil sim board --profile real-board``),
end to end against mosquitto: a power cut or a hard reset kills TCP silently, so the
broker publishes the will only when the keepalive runs out (1.5 × keepalive, MQTT 3.1.1
§3.1.2.10), and a boot takes a C3's seconds to come online. On the default profile a
power cut still closes the connection at once (today's suites rely on it).

Mosquitto 2.0 checks keepalives in one sweep over all clients every 6 s
(``keepalive__check`` in src/keepalive.c: ``last_keepalive_check + 5 < now``), expiring a
client whose last packet is more than 22 s (``keepalive*3/2`` in whole seconds) old: a dead
client's will comes 23 to 29 s after its last packet, depending only on where that falls
between two sweeps. To measure the device and not that phase, the test finds the broker's
sweep clock with a probe client (keepalive 1 s, silent after CONNECT) and cuts right after
a reading that arrived 23 s before a sweep. Mosquitto 2.1 expires clients within a second
of 1.5 × keepalive; the alignment changes nothing there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho_mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.device import contract
from hil.secret import reveal
from hil.services.broker import OBSERVER_USER, MosquittoBroker
from hil.services.mqtt import MqttObserver, Received
from tests.sim.conftest import BoardMaker, SimBoard
from tests.sim.test_firmware_e2e import payload

pytestmark = pytest.mark.slow

KEEPALIVE_S = contract.MQTT_KEEPALIVE_S
EXPIRY_S = 1.5 * KEEPALIVE_S
"""When a broker gives up on a silent client: 1.5 × keepalive (MQTT 3.1.1 §3.1.2.10)."""
SWEEP_PERIOD_S = 6
"""Mosquitto 2.0's keepalive sweep: every 6 whole seconds of its monotonic clock."""
STALE_AFTER_S = int(KEEPALIVE_S * 3 / 2) + 1
"""Mosquitto 2.0 expires a client at the first sweep more than ``keepalive*3/2`` (integer
seconds) after its last packet: 23 s for a 15 s keepalive."""
PROBE = "esp32/keepalive-probe/status"


def _status(observer: MqttObserver, *, since: int, state: str, timeout: float) -> Received:
    return observer.wait_for(
        contract.status_topic("dev1"), lambda m: payload(m).get("state") == state, since=since, timeout=timeout
    )[0]


def _broker_sweep_second(broker: MosquittoBroker, observer: MqttObserver) -> int:
    """A second (of CLOCK_MONOTONIC, which mosquitto's ``now_s`` and ``time.monotonic``
    share on Linux) in which the broker swept its clients' keepalives: when it expired a
    probe client that went silent right after CONNECT with a 1 s keepalive."""
    connected = threading.Event()
    probe = paho_mqtt.Client(CallbackAPIVersion.VERSION2, client_id="keepalive-probe")
    probe.username_pw_set(OBSERVER_USER, reveal(broker.observer_password))
    probe.will_set(PROBE, b"expired", qos=1)
    probe.on_connect = lambda *args: connected.set()
    mark = observer.mark()
    probe.connect("127.0.0.1", broker.plain_port, keepalive=1)
    probe.loop_start()
    try:
        assert connected.wait(10), "the keepalive probe could not connect"
    finally:
        probe.loop_stop()  # silent from here: no PINGREQ, no DISCONNECT
    try:
        expired = observer.wait_for(PROBE, since=mark, timeout=3 * SWEEP_PERIOD_S)[0]
    finally:
        sock = probe.socket()
        if sock is not None:
            sock.close()
    return int(expired.at)


def _cut_after_a_reading(board: SimBoard, observer: MqttObserver, sweep: int, cut: Callable[[], None]) -> float:
    """Cut (``cut()``) right after a reading that reached the broker in a second 23 s before
    one of its keepalive sweeps (not at its very end: the cut must fall in the same second);
    the cut's monotonic time."""
    # One reading a second lands in the wanted second about once a sweep period; on a
    # loaded host readings drift across second boundaries, so give it eight chances.
    deadline = time.monotonic() + 8 * SWEEP_PERIOD_S
    since = observer.mark()
    while time.monotonic() < deadline:
        reading = observer.wait_for(contract.sensors_topic("dev1"), since=since, timeout=10)[0]
        since = observer.mark()
        second, fraction = divmod(reading.at, 1.0)
        if (int(second) + STALE_AFTER_S - sweep) % SWEEP_PERIOD_S == 0 and fraction < 0.95:
            cut()
            return time.monotonic()
    raise AssertionError("no reading arrived in a second that lines up with the broker's keepalive sweep")


CUTS: dict[str, tuple[Callable[[SimBoard], None], Callable[[SimBoard], None]]] = {
    "power-off": (
        lambda b: b.control.request("power", action="off"),
        lambda b: b.control.request("power", action="on"),
    ),
    "en-held-low": (  # a hard reset that lasts: the relay on EN of a lab rig
        lambda b: b.control.request("hold_reset", hold=True),
        lambda b: b.control.request("hold_reset", hold=False),
    ),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", sorted(CUTS))
def test_on_the_real_board_profile_a_cut_is_silent_until_the_keepalive_runs_out(
    make_board: BoardMaker,
    observer: MqttObserver,
    broker: MosquittoBroker,
    how: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cut, restore = CUTS[how]
    board = make_board(profile="real-board")
    _status(observer, since=0, state="online", timeout=30)
    assert board.control.state()["profile"] == "real-board"

    sweep = _broker_sweep_second(broker, observer)
    mark = observer.mark()
    cut_at = _cut_after_a_reading(board, observer, sweep, lambda: cut(board))
    will = _status(observer, since=mark, state="offline", timeout=EXPIRY_S + 3 + SWEEP_PERIOD_S)
    after = will.at - cut_at
    # The first offline status after the cut is the will: nothing announced the cut earlier.
    assert EXPIRY_S - 1 <= after <= EXPIRY_S + 3, (
        f"the will came {after:.2f} s after the cut ({how}); a silent device's comes after "
        f"1.5 × keepalive = {EXPIRY_S:g} s (window {EXPIRY_S - 1:g}..{EXPIRY_S + 3:g} s)"
    )
    state = board.control.state()
    assert state["abandoned_connections"] == 1, state  # abandoned, not closed
    assert state["held_connections"] == 0, state  # and let go once the broker closed its side

    on = observer.mark()
    restored_at = time.monotonic()
    restore(board)
    online = _status(observer, since=on, state="online", timeout=30)
    took = online.at - restored_at
    assert 1.0 <= took <= 10.0, f"online {took:.2f} s after power came back: a C3 needs seconds"
    with capsys.disabled():
        print(f"\n[real-board, {how}] will {after:.2f} s after the cut; online {took:.2f} s after restore")


@pytest.mark.timeout(60)
def test_on_the_default_profile_a_power_cut_still_closes_the_connection_at_once(
    make_board: BoardMaker, observer: MqttObserver
) -> None:
    board = make_board()
    _status(observer, since=0, state="online", timeout=20)
    observer.wait_for(contract.sensors_topic("dev1"), since=observer.mark(), timeout=10)
    mark = observer.mark()
    board.control.request("power", action="off")
    cut_at = time.monotonic()
    will = _status(observer, since=mark, state="offline", timeout=10)
    assert will.at - cut_at < 3.0, f"the will came {will.at - cut_at:.2f} s after the cut"
    state = board.control.state()
    assert state["profile"] == "default" and state["abandoned_connections"] == 0, state
    on = observer.mark()
    restored_at = time.monotonic()
    board.control.request("power", action="on")
    online = _status(observer, since=on, state="online", timeout=20)
    assert online.at - restored_at < 2.0  # the fast board: well under a second on an idle host
