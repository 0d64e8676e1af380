"""amqtt as the embedded fallback broker: the same interface as mosquitto (accounts, ACL,
TLS, stop/start/restart/kill), and the smoke suite on it, chosen explicitly or because
mosquitto is not on PATH."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.secret import Secret, reveal
from hil.services.broker import OBSERVER_USER, AmqttBroker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TIMEOUT_S = 10.0


class Client:
    """A paho client that records CONNACK, SUBACK and messages, each with an event."""

    def __init__(self, port: int, user: str | None, password: Secret | str | None, *, ca_pem: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{os.urandom(3).hex()}")
        if user is not None:
            self.client.username_pw_set(user, reveal(password))
        if ca_pem is not None:
            self.client.tls_set_context(ssl.create_default_context(cadata=ca_pem))
        self.connack: list[paho.ReasonCode] = []
        self.subacks: list[list[paho.ReasonCode]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.connected, self.subscribed, self.received = threading.Event(), threading.Event(), threading.Event()
        self.client.on_connect = lambda c, u, f, reason, p: (self.connack.append(reason), self.connected.set())
        self.client.on_subscribe = lambda c, u, mid, codes, p: (self.subacks.append(codes), self.subscribed.set())
        self.client.on_message = lambda c, u, m: (self.messages.append((m.topic, m.payload)), self.received.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT_S), "the broker never answered the CONNECT"

    def subscribe(self, topic: str) -> paho.ReasonCode:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT_S), f"no SUBACK for {topic}"
        return self.subacks[-1][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def amqtt(tmp_path: Path) -> Iterator[AmqttBroker]:
    broker = AmqttBroker(tmp_path / "broker")
    broker.add_device("hil-dev-1")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def test_accounts_and_the_acl_are_enforced(amqtt: AmqttBroker) -> None:
    creds = amqtt.credentials("hil-dev-1")
    observer = Client(amqtt.plain_port, OBSERVER_USER, amqtt.observer_password)
    device = Client(amqtt.plain_port, creds.username, creds.password)
    try:
        assert not observer.connack[0].is_failure and not device.connack[0].is_failure
        assert not observer.subscribe("#").is_failure
        assert not device.subscribe("config/update/hil-dev-1").is_failure
        assert device.subscribe("esp32/hil-dev-2/#").is_failure  # another device's topics
        device.client.publish("esp32/hil-dev-2/sensors", b"forged", qos=1)  # dropped by the ACL
        device.client.publish("esp32/hil-dev-1/sensors", b"mine", qos=1)
        assert observer.received.wait(TIMEOUT_S)
        observer.client.publish("config/update/hil-dev-1", b"{}", qos=1)
        assert device.received.wait(TIMEOUT_S)
        assert ("config/update/hil-dev-1", b"{}") in device.messages
        assert ("esp32/hil-dev-1/sensors", b"mine") in observer.messages
        assert all(topic != "esp32/hil-dev-2/sensors" for topic, _ in observer.messages)
    finally:
        observer.close()
        device.close()
    for who, password in (("hil-dev-1", "wrong"), (None, None)):
        stranger = Client(amqtt.plain_port, who, password)
        stranger.close()
        assert stranger.connack[0].is_failure, f"{who or 'anonymous'} was let in"


def test_the_tls_listener_serves_the_session_ca(amqtt: AmqttBroker) -> None:
    client = Client(amqtt.tls_port, OBSERVER_USER, amqtt.observer_password, ca_pem=amqtt.ca_pem)
    client.close()
    assert not client.connack[0].is_failure


def test_stop_start_restart_and_kill(amqtt: AmqttBroker) -> None:
    proc = amqtt._proc
    assert proc is not None and proc.poll() is None
    amqtt.stop()
    assert proc.returncode == 0  # SIGTERM: a clean shutdown
    with pytest.raises(ConnectionRefusedError):
        Client(amqtt.plain_port, OBSERVER_USER, amqtt.observer_password)
    amqtt.start()
    amqtt.restart()
    client = Client(amqtt.plain_port, OBSERVER_USER, amqtt.observer_password)  # same port after restarts
    client.close()
    assert not client.connack[0].is_failure
    killed = amqtt._proc
    amqtt.kill()
    assert killed is not None and killed.returncode == -9


def run_smoke(tmp_path: Path, broker: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-p", "no:cacheprovider", "-q",
         "--broker", broker, "--hil-log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def assert_ran_on_amqtt(tmp_path: Path, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 passed" in result.stdout, result.stdout[-3000:]  # nothing skipped
    logs = tmp_path / "logs" / "main"
    assert not (logs / "mosquitto.log").exists()
    log = (logs / "amqtt.log").read_text()
    assert "user(s) loaded" in log and "Connection from 127.0.0.1" in log  # the session used it


def test_smoke_with_broker_amqtt(tmp_path: Path) -> None:
    assert_ran_on_amqtt(tmp_path, run_smoke(tmp_path, "amqtt"))


def test_embedded_falls_back_to_amqtt_when_mosquitto_is_not_on_path(tmp_path: Path) -> None:
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "mosquitto").exists()
    )
    assert subprocess.run(["which", "mosquitto"], env={"PATH": path}, capture_output=True).returncode != 0
    assert_ran_on_amqtt(tmp_path, run_smoke(tmp_path, "embedded", path))
