"""The firmware's provisioning and configuration: what it reads from NVS, and what it saves there.

Provisioning (§1 of DEVICE_CONTRACT.md) is namespace ``device``. Text values (id, Wi-Fi,
broker URI and credentials) are NVS strings; the PEM values (``ca_cert``, ``client_cert``,
``client_key``, ``ota_pubkey``) are blobs holding the PEM text, so a CA bundle longer than
an NVS string still fits. Reading accepts either form for any key (a blob's trailing NUL,
which mbedTLS-minded provisioning tools add, is dropped), because a real provisioning CSV
may choose differently.

Configuration (§5) is layered: contract defaults, then the config keys provisioning may have
put in ``device``, then namespace ``config``, where accepted updates are saved. The NVS key
names and encodings are `hil.device.contract.CONFIG_NVS_KEYS`'s: integers i32, the calibration
offset as the float's decimal text (exact round trip), log_level a string, brokers one string
joined by "\\n". A stored value of the wrong type or an unparsable one is skipped, so the
layer below shows through; a broken NVS entry never stops the device from booting.

Config updates are validated as a whole (`parse_config_update`). ``validate=False`` models
the defect "config accepted without validation": any JSON object is accepted, unknown keys
are dropped, and each known key keeps what its storage can hold. Integers: ``true``/``false``
become 1/0, floats are truncated toward zero, and anything beyond i32 saturates (as cJSON's
``valueint`` does). The offset: any finite number. log_level: any string NVS can store.
brokers: a string becomes one entry; from a list, the strings that can be stored and joined
(non-empty, no newline or NUL). Everything else (null, objects, NaN, the wrong kind of
value) is ignored for that key. The values stored this way may be far outside the contract
(an interval of 0 or -5); `DeviceConfig.clamped` is what the firmware's timers run on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from hil.device.contract import (
    CALIBRATION_OFFSET_RANGE,
    CONFIG_INT_SETTINGS,
    CONFIG_KEYS,
    CONFIG_NAMESPACE,
    CONFIG_NVS_KEYS,
    DEFAULT_CALIBRATION_OFFSET,
    DEFAULT_LOG_LEVEL,
    DEVICE_NAMESPACE,
    LOG_LEVELS,
    MAX_BROKERS,
    NVS_SIZE,
    PEM_KEYS,
    PROVISIONING_KEYS,
    SECRET_KEYS,
    parse_broker_uri,
)
from hil.images.nvs import (
    MAX_STR_BYTES,
    NvsInt,
    NvsValue,
    build_nvs_image,
    erase_namespace,
    update_nvs,
)
from hil.secret import Secret, optional_secret

__all__ = [
    "ConfigRejected",
    "ConfigUpdate",
    "DeviceConfig",
    "Provisioning",
    "factory_reset",
    "parse_config_update",
    "provisioning_image",
    "store_config",
]

_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _storable(text: str) -> bool:
    """Whether an NVS string can hold `text` (UTF-8, no NUL, within the generator's limit)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON's \\ud800 escapes can produce
        return False
    return b"\0" not in raw and len(raw) <= MAX_STR_BYTES


def _text(value: object) -> str | None:
    """A stored provisioning value as text: a string, or a blob of UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


# ---------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provisioning:
    """Identity, network and keys of a provisioned device (namespace ``device``).

    The secrets (`SECRET_KEYS`) are `Secret`s, shown as ``***``; a plain str given for one
    is wrapped. Who needs a value (the NVS image, the firmware model) calls ``reveal()``.
    """

    device_id: str
    wifi_ssid: str | None = None
    wifi_pass: Secret | None = None
    mqtt_uri: str | None = None
    mqtt_user: str | None = None
    mqtt_pass: Secret | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: Secret | None = None
    ota_pubkey: str | None = None

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must be non-empty")
        for key in SECRET_KEYS:  # a str from a caller (or NVS) becomes a Secret
            object.__setattr__(self, key, optional_secret(getattr(self, key)))

    @classmethod
    def from_nvs(cls, namespaces: Mapping[str, Mapping[str, object]]) -> Provisioning | None:
        """The provisioning read from NVS contents (`read_nvs`), or None when the device is
        not provisioned (no usable ``device_id``)."""
        stored = namespaces.get(DEVICE_NAMESPACE, {})
        values: dict[str, Any] = {key: _text(stored[key]) if key in stored else None for key in PROVISIONING_KEYS}
        device_id = values.pop("device_id")
        if not device_id:
            return None
        return cls(device_id=device_id, **values)  # secrets wrapped by __post_init__

    def secrets(self) -> tuple[str, ...]:
        """The secret values that are set, revealed for a `Redactor`: none of them may
        appear on any output."""
        found: list[Secret | None] = [getattr(self, key) for key in SECRET_KEYS]
        return tuple(value.reveal() for value in found if value)

    def nvs_values(self) -> dict[str, NvsValue]:
        """The ``device`` namespace entries: strings, PEM values as blobs, unset keys left out."""
        out: dict[str, NvsValue] = {}
        for key in PROVISIONING_KEYS:
            held: str | Secret | None = getattr(self, key)
            value = held.reveal() if isinstance(held, Secret) else held  # the image holds the value
            if value is not None:
                out[key] = value.encode("utf-8") if key in PEM_KEYS else value
        return out


def provisioning_image(
    p: Provisioning,
    config: Mapping[str, object] | None = None,
    size: int = NVS_SIZE,
    *,
    omit: Collection[str] = (),
) -> bytes:
    """The NVS partition image the provisioning step flashes at 0x9000.

    ``config`` holds optional §5 settings by their JSON names (as in a config update), stored
    in namespace ``device`` as the device's factory settings; it is validated like a config
    update and a ValueError names the problem. Raises `NvsError` when the values do not fit.
    ``omit`` names provisioning keys left out: a partly provisioned device (``device_id``
    omitted: namespace ``device`` is there, the identity is not).
    """
    values = {key: value for key, value in p.nvs_values().items() if key not in omit}
    if config:
        parsed = _from_object(dict(config), validate=True)
        if isinstance(parsed, ConfigRejected):
            raise ValueError(f"provisioning config rejected: {parsed.reason}")
        values.update(parsed.nvs_values())
    return build_nvs_image({DEVICE_NAMESPACE: values}, size=size)


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    """The §5 settings the firmware runs with. Values are whatever was stored, valid or
    not (see the module docstring); `clamped` gives the ones timers may use."""

    measurement_interval_s: int = CONFIG_INT_SETTINGS["measurement_interval_s"].default
    heartbeat_interval_s: int = CONFIG_INT_SETTINGS["heartbeat_interval_s"].default
    status_report_interval_s: int = CONFIG_INT_SETTINGS["status_report_interval_s"].default
    watchdog_timeout_s: int = CONFIG_INT_SETTINGS["watchdog_timeout_s"].default
    sensor_timeout_s: int = CONFIG_INT_SETTINGS["sensor_timeout_s"].default
    ota_selftest_timeout_s: int = CONFIG_INT_SETTINGS["ota_selftest_timeout_s"].default
    calibration_offset_temp: float = DEFAULT_CALIBRATION_OFFSET
    log_level: str = DEFAULT_LOG_LEVEL
    brokers: tuple[str, ...] = ()

    @classmethod
    def from_nvs(cls, namespaces: Mapping[str, Mapping[str, object]]) -> DeviceConfig:
        """Defaults, overridden by provisioned settings (``device``), overridden by saved
        updates (``config``)."""
        values: dict[str, Any] = {}
        for namespace in (DEVICE_NAMESPACE, CONFIG_NAMESPACE):
            stored = namespaces.get(namespace, {})
            for key, nvs_key in CONFIG_NVS_KEYS.items():
                if nvs_key in stored:
                    value = _decode(key, stored[nvs_key])
                    if value is not None:
                        values[key] = value
        return cls(**values)

    def nvs_values(self) -> dict[str, NvsValue]:
        """Every setting as its NVS entry (keys and encodings of `CONFIG_NVS_KEYS`)."""
        return {CONFIG_NVS_KEYS[key]: _encode(key, getattr(self, key)) for key in CONFIG_KEYS}

    def clamped(self) -> DeviceConfig:
        """The settings forced into the contract's ranges: integers and the offset clamped,
        an unknown log level replaced by the default, malformed broker URIs dropped and at
        most `MAX_BROKERS` kept. Equal to ``self`` for any valid configuration."""
        ints = {
            key: min(max(getattr(self, key), s.minimum), s.maximum)
            for key, s in CONFIG_INT_SETTINGS.items()
        }
        low, high = CALIBRATION_OFFSET_RANGE
        offset = self.calibration_offset_temp
        offset = (
            min(max(offset, low), high) if math.isfinite(offset) else DEFAULT_CALIBRATION_OFFSET
        )
        brokers = tuple(b for b in self.brokers if parse_broker_uri(b) is not None)
        return dataclasses.replace(
            self,
            **ints,
            calibration_offset_temp=offset,
            log_level=self.log_level if self.log_level in LOG_LEVELS else DEFAULT_LOG_LEVEL,
            brokers=brokers[:MAX_BROKERS],
        )


def _encode(key: str, value: object) -> NvsValue:
    if key in CONFIG_INT_SETTINGS:
        assert isinstance(value, int)
        return NvsInt(value, "i32")
    if key == "calibration_offset_temp":
        assert isinstance(value, int | float)
        return repr(float(value))
    if key == "brokers":
        assert isinstance(value, tuple)
        return "\n".join(value)
    assert isinstance(value, str)
    return value


def _decode(key: str, stored: object) -> object | None:
    """One stored setting, or None when it is unusable (wrong type, unparsable)."""
    if key in CONFIG_INT_SETTINGS:
        return stored if isinstance(stored, int) and not isinstance(stored, bool) else None
    if not isinstance(stored, str):
        return None
    if key == "calibration_offset_temp":
        try:
            offset = float(stored)
        except ValueError:
            return None
        return offset if math.isfinite(offset) else None
    if key == "brokers":
        return tuple(uri for uri in stored.split("\n") if uri)
    return stored


@dataclass(frozen=True)
class ConfigUpdate:
    """An accepted config update: the keys it sets (None = not in the update)."""

    measurement_interval_s: int | None = None
    heartbeat_interval_s: int | None = None
    status_report_interval_s: int | None = None
    watchdog_timeout_s: int | None = None
    sensor_timeout_s: int | None = None
    ota_selftest_timeout_s: int | None = None
    calibration_offset_temp: float | None = None
    log_level: str | None = None
    brokers: tuple[str, ...] | None = None

    def changes(self) -> dict[str, Any]:
        """The keys this update sets, in contract order, with their values."""
        found = {key: getattr(self, key) for key in CONFIG_KEYS}
        return {key: value for key, value in found.items() if value is not None}

    @property
    def values(self) -> dict[str, Any]:
        """Same as `changes`: the keys set, with their values."""
        return self.changes()

    def apply(self, config: DeviceConfig) -> DeviceConfig:
        return dataclasses.replace(config, **self.changes())

    def as_json(self) -> dict[str, object]:
        """The update as JSON-ready values (brokers as a list), e.g. for ``applied``."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.changes().items()
        }

    def nvs_values(self) -> dict[str, NvsValue]:
        return {CONFIG_NVS_KEYS[key]: _encode(key, value) for key, value in self.changes().items()}


@dataclass(frozen=True)
class ConfigRejected:
    """A config update refused as a whole: why, and the keys at fault (none when the
    payload itself is the problem)."""

    reason: str
    keys: tuple[str, ...] = ()


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _show(value: object, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def parse_config_update(
    payload: bytes | str, *, validate: bool = True
) -> ConfigUpdate | ConfigRejected:
    """A ``config/update/{id}`` payload, accepted or rejected with a reason naming the key.

    With ``validate=False`` (the defect), see the module docstring. Never raises.
    """
    if isinstance(payload, bytes | bytearray):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            return ConfigRejected("payload is not UTF-8 text")
    try:
        obj = json.loads(
            payload,
            parse_constant=_not_json,
            object_pairs_hook=_no_duplicates if validate else None,
        )
    except _DuplicateKey as err:
        return ConfigRejected(f"duplicate key {_show(err.args[0])}", (str(err.args[0]),))
    except ValueError as err:
        return ConfigRejected(f"malformed JSON: {err}")
    except RecursionError:
        return ConfigRejected("malformed JSON: nested too deeply")
    if not isinstance(obj, dict):
        return ConfigRejected(f"config update must be a JSON object, got {_json_kind(obj)}")
    return _from_object(obj, validate=validate)


def _from_object(obj: dict[str, Any], *, validate: bool) -> ConfigUpdate | ConfigRejected:
    if not validate:
        coerced: dict[str, Any] = {key: _coerce(key, obj[key]) for key in CONFIG_KEYS if key in obj}
        return ConfigUpdate(**{k: v for k, v in coerced.items() if v is not None})
    if not obj:
        return ConfigRejected("config update is empty")
    problems: list[tuple[str, str]] = []
    for key, value in obj.items():
        problem = _check(key, value)
        if problem is not None:
            problems.append((key, problem))
    if problems:
        shown = [text for _, text in problems[:8]]
        if len(problems) > 8:
            shown.append(f"and {len(problems) - 8} more")
        return ConfigRejected("; ".join(shown), tuple(dict.fromkeys(k for k, _ in problems)))
    values = dict(obj)
    if "calibration_offset_temp" in values:
        values["calibration_offset_temp"] = float(values["calibration_offset_temp"])
    if "brokers" in values:
        values["brokers"] = tuple(values["brokers"])
    return ConfigUpdate(**values)


def _check(key: str, value: object) -> str | None:
    """What is wrong with one key of an update, or None."""
    name = _show(key)
    if key in CONFIG_INT_SETTINGS:
        s = CONFIG_INT_SETTINGS[key]
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name} must be an integer, got {_json_kind(value)}"
        if not s.minimum <= value <= s.maximum:
            return f"{name} = {_show(value)} is out of range {s.minimum}..{s.maximum}"
        return None
    if key == "calibration_offset_temp":
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{name} must be a number, got {_json_kind(value)}"
        low, high = CALIBRATION_OFFSET_RANGE
        if not low <= value <= high:  # also false for an overflowed 1e999
            return f"{name} = {_show(value)} is out of range {low:g}..{high:g}"
        return None
    if key == "log_level":
        if not isinstance(value, str):
            return f"{name} must be a string, got {_json_kind(value)}"
        if value not in LOG_LEVELS:
            return f"{name} = {_show(value)} is not one of {', '.join(LOG_LEVELS)}"
        return None
    if key == "brokers":
        if not isinstance(value, list | tuple):
            return f"{name} must be an array of URIs, got {_json_kind(value)}"
        if not 1 <= len(value) <= MAX_BROKERS:
            return f"{name} must hold 1..{MAX_BROKERS} URIs, got {len(value)}"
        for index, uri in enumerate(value):
            if not isinstance(uri, str) or parse_broker_uri(uri) is None:
                return (
                    f"{name}[{index}] = {_show(uri)} is not mqtt://host:port or mqtts://host:port"
                )
        return None
    return f"unknown key {name}"


def _coerce(key: str, value: object) -> object | None:
    """What an unvalidating firmware would store for one known key, or None to skip it."""
    if key in CONFIG_INT_SETTINGS:
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            value = int(value)
        if isinstance(value, int):  # bool included: true → 1
            return min(max(int(value), _I32_MIN), _I32_MAX)
        return None
    if key == "calibration_offset_temp":
        if isinstance(value, int | float):
            try:
                offset = float(value)
            except OverflowError:
                return None
            return offset if math.isfinite(offset) else None
        return None
    if key == "log_level":
        return value if isinstance(value, str) and _storable(value) else None
    if key == "brokers":
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else None
        if items is None:
            return None
        kept = tuple(
            uri
            for uri in items
            if isinstance(uri, str) and uri and "\n" not in uri and _storable(uri)
        )
        return kept if _storable("\n".join(kept)) else None
    return None


def store_config(nvs_image: bytes, current: DeviceConfig, update: ConfigUpdate) -> bytes:
    """The NVS partition with ``update`` applied to ``current`` saved in namespace ``config``.

    Every setting is written (not only the changed ones), so the saved configuration no
    longer depends on the provisioned layer below it. Raises `NvsError` when it does not
    fit the partition; the firmware then reports the update as failed.
    """
    return update_nvs(nvs_image, CONFIG_NAMESPACE, update.apply(current).nvs_values())


def factory_reset(nvs_image: bytes) -> bytes:
    """The NVS partition without namespace ``config``; ``device`` (identity, keys and the
    provisioned settings) is kept."""
    return erase_namespace(nvs_image, CONFIG_NAMESPACE)
