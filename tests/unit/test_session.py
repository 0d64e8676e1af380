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
