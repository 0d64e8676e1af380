"""``hil sensor get|set|fault`` and ``hil power on|off|cycle``: the rig's controls, by hand.

They go through the same protocols the test fixtures use (`hil.rig.backends`): a virtual
board's control endpoint, or a real rig's power switch (GPIO expander, uhubctl) and
reference BME280. A real rig's reference sensor measures the room; it can be read, not set.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hil.bench.state import BenchError, BenchInputError, read_record, write_record
from hil.bme280.compensation import Environment
from hil.bme280.faults import Fault
from hil.device.contract import CONFIG_INT_SETTINGS
from hil.rig.backends import Power, ReferenceSensor, SensorEmulator, VirtualPower, VirtualSensor

FAULTS: tuple[str, ...] = tuple(f.value for f in Fault)
RANGES = {  # the BME280's operating range (datasheet §1): beyond it, a typo more than a test
    "temperature_c": (-40.0, 85.0),
    "humidity_pct": (0.0, 100.0),
    "pressure_hpa": (300.0, 1100.0),
}


def sensor_get(sensor: SensorEmulator | ReferenceSensor) -> dict[str, Any]:
    """The sensor's environment, and its active faults where the backend knows them."""
    if isinstance(sensor, VirtualSensor):
        raw: dict[str, Any] = sensor.control.request("sensor.get")["sensor"]
        return raw
    env = sensor.get()
    return {"temperature_c": env.temperature_c, "humidity_pct": env.humidity_pct, "pressure_hpa": env.pressure_hpa}


def _emulator(sensor: SensorEmulator | ReferenceSensor, what: str) -> SensorEmulator:
    if not hasattr(sensor, "set"):
        raise BenchInputError(f"{what}: this rig's sensor is a reference BME280 (it measures the room); only 'get' works")
    return sensor  # type: ignore[return-value]


def sensor_set(
    sensor: SensorEmulator | ReferenceSensor,
    *,
    temperature_c: float | None = None,
    humidity_pct: float | None = None,
    pressure_hpa: float | None = None,
) -> dict[str, Any]:
    """Set any of the three values; the others keep theirs. Returns the new state."""
    given = {"temperature_c": temperature_c, "humidity_pct": humidity_pct, "pressure_hpa": pressure_hpa}
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        raise BenchInputError("sensor set: give at least one of --temperature, --humidity, --pressure")
    for key, value in changes.items():
        low, high = RANGES[key]
        if not low <= value <= high:
            raise BenchInputError(f"sensor set: {key} {value} is outside the BME280's range {low:g}..{high:g}")
    emulator = _emulator(sensor, "sensor set")
    current = sensor_get(sensor)
    merged = {k: float(changes.get(k, current[k])) for k in RANGES}
    emulator.set(Environment(merged["temperature_c"], merged["humidity_pct"], merged["pressure_hpa"]))
    return sensor_get(sensor)


def sensor_fault(sensor: SensorEmulator | ReferenceSensor, name: str, *, active: bool = True) -> dict[str, Any]:
    """Inject (or with ``active=False`` clear) one fault; ``none`` clears them all."""
    if name != "none" and name not in FAULTS:
        raise BenchInputError(f"sensor fault {name!r}: not a fault; one of {', '.join(FAULTS)}, or none (clear all)")
    emulator = _emulator(sensor, "sensor fault")
    if name == "none":
        emulator.clear_faults()
    else:
        emulator.fault(name, active)
    return sensor_get(sensor)


def power(backend: Power, action: str, *, off_s: float = 0.5) -> dict[str, Any]:
    """Switch the supply; for a virtual board, return its state afterwards."""
    if action not in ("on", "off", "cycle"):
        raise BenchInputError(f"power {action!r}: use on, off or cycle")
    if off_s < 0:
        raise BenchInputError(f"--off-s {off_s}: give a time >= 0")
    try:
        if action == "on":
            backend.on()
        elif action == "off":
            backend.off()
        else:
            backend.cycle(off_s)
    except RuntimeError as exc:  # uhubctl's failure
        raise BenchError(str(exc)) from None
    except OSError as exc:  # an I2C expander that does not answer
        raise BenchError(f"power {action}: {exc}") from None
    if isinstance(backend, VirtualPower):
        state: dict[str, Any] = backend.control.request("state")["state"]
        return {"action": action, "powered": state.get("powered"), "mode": state.get("mode")}
    return {"action": action}


# -- when a sensor change shows -------------------------------------------------------------
PROVISIONED_DIR = "provisioned"
"""In the bench state dir: what `hil provision` last wrote to each port (device id and §5
settings, no secrets), so that `hil sensor set` can say when the change will show."""


def _provisioned_path(state_dir: Path, port: str) -> Path:
    return state_dir / PROVISIONED_DIR / (re.sub(r"[^A-Za-z0-9._-]+", "_", port).strip("_") + ".json")


def record_provisioning(state_dir: Path, port: str, device_id: str, config: Mapping[str, Any]) -> None:
    """Remember what `hil provision` wrote to ``port`` (the settings only, never a secret)."""
    write_record(_provisioned_path(state_dir, port), {"port": port, "device_id": device_id, "config": dict(config)})


def reading_note(state_dir: Path, port: str | None) -> str:
    """When a sensor change shows: at the device's next reading, within its
    ``measurement_interval_s`` (C4.2): as `hil provision` set it on ``port``, else the
    firmware's default. A config update over MQTT since then would change it."""
    default = CONFIG_INT_SETTINGS["measurement_interval_s"].default
    record = None
    if port is not None:
        with contextlib.suppress(BenchError):
            record = read_record(_provisioned_path(state_dir, port))
    configured = (record or {}).get("config", {}).get("measurement_interval_s")
    if isinstance(configured, int) and not isinstance(configured, bool):
        device = record.get("device_id", "the device") if record else "the device"
        return (f"the next reading of {device} reflects it: within measurement_interval_s = {configured} s "
                f"(as hil provision --config set it on {port})")  # fmt: skip
    return (
        f"the device's next reading reflects it: within measurement_interval_s = {default} s (the firmware's "
        "default; provisioned with --config '{\"measurement_interval_s\": 1}', within a second)"
    )
