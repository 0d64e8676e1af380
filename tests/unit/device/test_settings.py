"""The firmware model's provisioning and configuration (hil.device.settings).

NVS images are real ones (esp-idf-nvs-partition-gen writes, hil.images reads), so the round
trips here are the ones the virtual rig makes across reboots.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.device.contract import CONFIG_INT_SETTINGS, CONFIG_KEYS, CONFIG_NVS_KEYS, PROVISIONING_KEYS
from hil.device.settings import (
    ConfigRejected,
    ConfigUpdate,
    DeviceConfig,
    Provisioning,
    factory_reset,
    parse_config_update,
    provisioning_image,
    store_config,
)
from hil.images.nvs import MAX_STR_BYTES, NvsError, NvsInt, build_nvs_image, read_nvs

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PROV = Provisioning(
    device_id="c3-0001",
    wifi_ssid="lab-ap",
    wifi_pass="wifi-secret",
    mqtt_uri="mqtts://broker.lab:8883",
    mqtt_user="c3-0001",
    mqtt_pass="mqtt-secret",
    ca_cert=PEM,
    client_cert=PEM,
    client_key="-----BEGIN EC PRIVATE KEY-----\nkey\n-----END EC PRIVATE KEY-----\n",
    ota_pubkey="-----BEGIN PUBLIC KEY-----\npub\n-----END PUBLIC KEY-----\n",
)
IMAGE = provisioning_image(PROV)


def config_of(image: bytes) -> DeviceConfig:
    return DeviceConfig.from_nvs(read_nvs(image))


# ---------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------


def test_provisioning_round_trip() -> None:
    assert len(IMAGE) == 0x4000
    stored = read_nvs(IMAGE)
    assert set(stored) == {"device"}
    assert stored["device"]["wifi_pass"] == "wifi-secret"
    assert stored["device"]["ca_cert"] == PEM.encode()  # PEM values are blobs
    assert Provisioning.from_nvs(stored) == PROV


@settings(max_examples=40, deadline=None)
@given(
    st.fixed_dictionaries(
        {"device_id": st.text(min_size=1, max_size=32).filter(lambda s: "\0" not in s)},
        optional={
            key: st.text(max_size=200).filter(lambda s: "\0" not in s)
            for key in PROVISIONING_KEYS
            if key != "device_id"
        },
    )
)
def test_any_provisioning_round_trips(values: dict[str, str]) -> None:
    p = Provisioning(**values)
    assert Provisioning.from_nvs(read_nvs(provisioning_image(p))) == p


def test_not_provisioned_without_device_id() -> None:
    assert Provisioning.from_nvs({}) is None
    assert Provisioning.from_nvs(read_nvs(b"\xff" * 0x4000)) is None
    assert Provisioning.from_nvs({"device": {"wifi_ssid": "x"}}) is None
    assert Provisioning.from_nvs({"device": {"device_id": ""}}) is None
    assert Provisioning.from_nvs({"device": {"device_id": 7}}) is None
    assert Provisioning.from_nvs({"config": {"device_id": "x"}}) is None
    with pytest.raises(ValueError):
        Provisioning(device_id="")


def test_provisioning_reading_is_tolerant() -> None:
    # Strings or blobs for any key, a blob's NUL terminator dropped, unusable values as unset.
    p = Provisioning.from_nvs(
        {"device": {"device_id": b"c3-9\0", "ca_cert": PEM, "wifi_ssid": 5, "mqtt_user": b"\xff"}}
    )
    assert p == Provisioning(device_id="c3-9", ca_cert=PEM)


def test_secrets_stay_out_of_repr() -> None:
    text = repr(PROV)
    assert "c3-0001" in text
    for secret in ("wifi-secret", "mqtt-secret", "PRIVATE KEY"):
        assert secret not in text
    assert PROV.secrets() == ("wifi-secret", "mqtt-secret", PROV.client_key)
    assert Provisioning(device_id="x").secrets() == ()


def test_provisioned_settings_and_factory_reset() -> None:
    image = provisioning_image(
        PROV, {"measurement_interval_s": 2, "brokers": ["mqtt://a:1883", "mqtt://b:1883"]}
    )
    assert read_nvs(image)["device"][CONFIG_NVS_KEYS["measurement_interval_s"]] == 2
    provisioned = config_of(image)
    assert provisioned == DeviceConfig(
        measurement_interval_s=2, brokers=("mqtt://a:1883", "mqtt://b:1883")
    )
    updated = store_config(image, provisioned, ConfigUpdate(measurement_interval_s=30))
    assert config_of(updated).measurement_interval_s == 30
    assert config_of(updated).brokers == provisioned.brokers
    reset = factory_reset(updated)
    assert len(reset) == len(image)
    assert "config" not in read_nvs(reset)
    assert Provisioning.from_nvs(read_nvs(reset)) == PROV
    assert config_of(reset) == provisioned  # back to the provisioned settings


def test_provisioning_config_is_validated() -> None:
    with pytest.raises(ValueError, match="watchdog_timeout_s"):
        provisioning_image(PROV, {"watchdog_timeout_s": 1})
    with pytest.raises(ValueError, match="unknown key"):
        provisioning_image(PROV, {"colour": "red"})
    assert provisioning_image(PROV, {}) == IMAGE


def test_provisioning_that_does_not_fit() -> None:
    with pytest.raises(NvsError):
        provisioning_image(Provisioning(device_id="x", ca_cert="A" * 20_000))


# ---------------------------------------------------------------------------------------
# DeviceConfig in NVS
# ---------------------------------------------------------------------------------------


def test_defaults_are_the_contracts() -> None:
    config = DeviceConfig()
    for key, setting in CONFIG_INT_SETTINGS.items():
        assert getattr(config, key) == setting.default
    assert (config.calibration_offset_temp, config.log_level, config.brokers) == (0.0, "info", ())
    assert (config.measurement_interval_s, config.heartbeat_interval_s) == (10, 60)
    assert (config.status_report_interval_s, config.watchdog_timeout_s) == (120, 600)
    assert (config.sensor_timeout_s, config.ota_selftest_timeout_s) == (600, 60)
    assert config_of(IMAGE) == config
    assert DeviceConfig.from_nvs({}) == config


_host = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True)
_broker = st.builds(
    "{}://{}:{}".format, st.sampled_from(["mqtt", "mqtts"]), _host, st.integers(1, 65535)
)
valid_configs = st.builds(
    DeviceConfig,
    **{key: st.integers(s.minimum, s.maximum) for key, s in CONFIG_INT_SETTINGS.items()},
    calibration_offset_temp=st.floats(-10, 10),
    log_level=st.sampled_from(["error", "warn", "info", "debug"]),
    brokers=st.lists(_broker, min_size=1, max_size=4).map(tuple) | st.just(()),
)


@settings(max_examples=60, deadline=None)
@given(valid_configs)
def test_valid_configs_round_trip_through_nvs(config: DeviceConfig) -> None:
    image = store_config(IMAGE, config, ConfigUpdate())
    assert config_of(image) == config
    assert config.clamped() == config
    assert Provisioning.from_nvs(read_nvs(image)) == PROV
    # The same config sent as an update is accepted and lands the same way.
    payload = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if v != ()})
    update = parse_config_update(payload.encode())
    assert isinstance(update, ConfigUpdate)
    assert config_of(store_config(IMAGE, DeviceConfig(), update)) == config


def test_nvs_encoding() -> None:
    config = DeviceConfig(calibration_offset_temp=-1.25, brokers=("mqtt://a:1", "mqtts://b:2"))
    stored = read_nvs(store_config(IMAGE, config, ConfigUpdate()))["config"]
    assert stored == {
        "meas_int_s": 10,
        "hb_int_s": 60,
        "status_int_s": 120,
        "wdt_timeout_s": 600,
        "sensor_tmo_s": 600,
        "ota_test_tmo_s": 60,
        "cal_off_temp": "-1.25",
        "log_level": "info",
        "brokers": "mqtt://a:1\nmqtts://b:2",
    }
    assert config.nvs_values()["meas_int_s"] == NvsInt(10, "i32")


def test_unusable_stored_values_fall_back() -> None:
    nvs = {
        "config": {
            "meas_int_s": "ten",
            "hb_int_s": 5,
            "cal_off_temp": "warm",
            "log_level": b"debug",
            "brokers": "mqtt://a:1\n\nmqtt://b:2",
        },
        "device": {"meas_int_s": 3, "cal_off_temp": "nan"},
    }
    assert DeviceConfig.from_nvs(nvs) == DeviceConfig(
        measurement_interval_s=3, heartbeat_interval_s=5, brokers=("mqtt://a:1", "mqtt://b:2")
    )


def test_clamped() -> None:
    wild = DeviceConfig(
        measurement_interval_s=0,
        heartbeat_interval_s=-5,
        watchdog_timeout_s=10**6,
        calibration_offset_temp=-99.0,
        log_level="verbose",
        brokers=("mqtt://a:1", "junk", "mqtt://b:1", "mqtt://c:1", "mqtt://d:1", "mqtt://e:1"),
    )
    assert wild.clamped() == DeviceConfig(
        measurement_interval_s=1,
        heartbeat_interval_s=1,
        watchdog_timeout_s=3600,
        calibration_offset_temp=-10.0,
        brokers=("mqtt://a:1", "mqtt://b:1", "mqtt://c:1", "mqtt://d:1"),
    )


# ---------------------------------------------------------------------------------------
# Config updates
# ---------------------------------------------------------------------------------------


def test_partial_update() -> None:
    update = parse_config_update(b'{"heartbeat_interval_s": 5, "calibration_offset_temp": 1}')
    assert update == ConfigUpdate(heartbeat_interval_s=5, calibration_offset_temp=1.0)
    assert isinstance(update, ConfigUpdate)
    assert isinstance(update.calibration_offset_temp, float)
    assert update.as_json() == {"heartbeat_interval_s": 5, "calibration_offset_temp": 1.0}
    assert update.values == update.changes() == update.as_json()
    current = DeviceConfig(measurement_interval_s=3)
    assert update.apply(current) == DeviceConfig(
        measurement_interval_s=3, heartbeat_interval_s=5, calibration_offset_temp=1.0
    )
    brokers = parse_config_update('{"brokers": ["mqtt://a:1883"]}')
    assert isinstance(brokers, ConfigUpdate)
    assert brokers.as_json() == {"brokers": ["mqtt://a:1883"]}


@pytest.mark.parametrize(
    ("payload", "reason", "keys"),
    [
        (b"\xff\xfe", "payload is not UTF-8 text", ()),
        (b"{", "malformed JSON", ()),
        (b'{"log_level": "info"', "malformed JSON", ()),
        (b'{"calibration_offset_temp": NaN}', "malformed JSON", ()),
        (b"", "malformed JSON", ()),
        (b"[]", "config update must be a JSON object, got array", ()),
        (b'"info"', "config update must be a JSON object, got string", ()),
        (b"null", "config update must be a JSON object, got null", ()),
        (b"{}", "config update is empty", ()),
        (b'{"colour": "red"}', 'unknown key "colour"', ("colour",)),
        (
            b'{"log_level": "info", "log_level": "debug"}',
            'duplicate key "log_level"',
            ("log_level",),
        ),
        (
            b'{"measurement_interval_s": true}',
            '"measurement_interval_s" must be an integer, got boolean',
            ("measurement_interval_s",),
        ),
        (
            b'{"measurement_interval_s": 10.0}',
            '"measurement_interval_s" must be an integer, got number',
            ("measurement_interval_s",),
        ),
        (
            b'{"heartbeat_interval_s": "60"}',
            '"heartbeat_interval_s" must be an integer, got string',
            ("heartbeat_interval_s",),
        ),
        (
            b'{"measurement_interval_s": 0}',
            '"measurement_interval_s" = 0 is out of range 1..86400',
            ("measurement_interval_s",),
        ),
        (
            b'{"status_report_interval_s": 86401}',
            '"status_report_interval_s" = 86401 is out of range 1..86400',
            ("status_report_interval_s",),
        ),
        (
            b'{"watchdog_timeout_s": 1}',
            '"watchdog_timeout_s" = 1 is out of range 2..3600',
            ("watchdog_timeout_s",),
        ),
        (
            b'{"sensor_timeout_s": 4}',
            '"sensor_timeout_s" = 4 is out of range 5..86400',
            ("sensor_timeout_s",),
        ),
        (
            b'{"ota_selftest_timeout_s": 601}',
            '"ota_selftest_timeout_s" = 601 is out of range 5..600',
            ("ota_selftest_timeout_s",),
        ),
        (
            b'{"calibration_offset_temp": 10.5}',
            '"calibration_offset_temp" = 10.5 is out of range -10..10',
            ("calibration_offset_temp",),
        ),
        (
            b'{"calibration_offset_temp": 1e999}',
            '"calibration_offset_temp" = Infinity is out of range',
            ("calibration_offset_temp",),
        ),
        (
            b'{"calibration_offset_temp": false}',
            '"calibration_offset_temp" must be a number, got boolean',
            ("calibration_offset_temp",),
        ),
        (
            b'{"log_level": "verbose"}',
            '"log_level" = "verbose" is not one of error, warn, info, debug',
            ("log_level",),
        ),
        (b'{"log_level": 3}', '"log_level" must be a string, got integer', ("log_level",)),
        (
            b'{"brokers": "mqtt://a:1"}',
            '"brokers" must be an array of URIs, got string',
            ("brokers",),
        ),
        (b'{"brokers": []}', '"brokers" must hold 1..4 URIs, got 0', ("brokers",)),
        (
            b'{"brokers": ["mqtt://a:1", "mqtt://b:1", "mqtt://c:1", "mqtt://d:1", "mqtt://e:1"]}',
            '"brokers" must hold 1..4 URIs, got 5',
            ("brokers",),
        ),
        (
            b'{"brokers": ["mqtt://a:1", "http://b:80"]}',
            '"brokers"[1] = "http://b:80" is not mqtt://host:port or mqtts://host:port',
            ("brokers",),
        ),
        (
            b'{"brokers": ["mqtt://a"]}',
            '"brokers"[0] = "mqtt://a" is not mqtt://host:port',
            ("brokers",),
        ),
        (b'{"brokers": [1883]}', '"brokers"[0] = 1883 is not', ("brokers",)),
    ],
)
def test_rejections(payload: bytes, reason: str, keys: tuple[str, ...]) -> None:
    result = parse_config_update(payload)
    assert isinstance(result, ConfigRejected)
    assert reason in result.reason
    assert result.keys == keys


def test_a_bad_key_rejects_the_whole_update() -> None:
    result = parse_config_update(
        b'{"measurement_interval_s": 5, "watchdog_timeout_s": 0, "x": 1, "log_level": "loud"}'
    )
    assert isinstance(result, ConfigRejected)
    assert result.keys == ("watchdog_timeout_s", "x", "log_level")
    assert result.reason.count(";") == 2


def test_long_rejections_stay_short() -> None:
    payload = json.dumps({f"key{i}" * 20: i for i in range(50)})
    result = parse_config_update(payload)
    assert isinstance(result, ConfigRejected)
    assert len(result.keys) == 50
    assert result.reason.endswith("and 42 more")
    assert len(result.reason) < 500


@pytest.mark.parametrize("validate", [True, False])
def test_deep_nesting_is_rejected_not_raised(validate: bool) -> None:
    result = parse_config_update(b"[" * 100_000 + b"]" * 100_000, validate=validate)
    assert isinstance(result, ConfigRejected)


# ---------------------------------------------------------------------------------------
# validate=False: the "config accepted without validation" defect
# ---------------------------------------------------------------------------------------


def test_unvalidated_update_keeps_what_it_can_store() -> None:
    payload = {
        "measurement_interval_s": 0,
        "heartbeat_interval_s": True,
        "status_report_interval_s": 2.9,
        "watchdog_timeout_s": 10**20,
        "sensor_timeout_s": "600",
        "ota_selftest_timeout_s": None,
        "calibration_offset_temp": 50,
        "log_level": "verbose",
        "brokers": ["junk", 7, "", "line\nbreak", "mqtt://a:1"],
        "colour": "red",
    }
    update = parse_config_update(json.dumps(payload), validate=False)
    assert update == ConfigUpdate(
        measurement_interval_s=0,
        heartbeat_interval_s=1,
        status_report_interval_s=2,
        watchdog_timeout_s=2**31 - 1,
        calibration_offset_temp=50.0,
        log_level="verbose",
        brokers=("junk", "mqtt://a:1"),
    )
    assert isinstance(update, ConfigUpdate)
    stored = config_of(store_config(IMAGE, DeviceConfig(), update))
    assert stored == update.apply(DeviceConfig())
    assert stored.clamped().measurement_interval_s == 1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{}", ConfigUpdate()),
        (b'{"brokers": "mqtt://a:1"}', ConfigUpdate(brokers=("mqtt://a:1",))),
        (b'{"brokers": {"a": 1}}', ConfigUpdate()),
        (b'{"log_level": "\\ud800"}', ConfigUpdate()),  # a lone surrogate cannot be stored
        (b'{"log_level": "a\\u0000b"}', ConfigUpdate()),
        (b'{"calibration_offset_temp": 1e999}', ConfigUpdate()),
        (b'{"measurement_interval_s": -1e999}', ConfigUpdate()),
        (b'{"measurement_interval_s": -3.7}', ConfigUpdate(measurement_interval_s=-3)),
        (b'{"calibration_offset_temp": 1' + b"0" * 400 + b"}", ConfigUpdate()),
        (b'{"log_level": "x", "log_level": "y"}', ConfigUpdate(log_level="y")),
    ],
)
def test_unvalidated_coercions(payload: bytes, expected: ConfigUpdate) -> None:
    assert parse_config_update(payload, validate=False) == expected


@pytest.mark.parametrize("payload", [b"{", b"[1, 2]", b"3", b"\xff"])
def test_unvalidated_still_needs_a_json_object(payload: bytes) -> None:
    assert isinstance(parse_config_update(payload, validate=False), ConfigRejected)


_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
_objects = st.dictionaries(st.sampled_from([*CONFIG_KEYS, "colour", ""]), _json, max_size=10)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_objects, _json))
def test_unvalidated_never_raises_and_stores_what_it_accepts(value: Any) -> None:
    result = parse_config_update(json.dumps(value).encode(), validate=False)
    assert isinstance(result, ConfigUpdate | ConfigRejected)
    assert isinstance(result, ConfigUpdate) == isinstance(value, dict)
    if isinstance(result, ConfigUpdate):
        stored = config_of(store_config(IMAGE, DeviceConfig(), result))
        assert stored == result.apply(DeviceConfig())
    # And validation itself never raises on the same input.
    checked = parse_config_update(json.dumps(value).encode())
    assert isinstance(checked, ConfigUpdate | ConfigRejected)


def test_an_update_that_does_not_fit_raises_nvs_error() -> None:
    big = "x" * MAX_STR_BYTES
    image = build_nvs_image({"device": {"device_id": "x", "a": "a" * MAX_STR_BYTES}})
    update = parse_config_update(json.dumps({"log_level": big, "brokers": big}), validate=False)
    assert isinstance(update, ConfigUpdate)
    with pytest.raises(NvsError):
        store_config(image, DeviceConfig(), update)
