"""``hil mqtt watch`` and the observer's login file: the lines it prints, where its login
comes from, and that no password is ever shown; end to end against a real mosquitto."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from hil.bench import mqtt_watch
from hil.bench.state import BenchError, BenchInputError
from hil.secret import Secret
from hil.services.broker import OBSERVER_USER, MosquittoBroker
from hil.services.mqtt import MqttObserver, ObserverConnectError, Received
from hil.services.mqtt_login import LOGIN_FILE, BrokerLogin, LoginError, read_login, write_login

AT = datetime(2025, 1, 2, 3, 4, 5, 678_000).timestamp()


def message(topic: str, payload: bytes | dict[str, object], *, retain: bool = False) -> Received:
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return Received(topic, data, retain, 0.0)


# -- the lines -------------------------------------------------------------------------------------
def test_a_reading_is_one_readable_line() -> None:
    body = {"device_id": "bench-1", "boot_count": 1, "seq": 12, "temperature_c": 31.499999, "humidity_pct": 55.0}
    line = mqtt_watch.format_line(message("esp32/bench-1/sensors", body), AT)
    assert line == "03:04:05.678  bench-1   sensors   boot_count=1 seq=12 temperature_c=31.5 humidity_pct=55"


def test_retained_is_marked_and_columns_grow_to_align() -> None:
    widths: dict[str, int] = {}
    first = mqtt_watch.format_line(message("esp32/hil-virtual-0/status", {"state": "online"}, retain=True), AT, widths)
    second = mqtt_watch.format_line(message("esp32/b/sensors", {"seq": 1}), AT, widths)
    assert "hil-virtual-0  status    [retained] state=online" in first
    assert first.index("status") == second.index("sensors")


def test_payloads_are_compacted_and_secrets_masked() -> None:
    compact = mqtt_watch.compact
    nested = {"metrics": {"cpu_usage_percent": 1.234, "ok": True}, "note": "two words", "list": [1, 2.5]}
    assert compact(json.dumps(nested).encode()) == 'metrics={cpu_usage_percent=1.23 ok=true} note="two words" list=[1,2.5]'
    masked = compact(json.dumps({"wifi_pass": "hunter2", "token": "t0k", "client_key": "k", "ssid": "lab"}).encode())
    assert masked == "wifi_pass=*** token=*** client_key=*** ssid=lab"
    assert compact(b"plain text") == "plain text" and compact(b"") == "(empty)"
    assert compact(b"a\x1bb") == "a\\x1bb"  # no terminal escapes from a payload
    assert compact(b"\xff\xfe\x00") == "<3 bytes: fffe00>"
    assert compact(b"[1, 2]") == "[1,2]" and len(compact(b"x" * 1000)) == mqtt_watch.LINE_MAX
    assert mqtt_watch.split_topic("hil/fence/x") == ("-", "hil/fence/x")


def test_json_lines_mask_secrets_too() -> None:
    record = json.loads(mqtt_watch.as_json(message("esp32/d/config", {"mqtt_pass": "s3cret", "n": 1}), AT))
    assert record["device"] == "d" and record["suffix"] == "config" and record["payload"] == {"mqtt_pass": "***", "n": 1}


def test_topic_filters() -> None:
    request = mqtt_watch.WatchRequest(state_dir=Path("/nonexistent"))
    assert mqtt_watch.topic_filters(request) == ["esp32/#"]
    assert mqtt_watch.topic_filters(mqtt_watch.WatchRequest(Path("x"), device="bench-1")) == ["esp32/bench-1/#"]
    assert mqtt_watch.topic_filters(mqtt_watch.WatchRequest(Path("x"), device="d", topics=["a/#"])) == ["a/#"]
    with pytest.raises(BenchInputError, match="one topic level"):
        mqtt_watch.topic_filters(mqtt_watch.WatchRequest(Path("x"), device="a/#"))


# -- the login ---------------------------------------------------------------------------------------
def test_the_login_file_is_private_and_mosquitto_subs_options(tmp_path: Path) -> None:
    path = write_login(tmp_path / "login", host="127.0.0.1", port=1884, username=OBSERVER_USER, password=Secret("pw-1"))
    assert path.name == LOGIN_FILE == "mosquitto_sub"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    options = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert options == ["-h 127.0.0.1", "-p 1884", f"-u {OBSERVER_USER}", "-P pw-1"]  # one option a line, no blank
    login = read_login(path)
    assert (login.host, login.port, login.username, login.tls, login.url) == (
        "127.0.0.1", 1884, OBSERVER_USER, False, "mqtt://127.0.0.1:1884",
    )  # fmt: skip
    assert login.password == "pw-1" and "pw-1" not in repr(login)
    moved = read_login(path, broker="mqtt://10.0.0.2:1999")
    assert (moved.host, moved.port) == ("10.0.0.2", 1999)


def test_a_tls_login_names_its_ca_and_identity(tmp_path: Path) -> None:
    path = write_login(tmp_path / "login", host="broker.lab", port=8883, username="u", password=Secret("p"),
                       ca_pem="CA", client_cert_pem="CERT", client_key_pem=Secret("KEY"))  # fmt: skip
    login = read_login(path)
    assert login.tls and login.url == "mqtts://broker.lab:8883"
    assert login.ca_file is not None and login.ca_file.read_text() == "CA"
    assert login.key_file is not None and stat.S_IMODE(login.key_file.stat().st_mode) == 0o600
    assert not read_login(path, broker="mqtt://broker.lab:1883").tls  # the URL's scheme decides


def test_bench_credentials_json_is_read_too(tmp_path: Path) -> None:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({OBSERVER_USER: {"username": OBSERVER_USER, "password": "pw-2"}, "bench": {}}))
    with pytest.raises(LoginError, match="no broker address"):
        read_login(creds)
    login = read_login(creds, broker="mqtt://127.0.0.1:1883")
    assert login.username == OBSERVER_USER and login.password == "pw-2"
    with pytest.raises(LoginError, match="TLS needs the broker's CA"):
        read_login(creds, broker="mqtts://127.0.0.1:8883")
    assert read_login(creds, broker="mqtts://127.0.0.1:8883", ca_file=tmp_path / "ca.pem").tls


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("-h x\n-p notaport\n-P s3cret\n", "not a number"),
        ("-h x\n--password s3cret\n", "'--password' is not an option"),
        ("-h x\n-P\n", "-P without a value"),
        ("-h x\n-P pw\ns3cret\n", "line 3: its first word is not an option"),
        ("-P s3cret\n", "no broker address"),
        ("{not json s3cret", "JSON without"),
        ("-h x\n--cert c.pem\n-P s3cret\n", "go together"),
    ],
)
def test_a_bad_login_file_says_what_never_the_secret(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "login"
    path.write_text(text)
    with pytest.raises(LoginError, match=needle) as caught:
        read_login(path)
    assert "s3cret" not in str(caught.value)


def test_without_a_bench_broker_the_login_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(BenchInputError, match=r"no login.*hil broker up"):
        mqtt_watch.find_login(mqtt_watch.WatchRequest(tmp_path))
    open_broker, source = mqtt_watch.find_login(mqtt_watch.WatchRequest(tmp_path, broker="mqtt://127.0.0.1:1883"))
    assert open_broker.username is None and "open broker" in source
    with pytest.raises(BenchInputError, match="--count 0"):
        mqtt_watch.find_login(mqtt_watch.WatchRequest(tmp_path, count=0))
    with pytest.raises(BenchInputError, match="nope"):
        mqtt_watch.find_login(mqtt_watch.WatchRequest(tmp_path, credentials=tmp_path / "nope"))


# -- end to end --------------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    running = MosquittoBroker(tmp_path / "broker")
    running.start()
    try:
        yield running
    finally:
        running.kill()


def test_watch_prints_what_arrives_until_stopped(broker: MosquittoBroker, tmp_path: Path) -> None:
    path = write_login(tmp_path / "login", host="127.0.0.1", port=broker.plain_port, username=OBSERVER_USER,
                       password=broker.observer_password)  # fmt: skip
    login = read_login(path)
    with MqttObserver("127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password) as pub:
        pub.publish("esp32/d1/status", {"state": "online"}, retain=True)
        shown: list[str] = []
        stop = threading.Event()
        worker = threading.Thread(
            target=lambda: mqtt_watch.watch(login, ["esp32/d1/#"], shown.append, stop), daemon=True
        )
        worker.start()
        deadline = time.monotonic() + 10
        while not shown and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.publish("esp32/d1/sensors", {"seq": 0, "temperature_c": 21.0})
        pub.publish("esp32/other/sensors", {"seq": 0})  # not this device
        while len(shown) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        worker.join(5)
    assert not worker.is_alive()
    assert "[retained] state=online" in shown[0] and "d1" in shown[0], shown
    assert shown[1].endswith("sensors   seq=0 temperature_c=21"), shown
    assert len(shown) == 2 and broker.observer_password.reveal() not in "".join(shown)


def test_a_wrong_password_is_refused_at_once_and_not_shown(broker: MosquittoBroker) -> None:
    login = BrokerLogin("127.0.0.1", broker.plain_port, OBSERVER_USER, Secret("wrong-password"))
    started = time.monotonic()
    with pytest.raises(BenchError, match="refused the observer as hil-observer") as caught:
        mqtt_watch.watch(login, ["#"], print, threading.Event(), timeout=1)
    assert time.monotonic() - started < 5 and "wrong-password" not in str(caught.value)
    with pytest.raises(ObserverConnectError, match="refused"):
        MqttObserver("127.0.0.1", broker.plain_port, username=OBSERVER_USER, password="nope")
