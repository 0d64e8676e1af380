"""Commands, the emergency shutdown and program delivery (the AWS IoT "Steel" runtime, §9),
through MQTT only."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from hil.bme280.compensation import Environment
from hil.device import contract
from hil.device.periodic import DEFAULT_TOLERANCE, spacing_problems, wait_timeout
from hil.firmware.selection import app_identity
from hil.services.mqtt import ObserverTimeout
from tests.hil.boot_log import ExpectedBoot, boot_problems
from tests.hil.live import wait_for_live_run
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def online_after(mqtt, device: str, mark: int, timeout: float = 40) -> dict:
    return mqtt.wait_for(
        contract.status_topic(device), lambda m: m.json()["state"] == "online", since=mark, timeout=timeout
    )[0].json()


def restarts_since(mqtt, device: str, mark: int) -> list[dict]:
    return [s for m in mqtt.collect(contract.status_topic(device), since=mark) if (s := m.json())["state"] == "online"]


def payload_of(message) -> Any:
    """A message's JSON. One that is not JSON fails the test rather than being waited past
    (§4: every payload is JSON, so a string echoed in one has its quotes escaped)."""
    try:
        return message.json()
    except ValueError:
        pass
    pytest.fail(f"{message.topic}: not JSON: {message.payload[:300]!r}")


def ack_of(mqtt, device: str, cmd: str | None, mark: int) -> dict:
    topic = contract.command_ack_topic(device)
    ack = payload_of(mqtt.wait_for(topic, lambda m: payload_of(m)["cmd"] == cmd, since=mark, timeout=15)[0])
    assert not contract.validate_payload("command_ack", ack), ack
    return ack


def reading_after(mqtt, device: str, mark: int, boot: int | None = None) -> dict:
    return mqtt.wait_for(
        contract.sensors_topic(device),
        lambda m: boot is None or m.json()["boot_count"] == boot,
        since=mark,
        timeout=30,
    )[0].json()


# -- commands (§5) -------------------------------------------------------------------------


@pytest.mark.clause("C4.6", "C4.10")
def test_report_publishes_health_at_once(dut, mqtt) -> None:
    device = dut.device_id
    mqtt.wait_for(contract.health_topic(device), since=mqtt.mark(), timeout=30)  # a heartbeat: the next is far
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "report"})
    assert ack_of(mqtt, device, "report", mark) == {"cmd": "report", "ok": True}
    health = mqtt.wait_for(contract.health_topic(device), since=mark, timeout=3.5)[0].json()  # heartbeat: 5 s
    assert not contract.validate_payload("health", health), health
    assert restarts_since(mqtt, device, mark) == []


@pytest.mark.guards("reset_says_poweron", "log_ms_backwards", "uri_with_credentials")
@pytest.mark.clause("C5.1", "C4.10", "C4.3", "C2.1", "C2.2", "C2.3", "C2.4", "C2.6", "C2.7", "C1.2")
def test_reset_restarts_the_device_with_reason_sw(dut, mqtt, console, hil_session, firmware) -> None:
    """The `reset` command: acked, one boot whose serial port says what §2 says (the ROM
    banner of a software reset, the image's project and version, times that never go back,
    the sensor, Wi-Fi on the provisioned SSID, then the provisioned broker URI), online with
    reason SW and `boot_count` + 1 in status and health, `seq` from 0."""
    device = dut.device_id
    prov = hil_session.device_provisioning()
    project, version = app_identity(firmware.app)
    before = reading_after(mqtt, device, mqtt.mark())
    mark, since = mqtt.mark(), console.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "reset"})
    assert ack_of(mqtt, device, "reset", mark) == {"cmd": "reset", "ok": True}
    status = online_after(mqtt, device, mark)
    assert status["reset_reason"] == "SW" and status["boot_count"] == before["boot_count"] + 1, status
    health = mqtt.wait_for(
        contract.health_topic(device), lambda m: m.json()["boot_count"] == status["boot_count"], since=mark,
        timeout=setting(hil_session, "heartbeat_interval_s") * 2,
    )[0].json()
    assert (health["reset_reason"], health["version"]) == ("SW", version), health
    first = reading_after(mqtt, device, mark, boot=status["boot_count"])
    assert first["seq"] == 0, "seq starts at 0 each boot"
    console.expect(contract.MQTT_CONNECTED, timeout=10, since=since)
    expected = ExpectedBoot("SW", project, version, ssid=prov.wifi_ssid, uri=prov.mqtt_uri)
    assert boot_problems(console.lines(since), expected) == []


@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("factory_reset_defaults", "factory_reset_erases_stats")
@pytest.mark.clause("C5.2", "C4.10", "C5.1", "C3.5")
def test_factory_reset_erases_the_config_and_returns_to_the_provisioned_settings(
    restore_firmware, mqtt, sensor, hil_session
) -> None:
    """A saved update (+4 °C, readings every 2 s) is erased by `factory_reset`: after the
    restart the offset is gone and readings come at the session's provisioned interval
    again (in `device`, not the built-in 10 s default) on both clocks. Only `config` is
    erased: the boot after it is counted on, `boot_count` one higher (not back to 1)."""
    dut = restore_firmware  # a failure half way must not leave the offset behind
    device = dut.device_id
    interval = setting(hil_session, "measurement_interval_s")
    changed = 2 if interval != 2 else 3  # any interval other than the provisioned one
    env = Environment(21.0, 40.0, 1005.0)
    sensor.set(env)
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(device), {"calibration_offset_temp": 4.0, "measurement_interval_s": changed})
    boot = online_after(mqtt, device, mark)["boot_count"]
    assert abs(reading_after(mqtt, device, mark, boot)["temperature_c"] - (env.temperature_c + 4.0)) <= 1.0
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "factory_reset"})
    assert ack_of(mqtt, device, "factory_reset", mark) == {"cmd": "factory_reset", "ok": True}
    status = online_after(mqtt, device, mark)
    assert status["reset_reason"] == "SW"
    assert status["boot_count"] == boot + 1, f"boot_count {boot} before the factory reset, {status['boot_count']} after"
    reading = reading_after(mqtt, device, mark, status["boot_count"])
    assert abs(reading["temperature_c"] - env.temperature_c) <= contract.TEMPERATURE_ACCURACY_C, "the offset survived"
    # What the boot measured before its broker connection is sent in a burst on connect
    # (C3.10; seconds of Wi-Fi join, DHCP and connect on a real board): no period on the
    # receive clock: both clocks judge from the live cadence on.
    settled = mqtt.mark()  # after the boot's first reading
    got, live = wait_for_live_run(
        mqtt, hil_session, contract.sensors_topic(device), settled, interval, 4,
        lambda m: m.json()["boot_count"] == status["boot_count"],
    )  # fmt: skip
    received = got[live:]
    problems = spacing_problems(
        interval, device_times=[m.json()["timestamp"] for m in received], received_times=[m.at for m in received],
        what=f"readings after the factory reset (provisioned every {interval:g} s)",
    )  # fmt: skip
    assert problems == [], problems


@pytest.mark.parametrize(
    ("payload", "cmd"),
    [
        pytest.param({"cmd": "self_destruct"}, "self_destruct", id="unknown-command"),
        # Echoed back as JSON escapes it (an ack built with snprintf's "%s" is no JSON).
        pytest.param({"cmd": 'say "hi"\\'}, 'say "hi"\\', id="cmd-with-quotes", marks=pytest.mark.guards("ack_json_unescaped")),
        pytest.param(b"reset", None, id="not-json"),
        pytest.param({"task": "sensor"}, None, id="no-cmd"),
        pytest.param({"cmd": ["reset"]}, None, id="cmd-not-a-string"),
    ],
)
@pytest.mark.clause("C4.10")
def test_an_unknown_or_malformed_command_is_refused_and_changes_nothing(dut, mqtt, payload, cmd) -> None:
    device = dut.device_id
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), payload)
    ack = ack_of(mqtt, device, cmd, mark)
    assert set(ack) == {"cmd", "ok", "error"} and ack["ok"] is False and ack["error"], ack
    reading_after(mqtt, device, mqtt.mark())
    assert restarts_since(mqtt, device, mark) == []


@pytest.mark.requires("power_control")
@pytest.mark.guards("shutdown_no_sleep")
@pytest.mark.clause("C5.4")
def test_emergency_shutdown_disconnects_cleanly_and_stops_until_the_next_power_on(dut, mqtt, power) -> None:
    device = dut.device_id
    status = contract.status_topic(device)
    mark = mqtt.mark()
    mqtt.publish(contract.emergency_topic(device), contract.EMERGENCY_SHUTDOWN.encode())
    mqtt.wait_for(status, lambda m: m.json()["state"] == "offline", since=mark, timeout=15)
    quiet = mqtt.mark()
    # Asleep: no reconnect, no reading, no heartbeat (5 s) for longer than the first backoff.
    with pytest.raises(ObserverTimeout):
        mqtt.wait_for(contract.device_publish_prefix(device) + "#", lambda m: m.topic != status, since=quiet, timeout=8)
    offline = [m.json() for m in mqtt.collect(status, since=mark)]
    assert offline == [{"state": "offline"}], f"a clean disconnect fires no last will: {offline}"
    mark = mqtt.mark()
    power.cycle()
    assert online_after(mqtt, device, mark)["reset_reason"] == "POWERON"
    reading_after(mqtt, device, mark)


# -- programs (§9) -------------------------------------------------------------------------


def deploy(mqtt, device: str, name: str, source: str, sha256: str | None = None) -> int:
    mark = mqtt.mark()
    digest = sha256 or hashlib.sha256(source.encode()).hexdigest()
    mqtt.publish(contract.programs_deploy_topic(device), {"name": name, "source": source, "sha256": digest})
    return mark


def program_statuses(mqtt, device: str, mark: int, final: str, timeout: float = 30, name: str | None = None) -> list[dict]:
    """Every programs/status since ``mark`` up to the first verdict (completed, failed,
    rejected), each checked; the verdict must be ``final`` (a device that already said
    no is not waited on for a yes). With ``name``, every one of them names that deployment
    (C4.13: a backend tells its programs apart by name, failures included)."""
    topic = contract.programs_status_topic(device)
    mqtt.wait_for(topic, lambda m: payload_of(m)["state"] in PROGRAM_VERDICTS, since=mark, timeout=timeout)
    statuses = [payload_of(m) for m in mqtt.collect(topic, since=mark)]
    for status in statuses:
        assert not contract.validate_payload("programs_status", status), status
    states = [s["state"] for s in statuses]
    end = next(i for i, state in enumerate(states) if state in PROGRAM_VERDICTS)
    assert states[end] == final, f"the program ended {states[end]!r}, not {final!r}: {statuses[: end + 1]}"
    if name is not None:
        unnamed = [s for s in statuses[: end + 1] if s["name"] != name]
        assert unnamed == [], f"statuses of the deployment {name!r} that name another: {unnamed}"
    return statuses[: end + 1]


PROGRAM_VERDICTS = ("completed", "failed", "rejected")


def ran(statuses: list[dict], final: str) -> bool:
    states = [s["state"] for s in statuses]
    return states[0] == "accepted" and states[-1] == final and set(states[1:-1]) <= {"running"}


def has_error(status: dict) -> bool:
    """The status says why, in words the contract leaves to the firmware: any non-empty text."""
    error = status.get("error")
    return isinstance(error, str) and error.strip() != ""


@pytest.mark.clause("C9.4", "C4.13")
def test_a_program_runs_and_reports_the_value_of_its_last_expression(dut, mqtt) -> None:
    source = "(define (square x) (* x x))\n(let ((a 12)) (if (> a 10) (square a) 0))"
    mark = deploy(mqtt, dut.device_id, "square", source)
    statuses = program_statuses(mqtt, dut.device_id, mark, "completed", name="square")
    assert ran(statuses, "completed"), statuses
    assert statuses[-1] == {"name": "square", "state": "completed", "result": 144}


# Scheme's answers (R7RS), as JSON: each pins one rule a runtime could get subtly wrong.
SCHEME_VALUES = [
    ("(/ 7 2)", 3.5),  # division is exact, not C's truncation
    ("(/ 8 2)", 4),
    ("(- 10 4 3)", 3),  # left to right
    ("(- 5)", -5),
    ("(/ 2)", 0.5),  # one argument: its reciprocal
    ("(* 2 3 4)", 24),
    ("(+ 1 2.5)", 3.5),
    ("(< 2 2)", False),  # < and <= differ at equality
    ("(<= 2 2)", True),
    ("(> 2 2)", False),  # > and >= too
    ("(>= 2 2)", True),
    ("(< 1 2)", True),  # each comparison both ways
    ("(> 1 2)", False),
    ("(> 3 2)", True),
    ("(>= 2 3)", False),
    ("(= 2 2)", True),
    ("(= 2 3)", False),
    ("(< 1 2 3)", True),  # more than two arguments: each neighbouring pair holds
    ("(< 1 3 2)", False),
    ("(= 2 2 3)", False),
    ("(if #f 1 2)", 2),
    ("(if 0 1 2)", 1),  # only #f is false
    ("(begin 1 2 3)", 3),
    ("(begin (sleep 0) 1)", 1),  # no wait is still a whole number of milliseconds
    ("(let ((x 2) (y 3)) (* x y))", 6),
    ("(define x 1) (let ((x 2) (y x)) y)", 1),  # let's inits all see the outer x: it is not let*
    ("((lambda (x y) (- x y)) 10 3)", 7),  # arguments in order
    ("(define x 5) (define (f y) (+ x y)) (f 10)", 15),
    ("(define (adder n) (lambda (x) (+ x n))) ((adder 3) 4)", 7),  # closures keep their scope
    ("(define (fact n) (if (<= n 1) 1 (* n (fact (- n 1))))) (fact 10)", 3628800),
    ('"hello"', "hello"),
    ('"say \\"hi\\" \\\\ ok"', 'say "hi" \\ ok'),  # escaped in the status as JSON escapes it
    ("#t", True),
    ("#f", False),
]


@pytest.mark.guards("program_int_division", "program_result_unescaped", "program_gt_as_ge", "program_compare_first_two")
@pytest.mark.clause("C9.4", "C9.7", "C4.13")
def test_programs_compute_what_scheme_computes(dut, mqtt) -> None:
    wrong = []
    for n, (source, expected) in enumerate(SCHEME_VALUES):
        mark = deploy(mqtt, dut.device_id, f"value-{n}", source)
        status = program_statuses(mqtt, dut.device_id, mark, "completed", timeout=15)[-1]
        result = status.get("result")
        if result != expected or type(result) is not type(expected):
            wrong.append(f"{source} gave {result!r}, not {expected!r}")
    assert wrong == []


@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("program_pressure_in_pa")
@pytest.mark.clause("C9.7", "C8.5")
def test_a_program_reads_the_sensor_and_publishes_under_its_own_topic(dut, mqtt, sensor) -> None:
    """Each of the three quantities in the readings' units (°C, %RH, hPa), within the
    readings' accuracy of the environment."""
    env = Environment(24.0, 50.0, 990.0)
    sensor.set(env)
    reading_after(mqtt, dut.device_id, mqtt.mark())  # a reading taken in the new environment
    reading_after(mqtt, dut.device_id, mqtt.mark())
    source = "(publish \"probe\" (sensor 'temperature))\n(publish \"p\" (sensor 'pressure))\n(led 'on)\n(sensor 'humidity)"
    mark = deploy(mqtt, dut.device_id, "probe", source)
    result = program_statuses(mqtt, dut.device_id, mark, "completed")[-1]["result"]
    assert abs(result - env.humidity_pct) <= contract.HUMIDITY_ACCURACY_PCT
    for suffix, expected, accuracy in (
        ("probe", env.temperature_c, contract.TEMPERATURE_ACCURACY_C),
        ("p", env.pressure_hpa, contract.PRESSURE_ACCURACY_HPA),
    ):
        published = mqtt.wait_for(contract.program_publish_topic(dut.device_id, suffix), since=mark, timeout=5)[0].json()
        value = published["value"] if isinstance(published, dict) else published
        assert abs(value - expected) <= accuracy, f"(publish {suffix!r} ...) gave {published}, the environment {expected}"


@pytest.mark.clause("C9.5", "C4.13")
def test_a_program_over_its_step_budget_fails_and_the_device_carries_on(dut, mqtt) -> None:
    mark = deploy(mqtt, dut.device_id, "forever", "(define (loop n) (loop (+ n 1)))\n(loop 0)")
    statuses = program_statuses(mqtt, dut.device_id, mark, "failed", name="forever")
    assert ran(statuses, "failed") and has_error(statuses[-1]), statuses
    reading_after(mqtt, dut.device_id, mqtt.mark())
    assert restarts_since(mqtt, dut.device_id, mark) == []


# 2^(2^22): a 4 Mbit (512 KiB) integer, more than an ESP32-C3's whole 400 KiB of SRAM, so
# over any memory budget the device can have; a runtime without big integers fails it on
# overflow instead (also `failed`). In ~25 steps: not the step budget's doing.
_OVER_MEMORY = "(define (square-times x n) (if (= n 0) x (square-times (* x x) (- n 1))))\n(define big (square-times 2 22))\n(> big 0)"
# A non-tail recursion 2000 deep: within the budget it completes, beyond it it fails; it
# must not overflow a stack and take the device down (a recursive evaluator in C would).
_DEEP_RECURSION = "(define (depth n) (if (= n 0) 0 (+ 1 (depth (- n 1)))))\n(depth 2000)"


@pytest.mark.guards("program_memory_unbounded", "program_oom_panics")
@pytest.mark.clause("C9.5", "C9.6", "C4.13")
def test_a_program_over_its_memory_budget_fails_and_the_device_carries_on(dut, mqtt) -> None:
    device = dut.device_id
    boot = reading_after(mqtt, device, mqtt.mark())["boot_count"]
    mark = deploy(mqtt, device, "hog", _OVER_MEMORY)
    hog = program_statuses(mqtt, device, mark, "failed", timeout=15, name="hog")
    assert ran(hog, "failed") and has_error(hog[-1]), hog
    deep = deploy(mqtt, device, "deep", _DEEP_RECURSION)
    topic = contract.programs_status_topic(device)
    mqtt.wait_for(topic, lambda m: payload_of(m)["state"] in PROGRAM_VERDICTS, since=deep, timeout=15)
    statuses = [payload_of(m) for m in mqtt.collect(topic, since=deep)]
    verdict = next(s for s in statuses if s["state"] in PROGRAM_VERDICTS)
    assert not contract.validate_payload("programs_status", verdict), verdict
    assert verdict in ({"name": "deep", "state": "completed", "result": 2000},) or (
        verdict["state"] == "failed" and has_error(verdict)
    ), f"a 2000-deep recursion ended {verdict}: completed with 2000 or failed"
    after = reading_after(mqtt, device, mqtt.mark())
    assert restarts_since(mqtt, device, mark) == [] and after["boot_count"] == boot, "the device restarted"


def countdown(n: int) -> str:
    return f"(define (loop n) (if (= n 0) 'done (loop (- n 1))))\n(loop {n})"


@pytest.mark.clause("C9.5", "C9.4")
def test_the_step_budget_is_the_contracts(dut, mqtt) -> None:
    """The contract does not define a step, so the edge is held with a margin any sane
    counting keeps: a loop of one iteration per 100 steps of the budget completes (no
    runtime spends 100 steps on one compare-subtract-call), a loop of as many iterations
    as the budget has steps fails (each iteration is at least one step)."""
    budget = contract.PROGRAM_STEP_BUDGET
    mark = deploy(mqtt, dut.device_id, "within", countdown(budget // 100))
    within = program_statuses(mqtt, dut.device_id, mark, "completed", timeout=30)
    assert ran(within, "completed") and within[-1]["result"] == "done", within
    mark = deploy(mqtt, dut.device_id, "beyond", countdown(budget))
    beyond = program_statuses(mqtt, dut.device_id, mark, "failed", timeout=30)
    assert ran(beyond, "failed") and has_error(beyond[-1]), beyond


@pytest.mark.clause("C9.5", "C4.13")
@pytest.mark.guards("program_failure_unnamed")
@pytest.mark.parametrize(
    "source",
    [
        "(+ 1 \"a\")",
        "(undefined-procedure 1)",
        "(1 2)",
        # A call with more arguments than the procedure takes is an error, not the extra dropped.
        "((lambda (x) x) 1 2)",
        "(sleep 1 2)",
        # Scheme's exact division by zero is an error, not 0, inf or null.
        pytest.param("(/ 1 0)", marks=[pytest.mark.guards("program_div_zero_is_zero"), pytest.mark.clause("C9.7")]),
    ],
)
def test_a_program_that_raises_an_error_fails_with_it(dut, mqtt, source) -> None:
    mark = deploy(mqtt, dut.device_id, "raises", source)
    statuses = program_statuses(mqtt, dut.device_id, mark, "failed", timeout=15, name="raises")
    assert ran(statuses, "failed") and has_error(statuses[-1]), statuses
    assert "result" not in statuses[-1], statuses[-1]


@pytest.mark.guards("program_error_generic")
@pytest.mark.clause("C9.5", "C4.13")
def test_each_failure_reports_its_own_error(dut, mqtt) -> None:
    """Failed "with the error": over the step budget, over the memory budget, and an error
    the program raised each say which it was. The words are the firmware's, so only this
    is held: no two of the three reports are the same text."""
    errors = {}
    for name, source in (
        ("steps", countdown(contract.PROGRAM_STEP_BUDGET)),
        ("memory", _OVER_MEMORY),
        ("raised", '(+ 1 "a")'),
    ):
        mark = deploy(mqtt, dut.device_id, name, source)
        verdict = program_statuses(mqtt, dut.device_id, mark, "failed", timeout=30, name=name)[-1]
        assert has_error(verdict), verdict
        errors[name] = verdict["error"]
    assert len(set(errors.values())) == len(errors), f"failures that say the same: {errors}"


@pytest.mark.guards("program_topic_unchecked")
@pytest.mark.clause("C9.5", "C9.6", "C9.7")
def test_a_program_publishing_to_a_wildcard_topic_fails_and_telemetry_goes_on(dut, mqtt, console, hil_session) -> None:
    """`(publish "x/#" 1)`: no MQTT topic (a wildcard is for filters), so nothing under
    `esp32/{id}/programs/` either. The program fails with an error, and what the device
    publishes goes on: three readings of one boot within their interval (a publisher that
    died on the topic, or a connection the broker closed over it, sends none), no
    restart, no lost connection on the serial port."""
    device = dut.device_id
    interval = setting(hil_session, "measurement_interval_s")
    since = console.mark()
    mark = deploy(mqtt, device, "wildcard", '(publish "x/#" 1)')
    readings = mqtt.wait_for(contract.sensors_topic(device), since=mark, count=3, timeout=wait_timeout(interval, 3))
    assert len({m.json()["boot_count"] for m in readings}) == 1, [m.json() for m in readings]
    statuses = program_statuses(mqtt, device, mark, "failed", timeout=15)
    assert ran(statuses, "failed") and has_error(statuses[-1]), statuses
    assert restarts_since(mqtt, device, mark) == []
    lost = [line for line in console.lines(since) if contract.MQTT_DISCONNECTED.search(line)]
    assert lost == [], f"the connection was lost after the deployment: {lost}"


def padded(source: str, size: int) -> str:
    """``source`` padded with spaces to exactly ``size`` UTF-8 bytes."""
    return source + " " * (size - len(source.encode()))


_TOO_LARGE = padded("(+ 1 2)", contract.PROGRAM_MAX_BYTES + 1)  # one byte over 8 KiB
# Under 8 KiB in characters, over it in bytes: the limit counts bytes.
_TOO_LARGE_IN_BYTES = '"' + "\u00e9" * (contract.PROGRAM_MAX_BYTES // 2) + '"'  # 4098 characters, 8194 bytes
_RIGHT_DIGEST = hashlib.sha256(b"(+ 1 2)").hexdigest()
_LAST_DIGIT_WRONG = _RIGHT_DIGEST[:-1] + ("0" if _RIGHT_DIGEST[-1] != "0" else "1")


@pytest.mark.parametrize(
    ("source", "sha256"),
    [
        pytest.param("(+ 1 2", None, id="parse-error", marks=pytest.mark.guards("program_rejection_unnamed")),
        pytest.param(
            "(+ 1 2)", hashlib.sha256(b"(+ 1 3)").hexdigest(), id="hash-mismatch",
            marks=pytest.mark.guards("program_no_hash"),
        ),
        # Wrong only in its last hex digit: the whole digest is compared, not a prefix.
        pytest.param(
            "(+ 1 2)", _LAST_DIGIT_WRONG, id="hash-wrong-in-last-digit",
            marks=pytest.mark.guards("program_hash_prefix_only"),
        ),
        pytest.param(_TOO_LARGE, None, id="too-large", marks=pytest.mark.guards("program_rejection_falls_through")),
        pytest.param(_TOO_LARGE_IN_BYTES, None, id="too-large-in-utf8-bytes"),
    ],
)
@pytest.mark.clause("C9.1", "C9.2", "C9.3", "C4.13")
def test_a_bad_program_is_rejected_without_running(dut, mqtt, source, sha256) -> None:
    """Rejected at once, with an error (its words are the firmware's: the contract names
    the reasons, not how to say them), and never run: a program deployed after it runs to
    its end, and nothing in between says the rejected one was accepted, ran or ended."""
    device = dut.device_id
    mark = deploy(mqtt, device, "bad", source, sha256)
    statuses = program_statuses(mqtt, device, mark, "rejected", timeout=15)
    assert [s["state"] for s in statuses] == ["rejected"], statuses
    assert has_error(statuses[-1]), statuses[-1]
    # The deployment had a usable name: the refusal says which one it was (null is only
    # for a deployment that carried none, see test_a_malformed_deployment_is_rejected).
    assert statuses[-1]["name"] == "bad", statuses[-1]
    # Deployments are handled in order: once the next one has completed, anything the
    # rejected one set off has been reported.
    topic = contract.programs_status_topic(device)
    fence = deploy(mqtt, device, "after", "1")
    mqtt.wait_for(topic, lambda m: payload_of(m) == {"name": "after", "state": "completed", "result": 1}, since=fence, timeout=15)
    bad = [s for m in mqtt.collect(topic, since=mark) if (s := payload_of(m))["name"] == "bad"]
    assert [s["state"] for s in bad] == ["rejected"], f"the rejected deployment went on: {bad}"
    assert restarts_since(mqtt, device, mark) == []


@pytest.mark.guards("program_size_edge")
@pytest.mark.clause("C9.1", "C9.4")
def test_a_program_of_exactly_8_kib_is_accepted_and_runs(dut, mqtt) -> None:
    source = padded("(+ 1 2)", contract.PROGRAM_MAX_BYTES)
    mark = deploy(mqtt, dut.device_id, "edge", source)
    statuses = program_statuses(mqtt, dut.device_id, mark, "completed", timeout=15)
    assert ran(statuses, "completed") and statuses[-1]["result"] == 3, statuses


@pytest.mark.clause("C9.3", "C4.13")
def test_a_malformed_deployment_is_rejected(dut, mqtt) -> None:
    mark = mqtt.mark()
    mqtt.publish(contract.programs_deploy_topic(dut.device_id), b'{"name": "x", "source": ')
    statuses = program_statuses(mqtt, dut.device_id, mark, "rejected", timeout=15)
    assert [s["state"] for s in statuses] == ["rejected"] and has_error(statuses[-1]), statuses


@pytest.mark.guards("program_blocks_sensor", "program_sleep_in_us")
@pytest.mark.clause("C9.6", "C9.7")
def test_telemetry_and_the_watchdog_carry_on_while_a_program_runs(dut, mqtt, hil_session) -> None:
    """While an 8 s program runs: readings every measurement interval (gapless `seq`, each
    gap on the device clock and on arrival at most twice the interval, as many as the
    interval allows), a heartbeat, no restart; and it takes its 8 s: `(sleep ms)` waits
    milliseconds (C9.7)."""
    device = dut.device_id
    interval = setting(hil_session, "measurement_interval_s")
    # About 8 s of (sleep ...), longer than the session's 5 s watchdog and one heartbeat.
    source = "(define (tick n) (if (= n 0) 'done (begin (sleep 250) (tick (- n 1)))))\n(tick 32)"
    mark = deploy(mqtt, device, "ticker", source)
    statuses = program_statuses(mqtt, device, mark, "completed", timeout=40)
    assert ran(statuses, "completed") and statuses[-1]["result"] == "done", statuses
    topic = contract.programs_status_topic(device)
    window = [m.at for m in mqtt.collect(topic, since=mark) if m.json()["state"] in ("accepted", "running", "completed")]
    ran_s = window[-1] - window[0]
    # 32 sleeps of 250 ms: the program cannot be done sooner (both ends of the window cross
    # the same link, each within the rig's declared delivery jitter).
    slept_s = 32 * 0.250
    assert ran_s >= slept_s - DEFAULT_TOLERANCE.latency_s, f"32 × (sleep 250) ran in {ran_s:.2f} s, not {slept_s:g} s"
    received = [m for m in mqtt.collect(contract.sensors_topic(device), since=mark) if window[0] <= m.at <= window[-1]]
    readings = [m.json() for m in received]
    seqs = [r["seq"] for r in readings]
    assert len(readings) >= ran_s / interval * 0.75 - 1, f"{len(readings)} readings in the {ran_s:.1f} s the program ran"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gaps in seq: {seqs}"
    device_gaps = [b["timestamp"] - a["timestamp"] for a, b in itertools.pairwise(readings)]
    arrival_gaps = [b.at - a.at for a, b in itertools.pairwise(received)]
    assert max(device_gaps) <= 2 * interval, f"readings {device_gaps} s apart on the device clock"
    assert max(arrival_gaps) <= 2 * interval, f"readings {arrival_gaps} s apart on arrival"
    assert mqtt.collect(contract.health_topic(device), since=mark), "no heartbeat while the program ran"
    assert restarts_since(mqtt, device, mark) == []
