"""The device contract as a state machine: random sequences of what a rig can do, and the
contract's invariants checked after every step (issue 12, deliverable 4).

Hypothesis (`RuleBasedStateMachine`) draws sequences of rig actions: a power cut (off
until the broker has published the will, a command sent meanwhile, then on) and a quick
power cycle; the `reset` and `report` commands; a broker restart; a network partition and
a black hole, each healed; config updates, valid and invalid; a sensor environment change;
OTA offers (a newer signed image, one the device must refuse at once: not newer or badly
signed, and one that hangs at boot and must be rolled back); a hung task. The model tracks
what the device must be (boot_count, version, reset_reason, restart_count, the config in
force, the environment) and what each step must have caused (a reboot and its reason, the
will, the alerts).

After every step, and once before the first, whatever came before:
- the retained status a fresh subscriber gets is `online` with this boot's version,
  reset_reason and boot_count (C3.5); health on `report` says the same (C4.6, C4.14), and
  restart_count moved as the contract says (unchanged by a power-on, +1 after a watchdog
  reset);
- readings of this boot keep coming, every `measurement_interval_s` of the config in
  force, within the accuracy of the environment plus the calibration offset in force
  (C7.3, C5.8: a valid update survives any later power cut);
- `seq` of this boot has no gap, arrives in order (a replayed backlog too), and starts at
  0 when the boot began during the run (C4.3, C3.10);
- every alert the step calls for was raised (config_rejected, watchdog_reset,
  ota_rolled_back) and none it gives no cause for.
Steps assert their own events too: the will after an ungraceful loss, retained (C3.4); a
command sent while the device was offline answered once it is back (C3.3); the time to
reconnect after a fault bounded by the backoff sequence (C3.6); OTA verdicts (§6).

Bounds come from the contract (hil.device.contract) and the session's settings, never from what
the virtual rig happens to do. Every step waits on events, never sleeps.

Bounded for CI: HIL_STATEFUL_EXAMPLES (default 3) runs of HIL_STATEFUL_STEPS (default 6)
steps, derandomized (the `rig` profile), no shrinking. Hypothesis's first run is its
simplest: the first rule in its order (no arguments, then by name) every step. That is
`partition` on purpose, the fault that exercises the most clauses, so the guards below do
not hang on the draw. Longer: ``HIL_STATEFUL_EXAMPLES=20 HIL_STATEFUL_STEPS=15``;
HIL_STATEFUL_RANDOM=1 draws new sequences each time, HIL_STATEFUL_SHRINK=1 shrinks a
failing one (docs/suites.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hil.bme280.compensation import Environment
from hil.device import contract
from hil.device.clauses import BY_ID
from hil.firmware.catalog import update_image
from hil.images.partitions import TWO_OTA_TABLE
from hil.link.console import ConsoleTimeout
from hil.services.mqtt import (
    MqttObserver,
    ObserverTimeout,
    Received,
    find_seq_disorder,
    find_seq_gaps,
)
from hil.services.ota import bad_update
from hil.session import ONLINE_TIMEOUT_S
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.slow, pytest.mark.destructive]


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(
            f"{name}={raw!r}: give a positive number of {name.split('_')[-1].lower()} (default {default})"
        )
    return int(raw)


EXAMPLES = _count("HIL_STATEFUL_EXAMPLES", 3)
STEPS = _count("HIL_STATEFUL_STEPS", 6)
# Soak runs: new sequences every run (a failure prints the seed to reproduce it), and a
# failing sequence shrunk to a shorter one (each try costs device time).
FRESH = os.environ.get("HIL_STATEFUL_RANDOM", "") == "1"
SHRINK = os.environ.get("HIL_STATEFUL_SHRINK", "") == "1"
# A safety net above pytest.ini's 300 s for long runs; every wait below has its own deadline.
STEP_BUDGET_S = 30

# -- bounds, from the contract and the session's settings -------------------------------------
KEEPALIVE_S = float(contract.MQTT_KEEPALIVE_S)
# An answer over a live session (ack, status, alert): within one keepalive period.
RESPONSE_S = KEEPALIVE_S
# A client gone silent is declared lost by the broker after 1.5 keepalive periods (MQTT
# 3.1.1 §3.1.2.10), which then publishes its will.
WILL_S = 1.5 * KEEPALIVE_S + RESPONSE_S
# A dead path (a black hole: nothing closed) is noticed by what no longer comes back
# (PUBACK, PINGRESP): within the keepalive period plus the broker's own 1.5 periods.
DEAD_LINK_S = 2.5 * KEEPALIVE_S + RESPONSE_S
# One connection attempt (connect, CONNACK) may hang on a dead path for a keepalive period.
ATTEMPT_S = KEEPALIVE_S
BOOT_S = ONLINE_TIMEOUT_S  # a boot, from reset to online: the session's own deadline
# Back online whatever a failed step left: a boot, or the longest backoff delay and an attempt.
SETTLE_S = BOOT_S + contract.RECONNECT_BACKOFF_S[1] * (1 + contract.RECONNECT_JITTER) + ATTEMPT_S
# Readings: every measurement interval; a mean period between these fractions of it.
INTERVAL_RANGE = (0.75, 1.5)
OTA_SLOT = TWO_OTA_TABLE.by_label("ota_0")
# Watchdog resets per run of the machine: below the boot-loop guard, which would otherwise
# put the device in safe mode (no readings), a different state this model does not follow.
MAX_CRASHES = contract.BOOT_LOOP_RESETS - 2


def reconnect_bound(offline_s: float) -> float:
    """The latest the device may connect again after its path came back, having been offline
    at most ``offline_s`` (from the fault to the heal), by the contract's backoff alone:
    delays from 1 s doubling to 30 s, each ±20 %.

    However the jitter fell, the attempts made while offline waited at least the low end of
    each delay, so at most k of them fit in ``offline_s``; the delay running at the heal is
    then at most the high end of delay k. Add one attempt that may hang on a dead path."""
    first, cap = contract.RECONNECT_BACKOFF_S
    low, high = 1 - contract.RECONNECT_JITTER, 1 + contract.RECONNECT_JITTER
    k, waited = 0, 0.0
    while waited + min(first * 2**k, cap) * low <= offline_s:
        waited += min(first * 2**k, cap) * low
        k += 1
    return min(first * 2**k, cap) * high + ATTEMPT_S


def provisioned_offset(hil_session: Any) -> float:
    """calibration_offset_temp as the session provisions it (else the contract's default)."""
    return float(
        hil_session.options.config.get(
            "calibration_offset_temp", contract.DEFAULT_CALIBRATION_OFFSET
        )
    )


def later(version: str) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) + 1}.0"


# -- what the rig offers the machine ------------------------------------------------------------
@dataclass
class Known:
    """What the device holds that no rig interface reads back, carried from one run of the
    machine to the next (the device keeps it): the config in force and the environment."""

    env: Environment
    interval_s: float
    offset_c: float
    # Watchdog resets since the last power-on (the boot-loop guard counts them until one).
    crashed: bool = False
    late_alerts: frozenset[str] = frozenset()  # what the last step may still raise, late
    settled: bool = True  # the last step's checks all passed: the device is as the model says


@dataclass
class Bench:
    device: str
    session: Any
    mqtt: MqttObserver
    fresh_subscriber: Callable[..., MqttObserver]
    console: Any
    power: Any
    network: Any
    broker: Any
    sensor: Any
    ota_server: Any
    ota_signer: Any
    firmware: str | None  # the recipe OTA updates are rebuilt from (None: the baseline)
    can_update: bool  # a recipe: newer images of it can be built (not a manifest or a bare image)
    watchdog_s: float
    selftest_s: float
    known: Known
    images: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def update(self, version: str, **params: Any) -> bytes:
        key = (version, json.dumps(params, sort_keys=True))
        if key not in self.images:
            self.images[key] = update_image(self.firmware, version, **params)
        return self.images[key]


@dataclass
class Expect:
    """What the step just run must have caused."""

    mark: int  # the MQTT record from just before the step
    boot_before: int
    alerts: frozenset[str] = frozenset()  # required
    allowed: frozenset[str] = frozenset()  # may come (and late, during the next step)
    restart_count: Callable[[int, int], bool] = lambda before, now: now == before
    restart_rule: str = "unchanged"


ENVIRONMENTS = st.builds(
    Environment,
    st.sampled_from([4.5, 18.0, 23.5, 31.0, 38.5]),
    st.sampled_from([22.0, 45.0, 63.0, 80.0]),
    st.sampled_from([955.0, 1002.0, 1040.0]),
)
# Both edges of the offset's range, and values a lost config cannot hide within ±1 °C.
OFFSETS = st.sampled_from(
    [contract.CALIBRATION_OFFSET_RANGE[0], -3.5, 0.0, 4.0, contract.CALIBRATION_OFFSET_RANGE[1]]
)
INTERVALS = st.sampled_from([1, 2])
INVALID_CONFIGS = {
    "unknown key": b'{"colour": "red"}',
    "interval zero": b'{"measurement_interval_s": 0}',
    "offset above range": b'{"calibration_offset_temp": 10.5}',
    "string for integer": b'{"measurement_interval_s": "2"}',
    "valid next to invalid": b'{"calibration_offset_temp": 4.0, "log_level": "chatty"}',
    "malformed JSON": b'{"measurement_interval_s": 2',
}
REFUSED_OFFERS = ("same version", "lower version", "corrupt signature", "untrusted signer")
ALERT_CLAUSE = {"config_rejected": "C5.6", "watchdog_reset": "C7.9", "ota_rolled_back": "C6.9"}


class ContractViolation(AssertionError):
    """A clause did not hold after a sequence of steps; the message names both."""


def _online(m: Received) -> bool:
    return m.json().get("state") == "online"


class DeviceContract(RuleBasedStateMachine):
    bench: ClassVar[Bench]

    # -- setup ---------------------------------------------------------------------------------
    def __init__(self) -> None:
        super().__init__()
        b = self.bench
        self.history: list[str] = []
        self.started = time.monotonic()
        self.step_at = self.started  # when the latest step began (`begin`)
        print("a run of the machine begins (steps are timed from here)")
        self.crashes = 0
        self.broker_down = False
        self.powered_off = False
        if b.known.crashed:  # the last run's watchdog resets: forget them, as a power-on does
            mark = b.mqtt.mark()
            b.power.cycle()
            b.mqtt.wait_for(self.topic("status"), _online, since=mark, timeout=BOOT_S)
            b.known.crashed = False
        # Publishing again (after a failed run's last step, the device may still be rebooting
        # or waiting out its longest backoff).
        b.mqtt.wait_for(self.topic("sensors"), since=b.mqtt.mark(), timeout=SETTLE_S)
        if not b.known.settled:
            # A run failed midway (Hypothesis replays it next): the device may hold a config
            # other than the model's. factory_reset puts the provisioned one back (C5.2).
            mark = b.mqtt.mark()
            b.mqtt.publish(self.topic("command"), {"cmd": "factory_reset"})
            b.mqtt.wait_for(self.topic("status"), _online, since=mark, timeout=BOOT_S)
            b.known.interval_s = setting(b.session, "measurement_interval_s")
            b.known.offset_c = provisioned_offset(b.session)
            b.sensor.set(b.known.env)
            b.known.settled = True
        # Where the device is, by its own health; the first check holds the retained status to it.
        health = self.report()
        self.boot, self.version = health["boot_count"], health["version"]
        self.reason, self.restart_count = health["reset_reason"], health["restart_count"]
        self.boot_mark, self.from_zero = b.mqtt.mark(), False
        self.expect = Expect(mark=b.mqtt.mark(), boot_before=self.boot)
        self.late_allowed = b.known.late_alerts

    def teardown(self) -> None:
        """Whatever a failed step left: the path healed, the broker and the board on."""
        b = self.bench
        b.known.late_alerts = self.expect.alerts | self.expect.allowed
        b.network.heal()
        if self.broker_down:
            b.broker.start()
        if self.powered_off:
            b.power.on()

    # -- helpers -------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return getattr(contract, f"{name}_topic")(self.bench.device)

    def begin(self, step: str, **expect: Any) -> int:
        """Record the step; returns the MQTT mark from just before it."""
        self.history.append(step)
        self.step_at = time.monotonic()
        print(f"[{self.step_at - self.started:6.1f} s] step {len(self.history)}: {step}")
        mark = self.bench.mqtt.mark()
        self.late_allowed = self.expect.alerts | self.expect.allowed
        self.expect = Expect(mark=mark, boot_before=self.boot, **expect)
        self.bench.known.settled = False
        return mark

    def violated(self, clause: str, what: str) -> NoReturn:
        steps = ", ".join(f"{n}. {s}" for n, s in enumerate(self.history, 1)) or "no step yet"
        raise ContractViolation(
            f"{clause} violated after [{steps}]\n  {clause}: {BY_ID[clause].text}\n  {what}"
        )

    def wait(
        self,
        clause: str,
        what: str,
        topic: str,
        predicate: Callable[[Received], bool],
        *,
        since: int,
        timeout: float,
    ) -> Received:
        try:
            return self.bench.mqtt.wait_for(topic, predicate, since=since, timeout=timeout)[0]
        except ObserverTimeout as exc:
            self.violated(clause, f"{what}: nothing within {timeout:g} s. {exc}")

    def retained_status(self, clause: str, wanted: dict[str, Any]) -> None:
        """What a newcomer to the broker finds on the status topic: exactly ``wanted``, retained
        (and the will at QoS 1, C3.4). A fresh clean-session subscriber, synced (`sync`: the
        retained message, if any, has arrived), then closed."""
        topic = self.topic("status")
        newcomer = self.bench.fresh_subscriber(topic)
        try:
            kept = newcomer.collect(topic)
        finally:
            newcomer.close()
        found = [(m.json(), m.retain, m.qos) for m in kept]
        will = wanted == {"state": "offline"}
        if (
            len(kept) != 1
            or not kept[0].retain
            or kept[0].json() != wanted
            or (will and kept[0].qos != 1)
        ):
            self.violated(
                clause,
                f"a new subscriber finds (payload, retained, QoS) {found} on {topic}, not {wanted} retained",
            )

    def command(self, request: dict[str, Any], clause: str = "C4.10") -> int:
        """Send a command; wait for its ack, which must say ok. Returns the mark before it."""
        b = self.bench
        mark = b.mqtt.mark()
        b.mqtt.publish(self.topic("command"), request)
        ack = self.wait(
            clause,
            f"the ack of {request}",
            self.topic("command_ack"),
            lambda m: m.json().get("cmd") == request["cmd"],
            since=mark,
            timeout=RESPONSE_S,
        ).json()
        if ack != {"cmd": request["cmd"], "ok": True}:
            self.violated(clause, f"{request} was answered {ack}")
        return mark

    def report(self) -> dict[str, Any]:
        """Health now, on the `report` command (C4.6)."""
        mark = self.command({"cmd": "report"}, "C4.6")
        health = self.wait(
            "C4.6",
            "health on the report command",
            self.topic("health"),
            lambda m: True,
            since=mark,
            timeout=RESPONSE_S,
        ).json()
        problems = contract.validate_payload("health", health)
        if problems:
            self.violated("C4.4", f"health {health}: {problems}")
        return health

    def await_boot(
        self, mark: int, reason: str, *, will: bool, version: str | None = None, exact: bool = True
    ) -> None:
        """The device booted again after ``mark`` and came online (C3.5): on ``version`` (this
        one unless given), with reset_reason ``reason`` (C4.14), boot_count one up (``exact``)
        or more; with ``will``, the broker published the will in between (C3.4)."""
        version = version or self.version
        status = self.wait(
            "C3.5",
            f"online again on {version} after the reboot",
            self.topic("status"),
            lambda m: _online(m) and m.json().get("version") == version,
            since=mark,
            timeout=BOOT_S,
        )
        online = status.json()
        if online["reset_reason"] != reason:
            self.violated(
                "C4.14",
                f"back online with reset_reason {online['reset_reason']}, the cause was {reason}: {online}",
            )
        if (
            (online["boot_count"] != self.boot + 1)
            if exact
            else (online["boot_count"] <= self.boot)
        ):
            self.violated(
                "C3.5",
                f"boot_count {online['boot_count']} after boot {self.boot} and one reboot: {online}",
            )
        if will and self.bench.session.rig.timing.silent_tcp_on_reset and status.at - self.step_at < WILL_S:
            # A chip whose TCP dies with it (a real board; the real-board profile) sends
            # nothing on a reset or power cut, and was back online before the broker had to
            # give up on it (WILL_S): its CONNECT took the session over. Whether a broker
            # publishes the will on a takeover MQTT 3.1.1 leaves open (mosquitto 2.0 does
            # not), so only a device away longer must have had its will published.
            will = False
        if will:
            said = [
                m.json()
                for m in self.bench.mqtt.collect(self.topic("status"), since=mark)
                if m.at <= status.at
            ]
            if {"state": "offline"} not in said:
                self.violated(
                    "C3.4",
                    f"the device was lost without a clean disconnect, yet no will before it was back: {said}",
                )
        self.boot, self.reason, self.version = online["boot_count"], reason, version
        self.boot_mark, self.from_zero = mark, True

    def go_offline(self, serial: Any, need_s: float) -> None:
        """Wait on the device's own account of the loss (C2.8) and of its failed attempts until
        it has been offline ``need_s`` at least (each line announces the delay before the next
        attempt, so the delays of all but the latest bound the time offline from below)."""
        console = self.bench.console
        try:
            lost = console.expect(contract.MQTT_DISCONNECTED, timeout=RESPONSE_S, since=serial)
        except ConsoleTimeout as exc:
            self.violated(
                "C2.8",
                f"no `mqtt: disconnected` line within {RESPONSE_S:g} s of losing the broker: {exc}",
            )
        offline = 0.0
        while offline < need_s:
            delay = int(lost["retry_ms"]) / 1000
            offline += delay
            try:
                lost = console.expect(
                    contract.MQTT_DISCONNECTED,
                    timeout=delay * (1 + contract.RECONNECT_JITTER) + ATTEMPT_S,
                )
            except ConsoleTimeout as exc:
                self.violated(
                    "C2.8",
                    f"no `mqtt: disconnected` line for the failed attempt {delay:g} s after the last: {exc}",
                )

    def heal(self, fault_at: float, action: Callable[[], None]) -> None:
        """Undo the fault with ``action``; the device must be connected again within the
        backoff's bound for this outage (C3.6), counted from the fault (the longest it may
        have been offline), and say online for the boot it is in (C3.5)."""
        b = self.bench
        serial, mark = b.console.mark(), b.mqtt.mark()
        action()
        offline_s = time.monotonic() - fault_at
        bound = reconnect_bound(offline_s)
        try:
            b.console.expect(contract.MQTT_CONNECTED, timeout=bound, since=serial)
        except ConsoleTimeout:
            self.violated(
                "C3.6",
                f"not connected within {bound:.1f} s of the path coming back after at most {offline_s:.1f} s offline "
                f"(the longest the backoff {contract.RECONNECT_BACKOFF_S} ±{contract.RECONNECT_JITTER:.0%} allows, plus one attempt)",
            )
        online = self.wait(
            "C3.5",
            "the online status on reconnecting",
            self.topic("status"),
            _online,
            since=mark,
            timeout=RESPONSE_S,
        ).json()
        want = {
            "state": "online",
            "version": self.version,
            "reset_reason": self.reason,
            "boot_count": self.boot,
        }
        if online != want:
            self.violated(
                "C3.5", f"reconnected without a reboot, the status says {online}, not {want}"
            )

    def will_then_report_while_offline(self, mark: int, what: str, timeout: float) -> int:
        """The will (C3.4), retained for a newcomer; then a `report` command sent while the
        device is away, QoS 1, which its persistent session keeps (C3.3). Returns the mark
        to find the command's ack from."""
        b = self.bench
        will = self.wait("C3.4", what, self.topic("status"), lambda m: not _online(m), since=mark, timeout=timeout)
        if will.json() != {"state": "offline"}:
            self.violated("C3.4", f"the will is {will.json()}")
        self.retained_status("C3.4", {"state": "offline"})
        sent: int = b.mqtt.mark()
        b.mqtt.publish(self.topic("command"), {"cmd": "report"})
        return sent

    def report_answered(self, sent: int, what: str) -> None:
        """The `report` sent while the device was away is answered once it is back (C3.3, C4.10)."""
        ack = self.wait(
            "C3.3", what, self.topic("command_ack"), lambda m: m.json().get("cmd") == "report",
            since=sent, timeout=RESPONSE_S,
        )  # fmt: skip
        if ack.json() != {"cmd": "report", "ok": True}:
            self.violated("C4.10", f"report answered {ack.json()}")

    # -- rules: power --------------------------------------------------------------------------
    @rule()
    def power_cut(self) -> None:
        """Off until the broker has published the will; a command sent meanwhile; on."""
        b = self.bench
        mark = self.begin("power cut, `report` sent while off")
        b.power.off()
        self.powered_off = True
        sent = self.will_then_report_while_offline(mark, "the will after the power went", WILL_S)
        b.power.on()
        self.powered_off = False
        self.await_boot(mark, "POWERON", will=True)
        b.known.crashed = False
        self.report_answered(sent, "the ack of a command sent while the device was off")

    @rule(off_s=st.sampled_from([0.2, 1.0]))
    def power_cycle(self, off_s: float) -> None:
        mark = self.begin(f"power cycle, off {off_s} s")
        self.bench.power.cycle(off_s)
        self.await_boot(mark, "POWERON", will=True)
        self.bench.known.crashed = False

    # -- rules: commands -----------------------------------------------------------------------
    @rule()
    def reset_command(self) -> None:
        mark = self.begin(
            "`reset` command",
            restart_count=lambda before, now: now >= before,
            restart_rule="not below",
        )
        self.command({"cmd": "reset"}, "C5.1")
        self.await_boot(mark, "SW", will=False)

    @rule()
    def report_command(self) -> None:
        self.begin("`report` command")
        health = self.report()
        if (health["boot_count"], health["version"], health["reset_reason"]) != (
            self.boot,
            self.version,
            self.reason,
        ):
            self.violated(
                "C4.14",
                f"health {health} is not of boot {self.boot} on {self.version} ({self.reason})",
            )

    @precondition(lambda self: self.crashes < MAX_CRASHES)
    @rule(task=st.sampled_from(contract.WATCHED_TASKS))
    def hang(self, task: str) -> None:
        b = self.bench
        sensor_alerts = (
            frozenset({"sensor_failure", "sensor_recovered"}) if task == "sensor" else frozenset()
        )
        mark = self.begin(
            f"`hang` the {task} task",
            alerts=frozenset({"watchdog_reset"}),
            allowed=sensor_alerts,
            restart_count=lambda before, now: now == before + 1,
            restart_rule="one up",
        )
        serial = b.console.mark()
        self.command({"cmd": "hang", "task": task}, "C5.3")
        self.crashes += 1
        b.known.crashed = True
        # The watchdog fires within a timeout of the task's last check-in (allow two, C7.8).
        try:
            b.console.expect(contract.TASK_WDT, timeout=2 * b.watchdog_s + RESPONSE_S, since=serial)
        except ConsoleTimeout as exc:
            self.violated("C7.8", f"the {task} task hung and no task watchdog fired: {exc}")
        self.await_boot(mark, "TASK_WDT", will=True)

    # -- rules: the network and the broker -----------------------------------------------------
    @precondition(lambda self: not self.broker_down)
    @rule()
    def restart_the_broker(self) -> None:
        b = self.bench
        self.begin("broker restart")
        serial, fault_at = b.console.mark(), time.monotonic()
        b.broker.stop()
        self.broker_down = True
        self.go_offline(serial, 2 * b.known.interval_s)  # readings were taken while offline

        def start() -> None:
            b.broker.start()
            self.broker_down = False

        self.heal(fault_at, start)

    @rule()
    def partition(self) -> None:
        """Refused connects and the live connection reset: the broker publishes the will, a
        command sent meanwhile waits in the device's session (C3.3)."""
        b = self.bench
        mark = self.begin("network partition, `report` sent meanwhile, healed")
        serial, fault_at = b.console.mark(), time.monotonic()
        b.network.partition(10 * BOOT_S)  # healed below, long before
        b.network.reset_all()
        # Both ends reset: the broker knows at once.
        sent = self.will_then_report_while_offline(mark, "the will after the connection was reset", RESPONSE_S)
        self.go_offline(serial, 2 * b.known.interval_s)
        self.heal(fault_at, b.network.heal)
        self.report_answered(sent, "the ack of a command sent while the device was cut off")

    @rule()
    def path_black_hole(self) -> None:
        """Nothing forwarded, nothing closed: only what stops coming back tells the device."""
        b = self.bench
        self.begin("black hole until the device notices, healed")
        serial, fault_at = b.console.mark(), time.monotonic()
        b.network.blackhole(True)
        try:
            b.console.expect(contract.MQTT_DISCONNECTED, timeout=DEAD_LINK_S, since=serial)
        except ConsoleTimeout as exc:
            self.violated("C2.8", f"a dead path not noticed within {DEAD_LINK_S:g} s: {exc}")
        self.heal(fault_at, b.network.heal)

    # -- rules: config -------------------------------------------------------------------------
    @rule(interval=INTERVALS, offset=OFFSETS)
    def valid_config(self, interval: int, offset: float) -> None:
        b = self.bench
        update = {"measurement_interval_s": interval, "calibration_offset_temp": offset}
        mark = self.begin(
            f"valid config {update}",
            restart_count=lambda before, now: now >= before,
            restart_rule="not below",
        )
        b.mqtt.publish(self.topic("config_update"), update)
        status = self.wait(
            "C5.8",
            f"config/status for {update}",
            self.topic("config_status"),
            lambda m: True,
            since=mark,
            timeout=RESPONSE_S,
        ).json()
        if status.get("ok") is not True or contract.validate_payload("config_status", status):
            self.violated("C5.5", f"{update} answered {status}")
        # Saved: in force from the next boot on, whatever comes next.
        b.known.interval_s, b.known.offset_c = float(interval), offset
        self.await_boot(mark, "SW", will=False)

    @rule(case=st.sampled_from(sorted(INVALID_CONFIGS)))
    def invalid_config(self, case: str) -> None:
        b = self.bench
        mark = self.begin(f"invalid config ({case})", alerts=frozenset({"config_rejected"}))
        b.mqtt.publish(self.topic("config_update"), INVALID_CONFIGS[case])
        status = self.wait(
            "C5.6",
            f"config/status for {case}",
            self.topic("config_status"),
            lambda m: True,
            since=mark,
            timeout=RESPONSE_S,
        ).json()
        if (
            status.get("ok") is not False
            or not status.get("error")
            or contract.validate_payload("config_status", status)
        ):
            self.violated("C5.6", f"{case} {INVALID_CONFIGS[case]!r} answered {status}")

    # -- rules: the sensor ---------------------------------------------------------------------
    @rule(env=ENVIRONMENTS)
    def sensor_change(self, env: Environment) -> None:
        b = self.bench
        mark = self.begin(
            f"sensor environment {env.temperature_c} °C {env.humidity_pct} %RH {env.pressure_hpa} hPa"
        )
        b.sensor.set(env)
        b.known.env = env
        self.wait(
            "C7.3",
            f"a reading of {env} (offset {b.known.offset_c:+g} °C)",
            self.topic("sensors"),
            lambda m: not self.misread(m.json()),
            since=mark,
            timeout=3 * b.known.interval_s + RESPONSE_S,
        )

    def misread(self, reading: dict[str, Any]) -> list[str]:
        env, offset = self.bench.known.env, self.bench.known.offset_c
        return [
            f"{key} {reading[key]} is not {want:g} ±{tolerance:g}"
            for key, want, tolerance in (
                ("temperature_c", env.temperature_c + offset, contract.TEMPERATURE_ACCURACY_C),
                ("humidity_pct", env.humidity_pct, contract.HUMIDITY_ACCURACY_PCT),
                ("pressure_hpa", env.pressure_hpa, contract.PRESSURE_ACCURACY_HPA),
            )
            if abs(reading[key] - want) > tolerance
        ]

    # -- rules: OTA ----------------------------------------------------------------------------
    def offer(self, image: bytes, version: str, name: str) -> None:
        b = self.bench
        url = b.ota_server.add(f"stateful-{name}-{version}.bin", image)
        b.mqtt.publish(self.topic("ota_update"), b.ota_signer.request(image, url, version))

    def ota_states(self, since: int) -> list[str]:
        return [
            m.json()["state"]
            for m in self.bench.mqtt.collect(self.topic("ota_status"), since=since)
        ]

    def ota_verdict(self, since: int, timeout: float, clause: str) -> dict[str, Any]:
        verdict = self.wait(
            clause,
            "the OTA's verdict",
            self.topic("ota_status"),
            lambda m: m.json().get("state") in ("success", "rejected", "failed", "rolled_back"),
            since=since,
            timeout=timeout,
        ).json()
        problems = contract.validate_payload("ota_status", verdict)
        if problems:
            self.violated("C4.12", f"{verdict}: {problems}")
        return verdict

    @precondition(lambda self: self.bench.can_update)
    @rule()
    def update_to_a_newer_image(self) -> None:
        b = self.bench
        version = later(self.version)
        mark = self.begin(
            f"OTA offer of {version}, signed",
            restart_count=lambda before, now: now >= before,
            restart_rule="not below",
        )
        self.offer(b.update(version), version, "newer")
        verdict = self.ota_verdict(mark, BOOT_S + b.selftest_s, "C6.7")
        states = self.ota_states(mark)
        if verdict["state"] != "success" or states != [
            "downloading",
            "verifying",
            "rebooting",
            "success",
        ]:
            self.violated("C6.7", f"a newer signed image ended in {verdict}; states {states}")
        self.await_boot(mark, "SW", will=False, version=version)

    @precondition(lambda self: self.bench.can_update)
    @rule(variant=st.sampled_from(REFUSED_OFFERS))
    def refuse_an_update(self, variant: str) -> None:
        b = self.bench
        clause = "C6.1" if "version" in variant else "C6.2"
        version = later(self.version)
        mark = self.begin(f"OTA offer to refuse: {variant}")
        bad = bad_update(
            variant, b.update(version), running_version=self.version, partition_size=OTA_SLOT.size
        )
        downloads = len(b.ota_server.requests)
        url = b.ota_server.add(f"stateful-refused-{variant.replace(' ', '-')}.bin", bad.served)
        b.mqtt.publish(self.topic("ota_update"), bad.request(b.ota_signer, url, version))
        verdict = self.ota_verdict(mark, RESPONSE_S, clause)
        if verdict["state"] != "rejected" or not verdict.get("reason"):
            self.violated(
                clause,
                f"an offer with {variant} ended in {verdict}, not rejected at once with a reason",
            )
        if len(b.ota_server.requests) != downloads:
            self.violated(
                clause,
                f"an offer with {variant} was downloaded: {b.ota_server.requests[downloads:]}",
            )

    @precondition(lambda self: self.bench.can_update and self.crashes < MAX_CRASHES)
    @rule()
    def update_to_an_image_that_hangs(self) -> None:
        """A newer image whose sensor task never starts: the watchdog resets it on trial and
        the bootloader goes back to the running one, which says so (C6.9)."""
        b = self.bench
        version, running = later(self.version), self.version
        mark = self.begin(
            f"OTA offer of {version} that hangs at boot",
            alerts=frozenset({"ota_rolled_back"}),
            allowed=frozenset({"sensor_failure", "sensor_recovered", "watchdog_reset"}),
            restart_count=lambda before, now: now >= before + 1,
            restart_rule="at least one up",
        )
        self.offer(b.update(version, hang_at_boot="sensor"), version, "hangs")
        self.crashes += 1
        b.known.crashed = True
        verdict = self.ota_verdict(mark, 2 * BOOT_S + b.selftest_s, "C6.9")
        if verdict["state"] != "rolled_back" or verdict["version"] != version:
            self.violated(
                "C6.9",
                f"an image that hangs at boot ended in {verdict}, not rolled_back of {version}",
            )
        self.await_boot(mark, "TASK_WDT", will=True, version=running, exact=False)

    # -- the invariants --------------------------------------------------------------------------
    @invariant()
    def the_contract_holds(self) -> None:
        b = self.bench
        expect = self.expect
        # The retained status is this boot's (C3.5).
        want = {
            "state": "online",
            "version": self.version,
            "reset_reason": self.reason,
            "boot_count": self.boot,
        }
        self.retained_status("C3.5", want)
        # Health says the same, and restart_count moved as the contract says (C4.14, C7.9).
        health = self.report()
        said = {key: health[key] for key in ("version", "reset_reason", "boot_count")}
        if said != {key: want[key] for key in said}:
            self.violated("C4.14", f"health says {said}, the boot is {want}")
        if health["safe_mode"] is not False:
            self.violated(
                "C7.10", f"safe mode after {self.crashes} watchdog reset(s) in this run: {health}"
            )
        if not expect.restart_count(self.restart_count, health["restart_count"]):
            clause = "C7.9" if expect.restart_rule != "not below" else "C4.4"
            self.violated(
                clause,
                f"restart_count {self.restart_count} → {health['restart_count']}, expected {expect.restart_rule}",
            )
        self.restart_count = health["restart_count"]
        # Readings of this boot go on: on time, accurate, with the offset in force (C4.2, C7.3, C5.8).
        self.check_readings()
        # Nothing since the step from a boot that should not exist.
        boots = {
            m.json()["boot_count"] for m in b.mqtt.collect(self.topic("sensors"), since=expect.mark)
        }
        if not boots <= set(range(expect.boot_before, self.boot + 1)):
            self.violated(
                "C4.3",
                f"readings since the step from boots {sorted(boots)}; the device was in boot {expect.boot_before}, now {self.boot}",
            )
        # seq of this boot: no gap, in order, from 0 when the boot began during the run (C4.3, C3.10).
        self.check_seq()
        # Every alert the step calls for, and none it gives no cause for (§7, §5, §6).
        self.check_alerts()
        b.known.settled = True

    def check_readings(self) -> None:
        b = self.bench
        interval = b.known.interval_s
        timeout = 4 * interval + RESPONSE_S
        try:
            fresh = b.mqtt.wait_for(
                self.topic("sensors"),
                lambda m: m.json().get("boot_count") == self.boot,
                since=b.mqtt.mark(),
                count=3,
                timeout=timeout,
            )
        except ObserverTimeout as exc:
            self.violated(
                "C4.2",
                f"fewer than 3 readings of boot {self.boot} within {timeout:g} s (interval {interval:g} s): {exc}",
            )
        readings = [m.json() for m in fresh]
        for reading in readings:
            problems = contract.validate_payload("sensors", reading, device_id=b.device)
            if problems:
                self.violated("C4.1", f"{reading}: {problems}")
            wrong = self.misread(reading)
            if wrong:
                self.violated(
                    "C7.3",
                    f"reading {reading}: {'; '.join(wrong)} (offset in force {b.known.offset_c:+g} °C)",
                )
        by_seq = {r["seq"]: r for r in readings}
        low, high = min(by_seq), max(by_seq)
        if high > low:
            period = (by_seq[high]["timestamp"] - by_seq[low]["timestamp"]) / (high - low)
            if not INTERVAL_RANGE[0] * interval <= period <= INTERVAL_RANGE[1] * interval:
                self.violated(
                    "C4.2",
                    f"readings every {period:.2f} s (device clock, seq {low}..{high}); measurement_interval_s in force is {interval:g}",
                )

    def check_seq(self) -> None:
        b = self.bench
        readings = [
            m
            for m in b.mqtt.collect(self.topic("sensors"), since=self.boot_mark)
            if m.json()["boot_count"] == self.boot
        ]
        disorder = find_seq_disorder(readings)
        if disorder:
            self.violated("C3.10", "readings out of order: " + "; ".join(str(d) for d in disorder))
        gaps = find_seq_gaps(readings, from_zero=self.from_zero)
        if gaps:
            self.violated("C4.3", "readings lost: " + "; ".join(str(gap) for gap in gaps))

    def check_alerts(self) -> None:
        b = self.bench
        expect = self.expect
        for code in sorted(expect.alerts):
            alert = self.wait(
                ALERT_CLAUSE[code],
                f"alert {code}",
                self.topic("alerts"),
                lambda m, code=code: m.json().get("code") == code,
                since=expect.mark,
                timeout=RESPONSE_S,
            ).json()
            problems = contract.validate_payload("alerts", alert, device_id=b.device)
            if problems:
                self.violated("C4.8", f"{alert}: {problems}")
        raised = [m.json() for m in b.mqtt.collect(self.topic("alerts"), since=expect.mark)]
        causeless = [
            a
            for a in raised
            if a.get("code") not in expect.alerts | expect.allowed | self.late_allowed
        ]
        if causeless:
            clause = ALERT_CLAUSE.get(causeless[0].get("code"), "C4.8")
            self.violated(clause, f"alert(s) the step gives no cause for: {causeless}")


def machine_settings() -> settings:
    """The `rig` profile (tests/hil/conftest.py: derandomized, no database, no deadline, no
    shrinking), bounded in examples and steps; a soak run's options on top."""
    rig = settings.get_profile("rig")
    return settings(
        rig,
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        derandomize=not FRESH,
        print_blob=FRESH,
        phases=(*rig.phases, Phase.shrink) if SHRINK else rig.phases,
    )


@pytest.mark.requires("power_control", "network_faults", "sensor_emulation", "ota", "test_hooks")
@pytest.mark.guards(
    "offline_drop",
    "no_lwt",
    "clean_session",
    "online_not_retained",
    "will_not_retained",
    "backlog_lifo",
)
@pytest.mark.clause(
    "C2.8",
    "C3.3",
    "C3.4",
    "C3.5",
    "C3.6",
    "C3.10",
    "C4.1",
    "C4.2",
    "C4.3",
    "C4.4",
    "C4.6",
    "C4.8",
    "C4.14",
    "C5.1",
    "C5.6",
    "C5.7",
    "C5.8",
    "C6.1",
    "C6.2",
    "C6.7",
    "C6.9",
    "C7.3",
    "C7.9",
)
@pytest.mark.timeout(120 + STEP_BUDGET_S * EXAMPLES * (STEPS + 1))
def test_random_sequences_of_rig_actions_keep_the_contract(
    restore_firmware,
    hil_session,
    mqtt,
    fresh_subscriber,
    console,
    power,
    network,
    broker,
    sensor,
    ota_server,
    ota_signer,
    firmware,
) -> None:
    dut = restore_firmware
    initial_env = sensor.get()
    known = Known(
        env=Environment(22.0, 45.0, 1002.0),
        interval_s=setting(hil_session, "measurement_interval_s"),
        offset_c=provisioned_offset(hil_session),
    )
    sensor.set(known.env)
    DeviceContract.bench = Bench(
        device=dut.device_id,
        session=hil_session,
        mqtt=mqtt,
        fresh_subscriber=fresh_subscriber,
        console=console,
        power=power,
        network=network,
        broker=broker,
        sensor=sensor,
        ota_server=ota_server,
        ota_signer=ota_signer,
        firmware=firmware.choice,
        can_update=firmware.kind == "recipe",
        watchdog_s=setting(hil_session, "watchdog_timeout_s"),
        selftest_s=setting(hil_session, "ota_selftest_timeout_s"),
        known=known,
    )
    try:
        run_state_machine_as_test(DeviceContract, settings=machine_settings())
    finally:
        if known.crashed:  # the boot-loop guard counts watchdog resets until the next power-on
            mark = mqtt.mark()
            power.cycle()
            # Not back: restore_firmware (next) flashes and waits, and says so; a failure
            # of the machine is not hidden behind this one.
            with contextlib.suppress(ObserverTimeout):
                mqtt.wait_for(
                    contract.status_topic(dut.device_id), _online, since=mark, timeout=BOOT_S
                )
        sensor.set(initial_env)
        del DeviceContract.bench
