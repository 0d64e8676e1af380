"""The config handler: ``config/update/{id}`` validated as a whole
(``hil.device.settings``), saved to NVS, then restart."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace

from hil.device import contract
from hil.device import defects as D
from hil.device.settings import ConfigRejected, ConfigUpdate, parse_config_update, store_config
from hil.images.nvs import erase_namespace, update_nvs
from hil.sim.firmware.tasks.shared import Firmware


class ConfigHandler:
    """Applies one config update (by restarting into it) or rejects it with an alert."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw

    def on_config(self, payload: bytes) -> None:
        fw = self.fw
        status = contract.config_status_topic(fw.device_id)
        if D.CONFIG_BROKER_ITEM_UNCHECKED in fw.defects:
            with contextlib.suppress(ValueError, AttributeError):
                brokers = json.loads(payload).get("brokers")
                if isinstance(brokers, list) and not all(isinstance(uri, str) for uri in brokers):
                    fw.panic("Load access fault")  # the defect: strncmp on a NULL `valuestring`
                    return
        update = parse_config_update(payload, validate=D.CONFIG_WITHOUT_VALIDATION not in fw.defects)
        if D.FLOAT_TIMEOUT_TRUNCATED in fw.defects and isinstance(update, ConfigRejected):
            update = _timeouts_truncated(payload, update)
        if D.CONFIG_MAX_EXCLUSIVE in fw.defects and not isinstance(update, ConfigRejected):
            at_max = [k for k, v in update.values.items() if k in contract.CONFIG_INT_SETTINGS and v >= contract.CONFIG_INT_SETTINGS[k].maximum]
            if at_max:  # the defect: `value < maximum`
                update = ConfigRejected(f"{at_max[0]} out of range", tuple(at_max))
        if isinstance(update, ConfigRejected) and D.REJECTED_CONFIG_APPLIED in fw.defects:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                offset = json.loads(payload).get("calibration_offset_temp")  # applied as it was walked
                if isinstance(offset, int | float) and not isinstance(offset, bool) and abs(offset) <= 10:
                    fw.config = replace(fw.config, calibration_offset_temp=float(offset))
        if isinstance(update, ConfigRejected) and D.REJECTED_CONFIG_SAVED in fw.defects:
            _save_valid_keys_walked(fw, payload)
        if isinstance(update, ConfigRejected):
            reason = "invalid config" if D.CONFIG_ERROR_UNSPECIFIC in fw.defects else update.reason
            fw.log_mirrored("W", "config", f"rejected: {reason}")
            fw.publish(status, {"ok": False, "error": reason})
            fw.alert("warning", "config_rejected", reason)
            return
        if D.CONFIG_UPDATE_REPLACES_SAVED in fw.defects:  # the defect: nvs_erase_all, then its keys
            stored = update_nvs(erase_namespace(fw.nvs_image(), contract.CONFIG_NAMESPACE), contract.CONFIG_NAMESPACE, update.nvs_values())
        else:
            stored = store_config(fw.nvs_image(), fw.config, update)
        if D.CONFIG_NOT_PERSISTED in fw.defects:
            fw.ctx.rtc_memory["config_nvs"] = stored
        else:
            fw.write_nvs(stored)
        applied = sorted(update.values)
        fw.log("I", "config", f"saved {', '.join(applied)}; restarting")
        if D.CONFIG_ACK_AFTER_RESTART in fw.defects:
            fw.ctx.rtc_memory["config_ack"] = {"ok": True, "applied": applied}  # the defect: acked next boot
            fw.restart("SW")
            return
        fw.publish(status, {"ok": True, "applied": applied})
        fw.spawn(self._ack_then_restart())

    async def _ack_then_restart(self) -> None:
        await self.fw.flushed(2.0)
        self.fw.restart("SW")


def _timeouts_truncated(payload: bytes, rejected: ConfigRejected) -> ConfigUpdate | ConfigRejected:
    """The ``float_timeout_truncated`` defect: an update rejected only for fractional
    timeouts, taken with each truncated as ``valueint`` would."""
    timeouts = ("watchdog_timeout_s", "sensor_timeout_s")
    try:
        obj = json.loads(payload)
    except ValueError:
        return rejected
    if not isinstance(obj, dict) or not rejected.keys or not set(rejected.keys) <= set(timeouts):
        return rejected
    if not all(isinstance(obj[key], float) for key in rejected.keys):
        return rejected
    return parse_config_update(json.dumps({**obj, **{key: int(obj[key]) for key in rejected.keys}}))


def _save_valid_keys_walked(fw: Firmware, payload: bytes) -> None:
    """The ``rejected_config_saved`` defect: each key is checked and saved to NVS in turn
    (nvs_set_* per key, one commit), until the first invalid one rejects the update: the
    keys before it are in `config`, unused until the next boot reads them."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return
    if not isinstance(obj, dict):
        return
    walked: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(parse_config_update(json.dumps({key: value})), ConfigRejected):
            break
        walked[key] = value
    saved = parse_config_update(json.dumps(walked)) if walked else None
    if isinstance(saved, ConfigUpdate):
        fw.write_nvs(store_config(fw.nvs_image(), fw.config, saved))
