"""pytest plugin for bench/suite.py: where the time of a HIL run goes.

Loaded with ``-p suite_probe`` (bench/ on PYTHONPATH); the library is not changed: the
probe wraps, for this process only, the calls through which a test waits for the device
and the calls that do the rig's work, and records each outermost call (a wait inside a
wait counts once, as the outer one):

* ``device``: waiting for the device to do something on its own schedule: a console
  line (`Console.expect`, `Console.wait_connected`), MQTT messages
  (`MqttObserver.wait_for`, `hil.session.wait_online`), the board's TX or mode
  (`ControlClient.wait_tx`, the ``wait_mode`` request), its connections through the
  fault proxy (`FaultProxy.wait_for_connections`), a load run's fleet (its
  `FleetCollector.wait_each` and ``wait_sys``: the profile's steady window, the storm's
  recovery);
* ``flashing``: `Flasher.flash`, `Flasher.erase_flash`;
* ``broker start``, ``board start``: starting mosquitto/amqtt and ``hil sim board``;
* ``power``: the rig's power requests (a cycle includes its off time).

Each record: test node id, category, call, what it waited for, start, seconds, and how
it ended (``ok``, ``timeout``: a negative check such as "no reading for 6 s", or
``error``). Written as JSON lines to ``$BENCH_WAITS`` with the session's wall time and
each test phase's duration.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_local = threading.local()
_records: list[dict[str, Any]] = []
_phases: list[dict[str, Any]] = []
_current = {"nodeid": "(session)"}
_session: dict[str, float] = {}
_patched: list[tuple[Any, str, Any]] = []


def _describe(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if (
        name in ("Console.expect", "MqttObserver.wait_for", "ControlClient.wait_tx")
        and len(args) > 1
    ):
        what = args[1]
        return str(getattr(what, "pattern", what))[:80]
    if name == "ControlClient.request" and len(args) > 1:
        return f"{args[1]} {kwargs.get('action') or kwargs.get('mode') or ''}".strip()
    if name == "wait_online" and len(args) > 2:
        return f"online {args[2]}"
    return ""


def _wrap(
    owner: Any, attr: str, category: str | Callable[[tuple[Any, ...], dict[str, Any]], str | None]
) -> None:
    original = getattr(owner, attr)
    name = f"{owner.__name__}.{attr}" if isinstance(owner, type) else attr

    @functools.wraps(original)
    def probe(*args: Any, **kwargs: Any) -> Any:
        kind = category(args, kwargs) if callable(category) else category
        depth = getattr(_local, "depth", 0)
        if kind is None or depth:
            return original(*args, **kwargs)
        _local.depth = depth + 1
        start = time.monotonic()
        outcome = "ok"
        try:
            return original(*args, **kwargs)
        except AssertionError:  # ConsoleTimeout, ObserverTimeout are AssertionErrors
            outcome = "timeout"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            _local.depth = depth
            _records.append(
                {
                    "test": _current["nodeid"],
                    "category": kind,
                    "call": name,
                    "what": _describe(name, args, kwargs),
                    "start": start,
                    "seconds": time.monotonic() - start,
                    "outcome": outcome,
                }
            )

    setattr(owner, attr, probe)
    _patched.append((owner, attr, original))


def _control_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    cmd = args[1] if len(args) > 1 else kwargs.get("cmd")
    if cmd == "wait_mode":
        return "device"
    if cmd == "power":
        return "power"
    return None


def pytest_configure(config: pytest.Config) -> None:
    from hil import session
    from hil.link.console import Console
    from hil.link.flasher import Flasher
    from hil.load.collector import FleetCollector
    from hil.rig.virtual_board import ControlClient, VirtualBoardProcess
    from hil.services.broker import MosquittoBroker  # AmqttBroker inherits its start
    from hil.services.mqtt import MqttObserver
    from hil.services.netfault import FaultProxy

    _wrap(Console, "expect", "device")
    _wrap(Console, "wait_connected", "device")
    _wrap(MqttObserver, "wait_for", "device")
    _wrap(session, "wait_online", "device")
    _wrap(ControlClient, "wait_tx", "device")
    _wrap(ControlClient, "request", _control_request)
    _wrap(FaultProxy, "wait_for_connections", "device")
    _wrap(FleetCollector, "wait_each", "device")
    _wrap(FleetCollector, "wait_sys", "device")
    _wrap(Flasher, "flash", "flashing")
    _wrap(Flasher, "erase_flash", "flashing")
    _wrap(MosquittoBroker, "start", "broker start")
    _wrap(VirtualBoardProcess, "start", "board start")


def pytest_sessionstart(session: pytest.Session) -> None:
    _session["start"] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current["nodeid"] = item.nodeid
    try:
        return (yield)
    finally:
        _current["nodeid"] = "(between tests)"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _phases.append(
        {
            "test": report.nodeid,
            "phase": report.when,
            "seconds": report.duration,
            "outcome": report.outcome,
        }
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # The session's fixtures were torn down with the last test; bench/suite.py also takes
    # the wall time around the whole process (start-up and collection included).
    path = os.environ.get("BENCH_WAITS")
    if not path:
        return
    with open(path, "w") as out:
        out.write(
            json.dumps({"session": {"start": _session.get("start"), "end": time.monotonic()}})
            + "\n"
        )
        for record in _records:
            out.write(json.dumps({"wait": record}) + "\n")
        for phase in _phases:
            out.write(json.dumps({"phase": phase}) + "\n")
