"""Infrastructure is told from product by type (hil.errors), never by names or text: each
error class's kind, wrappers that keep the kind of what they chain, the rig's health after
a failure, and what the plugin makes of it in the terminal, JUnit, Allure and the gate."""

from __future__ import annotations

import json
import re
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import serial

from hil.errors import (
    INFRASTRUCTURE_MARKER,
    InfrastructureFailure,
    RigTakenOut,
    as_infrastructure_failure,
    classify,
    is_infrastructure,
)
from hil.firmware.catalog import FirmwareError
from hil.link.console import ConsoleError, ConsolePortLost, ConsoleTimeout
from hil.link.flash_errors import (
    FlashInfrastructureError,
    FlashInputError,
    FlashPortBusyError,
    FlashVerifyError,
)
from hil.reporting.gate import read_junit
from hil.reporting.report import BROKEN_PROPERTY, CATEGORIES, is_broken, mark_broken_in_junit
from hil.rig.errors import NoRigAvailable, Problem, ReservationError, RigConfigError, UnknownRig
from hil.rig.labgrid import LabgridError, LabgridUnavailable, NoPlaceAvailable
from hil.rig.ser2net import Ser2netError
from hil.rig.virtual_board import VirtualBoardError
from hil.rig.wiring import BackendUnavailable, NoBackend
from hil.services.broker import BrokerError, BrokerStartCrashed, BrokerUnsupported
from hil.services.mqtt import MqttObserver, ObserverConnectError, ObserverTimeout, SeqGapError
from hil.services.netfault import FaultProxyError
from hil.session import (
    RigSession,
    SessionError,
    SessionInfrastructureError,
    SessionOptions,
    SessionUsageError,
)

ROOT = Path(__file__).resolve().parents[2]

KINDS = [
    (BrokerError("mosquitto exited"), "infrastructure"),
    (BrokerStartCrashed("killed before it listened"), "infrastructure"),
    (BrokerUnsupported("amqtt has no mTLS listener"), "usage"),
    (ConsoleError("cannot open console port"), "infrastructure"),
    (ConsolePortLost("port gone"), "infrastructure"),
    (serial.SerialException("device reports readiness to read but returned no data"), "infrastructure"),
    (FlashInfrastructureError("could not sync"), "infrastructure"),
    (FlashPortBusyError("held by esp-idf-monitor"), "infrastructure"),
    (FlashVerifyError("MD5 mismatch"), "infrastructure"),
    (FlashInputError("app.bin: image for esp32s3"), "usage"),
    (VirtualBoardError("hil sim board exited before reporting its ports"), "infrastructure"),
    (FaultProxyError("could not start"), "infrastructure"),
    (Ser2netError("ser2net did not start serving"), "infrastructure"),
    (NoRigAvailable("all held"), "infrastructure"),
    (NoPlaceAvailable("all places in use"), "infrastructure"),
    (ReservationError("cannot lock"), "infrastructure"),
    (LabgridError("coordinator unreachable"), "infrastructure"),
    (LabgridUnavailable("pip install hil[labgrid]"), "usage"),
    (UnknownRig("no rig named 'benhc-3'"), "usage"),
    (RigConfigError([Problem(Path("rigs/x.toml"), "unknown key")]), "usage"),
    (FirmwareError("no recipe 'basline'"), "usage"),
    (BackendUnavailable("/dev/i2c-1: permission denied"), "infrastructure"),
    (NoBackend("rigs/x.toml: no [power] table"), "usage"),
    (ObserverConnectError("observer could not connect to 127.0.0.1:1"), "infrastructure"),
    (SessionInfrastructureError("broker unreachable"), "infrastructure"),
    (SessionUsageError("--broker nonsense"), "usage"),
    # the device's failures
    (SessionError("the device never came online: it panics at boot"), "product"),
    (ObserverTimeout("waited 15 s for 1 message(s); got 0"), "product"),
    (ConsoleTimeout("no 'App version'", pattern="x", seen=[], log_path=Path("c.log")), "product"),
    (SeqGapError("seq 4 missing", gaps=[]), "product"),
    (AssertionError("reading out of range"), "product"),
    (ValueError("a bug in the test"), "product"),
]


@pytest.mark.parametrize(("exc", "kind"), KINDS, ids=[type(e).__name__ for e, _ in KINDS])
def test_each_error_is_classified_by_its_type(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_a_wrapper_keeps_the_kind_of_what_it_chains() -> None:
    def wrapped(inner: BaseException, *, chain: bool) -> SessionError:
        try:
            try:
                raise inner
            except Exception as exc:
                if chain:
                    raise SessionError(str(exc)) from exc
                raise SessionError(str(exc)) from None
        except SessionError as outer:
            return outer

    assert classify(wrapped(BrokerError("mosquitto exited with 1"), chain=True)) == "infrastructure"
    assert classify(wrapped(NoBackend("no [power] table"), chain=True)) == "usage"
    assert classify(wrapped(BrokerError("x"), chain=False)) == "product"  # chained from None: the wrapper's own
    try:  # raised while handling another (``__context__``), not made of it: the device's
        try:
            raise ConsolePortLost("port gone")
        except ConsolePortLost:
            raise AssertionError("the reading was wrong") from None
    except AssertionError as exc:
        assert classify(exc) == "product"
    looped = BrokerError("a")
    looped.__cause__ = AssertionError("b")
    looped.__cause__.__cause__ = looped  # a cycle ends the walk
    assert classify(looped) == "infrastructure"


def test_names_and_words_decide_nothing() -> None:
    class BrokerError(Exception):  # the same name as hil.services.broker's, another type
        pass

    assert not is_infrastructure(BrokerError("taken out of this run: ConsoleError port lost"))
    assert not is_infrastructure(AssertionError(f"{INFRASTRUCTURE_MARKER} FlashInfrastructureError"))


def test_an_infrastructure_failure_wraps_once_and_carries_the_marker() -> None:
    failure = as_infrastructure_failure(ConsolePortLost("console port rfc2217://x lost\nmore"))
    assert isinstance(failure, InfrastructureFailure)
    assert str(failure) == f"{INFRASTRUCTURE_MARKER} ConsolePortLost: console port rfc2217://x lost"
    assert as_infrastructure_failure(failure) is None  # judged already
    assert as_infrastructure_failure(AssertionError("x")) is None
    pattern = re.compile(CATEGORIES[0]["messageRegex"])  # what Allure matches, as JS does (search)
    assert CATEGORIES[0]["matchedStatuses"] == ["broken"]
    assert pattern.search(f"hil.errors.RigTakenOut: {RigTakenOut('rig virtual-0 taken out').args[0]}\nmore")
    assert not pattern.search("TypeError: a bug in the test\nConsoleError")


def test_an_observer_that_cannot_connect_is_infrastructure() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ObserverConnectError, match=rf"observer could not connect to 127\.0\.0\.1:{port}") as info:
        MqttObserver("127.0.0.1", port)
    assert time.monotonic() - started < 5
    assert is_infrastructure(info.value) and isinstance(info.value, OSError)  # callers catching OSError still do


# -- the rig's health after a failure -----------------------------------------------------
class FakeBroker:
    name = "mosquitto"

    def __init__(self, exit_status: int | None) -> None:
        self.exit_status = exit_status

    def unexpected_exit(self) -> int | None:
        return self.exit_status


def session_with(tmp_path: Path, *, board_rc: int | None = None, broker_rc: int | None = None) -> RigSession:
    session = RigSession(SessionOptions(rigs_dir=ROOT / "rigs", log_dir=tmp_path / "logs"))
    board = SimpleNamespace(returncode=board_rc, endpoints=SimpleNamespace(pid=4242))
    session.reserved = SimpleNamespace(rig=SimpleNamespace(name="virtual-0"), board=board)  # type: ignore[assignment]
    session.broker = FakeBroker(broker_rc)  # type: ignore[assignment]
    return session


def test_a_failure_with_the_board_process_dead_takes_the_rig_out(tmp_path: Path) -> None:
    session = session_with(tmp_path, board_rc=-9)
    failure = session.judge_failure(ObserverTimeout("waited 15 s for 1 message(s); got 0"))
    assert isinstance(failure, RigTakenOut)
    assert failure.what.startswith("rig virtual-0 taken out of this run: the virtual board process (pid 4242) was killed by SIGKILL")
    assert "the test saw ObserverTimeout: waited 15 s" in failure.what
    assert session.taken_out == failure.what
    # every later failure of the session says the same, whatever it was
    later = session.judge_failure(AssertionError("anything"))
    assert isinstance(later, RigTakenOut) and later.what == failure.what


def test_a_failure_with_the_broker_dead_takes_the_rig_out(tmp_path: Path) -> None:
    failure = session_with(tmp_path, broker_rc=-9).judge_failure(ObserverTimeout("got 0"))
    assert isinstance(failure, RigTakenOut)
    assert "the test broker (mosquitto) was killed by SIGKILL" in failure.what
    assert "exited with status 3" in str(session_with(tmp_path, broker_rc=3).judge_failure(AssertionError("x")))


def test_a_failure_with_the_rig_alive_stands_as_the_device_s(tmp_path: Path) -> None:
    session = session_with(tmp_path)
    assert session.judge_failure(ObserverTimeout("got 0")) is None
    assert session.taken_out is None
    broken = session.judge_failure(FaultProxyError("proxy could not start"))  # infrastructure by type
    assert isinstance(broken, InfrastructureFailure) and not isinstance(broken, RigTakenOut)
    assert session.taken_out is None  # broken, but the rig itself is alive: it stays


# -- JUnit and the gate -------------------------------------------------------------------
JUNIT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="2" skipped="0" tests="3">
<testcase classname="test_x" name="test_board_killed" time="40">
  <failure message="hil.errors.RigTakenOut: {INFRASTRUCTURE_MARKER} rig virtual-0 taken out">tb</failure>
  <properties><property name="{BROKEN_PROPERTY[0]}" value="{BROKEN_PROPERTY[1]}"/></properties>
</testcase>
<testcase classname="test_x" name="test_device_wrong" time="1"><failure message="AssertionError: 40.1 C">tb</failure></testcase>
<testcase classname="test_x" name="test_ok" time="1"/>
</testsuite></testsuites>
"""


def test_broken_failures_become_junit_errors_and_the_gate_reads_them_broken(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    assert {c.nodeid.rsplit("::", 1)[1]: c.outcome for c in read_junit(junit, tmp_path)}["test_board_killed"] == "broken"
    assert mark_broken_in_junit(junit) == 1
    suite = next(ET.parse(junit).iter("testsuite"))
    assert (suite.get("errors"), suite.get("failures")) == ("1", "1")
    cases = {c.get("name"): [child.tag for child in c] for c in suite.iter("testcase")}
    assert cases["test_board_killed"] == ["error", "properties"] and cases["test_device_wrong"] == ["failure"]
    outcomes = {c.nodeid.rsplit("::", 1)[1]: c.outcome for c in read_junit(junit, tmp_path)}
    assert outcomes == {"test_board_killed": "broken", "test_device_wrong": "failed", "test_ok": "passed"}
    assert mark_broken_in_junit(junit) == 0  # once only
    assert is_broken([["hil_outcome", "broken"]]) and not is_broken([("hil_outcome", "passed")])


# -- the plugin: terminal, JUnit and Allure -----------------------------------------------
PLANTED = '''
import pytest
from hil.link.console import ConsolePortLost
from hil.services.mqtt import MqttObserver


def test_port_lost_during_the_call():
    raise ConsolePortLost("console port rfc2217://127.0.0.1:9 lost and not back in 10 s")


def test_observer_cannot_connect():
    MqttObserver("127.0.0.1", {port})


def test_the_device_misbehaves():
    assert 41.0 == 23.5, "reading out of range (a ConsoleError in the device's log is only words)"


def test_passes():
    pass
'''


def test_the_plugin_reports_infrastructure_as_broken_everywhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pytester.makepyfile(test_planted=PLANTED.replace("{port}", str(port)))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    junit, allure = tmp_path / "junit.xml", tmp_path / "allure"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--rootdir={pytester.path}",
        f"--hil-log-dir={tmp_path / 'logs'}", f"--junitxml={junit}", f"--alluredir={allure}",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at call of test_port_lost_during_the_call*",
            "*FAILED test_planted.py::test_the_device_misbehaves*",
            "*ERROR test_planted.py::test_observer_cannot_connect - hil.errors.Infrastruc*",
        ]
    )
    assert "[infrastructure] ObserverConnectError: observer could not connect" in result.stdout.str()
    assert "rigs taken out of this run" not in result.stdout.str()  # no rig involved
    cases = {case.get("name"): case for case in ET.parse(junit).iter("testcase")}
    assert [c.tag for c in cases["test_port_lost_during_the_call"] if c.tag in ("error", "failure")] == ["error"]
    assert [c.tag for c in cases["test_observer_cannot_connect"] if c.tag in ("error", "failure")] == ["error"]
    assert [c.tag for c in cases["test_the_device_misbehaves"] if c.tag in ("error", "failure")] == ["failure"]
    statuses = {}
    for path in allure.glob("*-result.json"):
        data = json.loads(path.read_text())
        statuses[data["name"]] = (data["status"], data.get("statusDetails", {}).get("message", ""))
    assert statuses["test_port_lost_during_the_call"][0] == "broken"
    assert statuses["test_observer_cannot_connect"][0] == "broken"
    assert statuses["test_the_device_misbehaves"][0] == "failed"
    pattern = re.compile(CATEGORIES[0]["messageRegex"])
    assert pattern.search(statuses["test_port_lost_during_the_call"][1])
    assert not pattern.search(statuses["test_the_device_misbehaves"][1])
