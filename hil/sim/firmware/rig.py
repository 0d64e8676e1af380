"""The rig around the virtual chip: the BME280 on its I2C bus and the Wi-Fi access point.

These exist outside the chip, as on a lab rig: they keep their state across the chip's
resets, and the control endpoint drives them (sensor environment and faults, AP up/down,
RSSI) the way a lab's sensor emulator and RF shield box would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hil.bme280.compensation import Environment
from hil.bme280.faults import Fault
from hil.sim.bme280 import BME280, NoiseModel, SimulatedSMBus
from hil.sim.control import ControlError, ControlServer, finite, number

SENSOR_ADDRESS = 0x76
MAX_RAMP_S = 24 * 3600.0
"""The longest sensor ramp a request may ask for (a day)."""


@dataclass
class AccessPoint:
    """The virtual AP the board's Wi-Fi joins."""

    ssid: str = "hil-lab"
    password: str = "hil-lab-password"
    up: bool = True
    rssi: int = -55
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def accepts(self, ssid: str | None, password: str | None) -> bool:
        return self.up and ssid == self.ssid and password == self.password

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Wait for the next change of the AP (up/down, credentials, RSSI)."""
        await self._changed.wait()


class RigPeripherals:
    """The sensor, the bus it sits on and the AP; one set per virtual board."""

    def __init__(self, *, environment: Environment | None = None) -> None:
        self.sensor = BME280(address=SENSOR_ADDRESS, environment=environment or Environment(22.0, 45.0, 1013.25))
        self.bus = SimulatedSMBus(devices=[self.sensor])
        self.ap = AccessPoint()
        self._ramp: asyncio.Task[None] | None = None

    def register(self, control: ControlServer) -> None:
        control.handlers.update(
            {
                "sensor.get": self._sensor_get,
                "sensor.set": self._sensor_set,
                "sensor.ramp": self._sensor_ramp,
                "sensor.noise": self._sensor_noise,
                "sensor.fault": self._sensor_fault,
                "ap.get": self._ap_get,
                "ap.set": self._ap_set,
            }
        )

    # -- sensor -------------------------------------------------------------------
    def _env_json(self) -> dict[str, Any]:
        env = self.sensor.environment
        return {
            "temperature_c": env.temperature_c,
            "humidity_pct": env.humidity_pct,
            "pressure_hpa": env.pressure_hpa,
            "faults": sorted(f.value for f in self.sensor.faults),
        }

    def _env_from(self, request: dict[str, Any]) -> Environment:
        current = self.sensor.environment
        values = {}
        for key in ("temperature_c", "humidity_pct", "pressure_hpa"):
            values[key] = finite(key, request.get(key, getattr(current, key)))
        try:
            return Environment(**values)
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    async def _sensor_get(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"sensor": self._env_json()}

    async def _sensor_set(self, request: dict[str, Any]) -> dict[str, Any]:
        self._cancel_ramp()
        self.sensor.set_environment(self._env_from(request))
        return {"sensor": self._env_json()}

    async def _sensor_ramp(self, request: dict[str, Any]) -> dict[str, Any]:
        """Move linearly to a target environment over ``duration_s``, in 20 steps."""
        target = self._env_from(request)
        if "duration_s" not in request:
            raise ControlError("sensor.ramp needs duration_s: seconds > 0")
        duration = number(request, "duration_s", default=0.0, low=0.0, high=MAX_RAMP_S)
        if duration <= 0:
            raise ControlError(f"sensor.ramp needs duration_s > 0, not {duration!r}")
        self._cancel_ramp()
        self._ramp = asyncio.get_running_loop().create_task(self._run_ramp(target, duration))
        return {"sensor": self._env_json()}

    async def _run_ramp(self, target: Environment, duration: float) -> None:
        start = self.sensor.environment
        steps = 20
        for step in range(1, steps + 1):
            await asyncio.sleep(duration / steps)  # the ramp's own time base
            frac = step / steps
            self.sensor.set_environment(
                Environment(
                    start.temperature_c + (target.temperature_c - start.temperature_c) * frac,
                    start.humidity_pct + (target.humidity_pct - start.humidity_pct) * frac,
                    start.pressure_hpa + (target.pressure_hpa - start.pressure_hpa) * frac,
                )
            )

    def _cancel_ramp(self) -> None:
        if self._ramp is not None:
            self._ramp.cancel()
            self._ramp = None

    async def _sensor_noise(self, request: dict[str, Any]) -> dict[str, Any]:
        values = {k: finite(f"sensor.noise: {k}", v) for k, v in request.items() if k != "cmd"}
        try:
            noise = NoiseModel(**values)
        except (TypeError, ValueError) as exc:
            raise ControlError(f"sensor.noise: {exc}") from None
        self.sensor.set_noise(noise)
        return {"sensor": self._env_json()}

    async def _sensor_fault(self, request: dict[str, Any]) -> dict[str, Any]:
        names = {f.value: f for f in Fault}
        fault, active = request.get("fault"), request.get("active", True)
        if fault == "none":
            self.sensor.clear_faults()
        elif fault in names and isinstance(active, bool):
            (self.sensor.inject if active else self.sensor.clear_fault)(names[fault])
        else:
            raise ControlError(f'sensor.fault needs "fault": one of {sorted(names)} or "none", and "active": bool')
        return {"sensor": self._env_json()}

    # -- access point -------------------------------------------------------------
    async def _ap_get(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ap": self._ap_json()}

    async def _ap_set(self, request: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for key, kind in (("ssid", str), ("password", str), ("up", bool), ("rssi", int)):
            if key in request:
                if not isinstance(request[key], kind):
                    raise ControlError(f"ap.set: {key} must be {kind.__name__}")
                changes[key] = request[key]
        if "rssi" in changes and not -100 <= changes["rssi"] <= 0:
            raise ControlError("ap.set: rssi must be within -100..0 dBm")
        self.ap.update(**changes)
        return {"ap": self._ap_json()}

    def _ap_json(self) -> dict[str, Any]:
        return {"ssid": self.ap.ssid, "up": self.ap.up, "rssi": self.ap.rssi}


__all__ = ["AccessPoint", "RigPeripherals"]
