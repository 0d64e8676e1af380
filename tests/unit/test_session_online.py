"""hil.session.wait_online: online over MQTT, or a clear failure for a firmware in a boot loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hil.link.console import Mark
from hil.services.mqtt import ObserverTimeout
from hil.session import SessionError, wait_online

PANIC = "Guru Meditation Error: Core  0 panic'ed (Load access fault). Exception was unhandled."


class FakeObserver:
    def __init__(self, online_after: int | None) -> None:
        self.calls = 0
        self.online_after = online_after

    def wait_for(self, topic: str, predicate: Any, *, timeout: float, since: int = 0, count: int = 1) -> list[Any]:
        self.calls += 1
        assert topic == "esp32/dev-1/status"
        if self.online_after is not None and self.calls > self.online_after:
            return ["online"]
        raise ObserverTimeout(f"waited {timeout} s")


class FakeConsole:
    log_path = Path("/tmp/console.log")

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def lines(self, since: Mark | None = None) -> list[str]:
        return list(self._lines)


def test_a_device_that_comes_online_is_waited_for() -> None:
    observer = FakeObserver(online_after=2)
    wait_online(observer, FakeConsole([]), "dev-1", since=0, booted=Mark(0), timeout=10)  # type: ignore[arg-type]
    assert observer.calls == 3


def test_a_boot_loop_fails_at_once_naming_the_panic() -> None:
    console = FakeConsole(["I (2) app_init: App version: 1.1.0", PANIC, "rst:0xc (RTC_SW_CPU_RST)", PANIC, PANIC])
    started = time.monotonic()
    with pytest.raises(SessionError, match=r"panics at boot.*Load access fault.*console\.log"):
        wait_online(FakeObserver(online_after=None), console, "dev-1", since=0, booted=Mark(0), timeout=60)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5


def test_one_panic_is_not_a_boot_loop_and_the_timeout_still_says_what_it_waited_for() -> None:
    with pytest.raises(ObserverTimeout):
        wait_online(FakeObserver(online_after=None), FakeConsole([PANIC]), "dev-1", since=0, booted=Mark(0), timeout=0.01)  # type: ignore[arg-type]
