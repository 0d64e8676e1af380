"""RigSession and what it hands the suites, as reports show them."""

from __future__ import annotations


def test_what_a_failure_report_shows_of_a_dut_has_no_memory_address() -> None:
    # Hypothesis and pytest print a Dut's fields in a falsifying example: an address there
    # differs every run (Allure history splits) and says nothing of which port or rig.
    from hil.link.console import Console
    from hil.rig.virtual_board import ControlClient
    from hil.services.mqtt import MqttObserver
    from hil.session import RigSession

    for cls in (Console, MqttObserver, ControlClient, RigSession):
        assert cls.__repr__ is not object.__repr__, cls
    assert repr(ControlClient("tcp://127.0.0.1:5")) == "<ControlClient tcp://127.0.0.1:5>"


def test_the_first_boot_waits_for_the_devices_subscribes(tmp_path, monkeypatch) -> None:
    # A broker that never saw the device keeps nothing published before its SUBSCRIBE, and
    # the device subscribes after its online status: the session waits for the SUBSCRIBEs.
    import threading
    import types

    import pytest

    from hil import session as session_module
    from hil.device import contract
    from hil.errors import InfrastructureError
    from hil.services.broker_log import BrokerLogReader
    from hil.session import RigSession, SessionError

    path = tmp_path / "mosquitto.log"
    path.write_text("1: New client connected from 127.0.0.1:1 as dev-1 (p2, c0, k15, u'dev-1').\n")
    reader, device = BrokerLogReader(path), types.SimpleNamespace(device_id="dev-1")
    topics = contract.device_subscriptions("dev-1")

    def subscribe() -> None:
        with path.open("a") as log:
            log.write("2: Received SUBSCRIBE from dev-1\n")
            log.writelines(f"2: \t{topic} (QoS 1)\n" for topic in topics)

    late = threading.Timer(0.3, subscribe)
    late.start()
    RigSession._await_subscribed(device, reader, since=0)  # returns once all are in
    late.join()

    path.write_text("1: New client connected from 127.0.0.1:1 as dev-1 (p2, c0, k15, u'dev-1').\n")
    monkeypatch.setattr(session_module, "SUBSCRIBE_TIMEOUT_S", 0.2)
    with pytest.raises(SessionError, match="did not subscribe") as never:
        RigSession._await_subscribed(device, reader, since=0)
    assert not isinstance(never.value, InfrastructureError)  # the device's fault, not the rig's
