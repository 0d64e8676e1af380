"""amqtt, the embedded fallback broker: its generated config, the choice of broker, and
what it says it cannot do. Nothing here starts a broker (tests/integration does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pwdlib.hashers.argon2 import Argon2Hasher

from hil.services import broker as broker_module
from hil.services.broker import (
    OBSERVER_USER,
    AmqttBroker,
    BrokerError,
    BrokerUnsupported,
    MosquittoBroker,
    broker_class,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def amqtt(tmp_path: Path) -> AmqttBroker:
    broker = AmqttBroker(tmp_path / "broker")
    broker.add_device("hil-dev-1")
    broker.add_device("hil-dev-2")
    return broker


def written(broker: AmqttBroker) -> dict:
    return json.loads(broker._write_config().read_text())


def test_the_config_has_a_plain_and_a_tls_listener_on_loopback(amqtt: AmqttBroker) -> None:
    config = written(amqtt)
    listeners = config["listeners"]
    assert listeners["default"] == {"type": "tcp", "bind": f"127.0.0.1:{amqtt.plain_port}"}
    tls = listeners["tls"]
    assert tls["bind"] == f"127.0.0.1:{amqtt.tls_port}" and tls["ssl"] is True
    for key in ("cafile", "certfile", "keyfile"):
        assert Path(tls[key]).is_file()
    assert Path(tls["cafile"]).read_text() == amqtt.ca_pem
    assert set(listeners) == {"default", "tls"}
    assert amqtt.listeners == {"plain": amqtt.plain_port, "tls": amqtt.tls_port}


def test_the_password_file_holds_argon2_hashes_of_every_account(amqtt: AmqttBroker) -> None:
    config = written(amqtt)
    path = Path(config["plugins"]["amqtt.plugins.authentication.FileAuthPlugin"]["password_file"])
    entries = dict(line.split(":", 1) for line in path.read_text().splitlines())
    expected = {OBSERVER_USER: amqtt.observer_password.reveal()}
    expected |= {d: amqtt.credentials(d).password.reveal() for d in ("hil-dev-1", "hil-dev-2")}
    assert set(entries) == set(expected)
    for user, password in expected.items():
        assert password not in entries[user]
        assert entries[user].startswith("$argon2id$")
        assert Argon2Hasher().verify(password, entries[user])
    assert not Argon2Hasher().verify("not-the-password", entries[OBSERVER_USER])


def test_the_acl_is_mosquittos_pattern_written_out_per_account(amqtt: AmqttBroker) -> None:
    acl = written(amqtt)["plugins"]["amqtt.plugins.topic_checking.TopicAccessControlListPlugin"]
    assert acl["publish_acl"] == {
        OBSERVER_USER: ["#"],
        "hil-dev-1": ["esp32/hil-dev-1/#"],
        "hil-dev-2": ["esp32/hil-dev-2/#"],
    }
    assert acl["acl"][OBSERVER_USER] == ["#"]
    assert acl["acl"]["hil-dev-1"] == [
        "esp32/hil-dev-1/#",
        "config/update/hil-dev-1",
        "ota/update/hil-dev-1",
        "programs/hil-dev-1/deploy",
    ]


def test_the_config_is_what_amqtt_itself_accepts(amqtt: AmqttBroker) -> None:
    from amqtt.contexts import BrokerConfig

    config = BrokerConfig.from_dict(written(amqtt))
    assert set(config.listeners) == {"default", "tls"}


def test_amqtt_says_it_has_no_mutual_tls(amqtt: AmqttBroker) -> None:
    assert "mtls" not in amqtt.features and "persistence" not in amqtt.features
    assert {"tls", "password_file", "acl"} <= amqtt.features
    assert amqtt.mtls_port is None
    assert amqtt.uri("tls") == f"mqtts://127.0.0.1:{amqtt.tls_port}"
    with pytest.raises(BrokerUnsupported, match=r"amqtt has no 'mtls' listener"):
        amqtt.uri("mtls")


def test_the_runner_is_a_python_module_given_the_config(amqtt: AmqttBroker) -> None:
    config = amqtt._write_config()
    command = amqtt._command(config)
    assert command[1:] == ["-m", "hil.services.amqtt_broker", str(config)]
    assert (ROOT / "hil" / "services" / "amqtt_broker.py").is_file()


@pytest.mark.parametrize(
    ("choice", "mosquitto_on_path", "expected"),
    [
        ("embedded", True, MosquittoBroker),
        ("embedded", False, AmqttBroker),
        ("mosquitto", True, MosquittoBroker),
        ("amqtt", True, AmqttBroker),
        ("amqtt", False, AmqttBroker),
    ],
)
def test_embedded_means_mosquitto_when_it_is_on_path_else_amqtt(
    choice: str, mosquitto_on_path: bool, expected: type
) -> None:
    def which(name: str) -> str | None:
        return f"/usr/sbin/{name}" if mosquitto_on_path else None

    assert broker_class(choice, which=which) is expected


def test_an_unknown_broker_choice_is_an_error() -> None:
    with pytest.raises(BrokerError, match="'embedded', 'mosquitto' or 'amqtt'"):
        broker_class("rabbit")


def test_without_amqtt_installed_the_error_says_how_to_get_a_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BrokerError, match=r"apt-get install mosquitto.*amqtt"):
        AmqttBroker(tmp_path)


def test_a_broker_feature_the_broker_lacks_skips_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.requires("broker_mtls")
        def test_needs_mtls(): pass
        @pytest.mark.requires("broker_acl")
        def test_needs_acl(): pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rs", "--broker", "amqtt",
        f"--rigs-dir={ROOT / 'rigs'}", f"--hil-log-dir={tmp_path / 'logs'}",
    )  # fmt: skip
    result.assert_outcomes(passed=1, skipped=1)
    assert "the session's broker (amqtt) cannot honour ['broker_mtls']" in result.stdout.str()
