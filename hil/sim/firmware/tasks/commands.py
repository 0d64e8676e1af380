"""The command handler: ``esp32/{id}/command`` requests, each acknowledged.

``reset``, ``report``, ``factory_reset``; test builds (``params.test_hooks``) also
``hang`` (``{"task":"sensor"}``) and ``crash``. Runs on the mqtt task, as the C
firmware's MQTT event handler does.
"""

from __future__ import annotations

import json
from typing import Any

from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig, factory_reset
from hil.images.nvs import erase_namespace
from hil.sim.firmware.tasks.health import HealthTask
from hil.sim.firmware.tasks.shared import STATS_NAMESPACE, Firmware


class CommandHandler:
    """Runs one command; ``report`` publishes the health task's heartbeat at once."""

    def __init__(self, fw: Firmware, health: HealthTask) -> None:
        self.fw = fw
        self.health = health

    async def on_command(self, payload: bytes) -> None:
        fw = self.fw
        ack = contract.command_ack_topic(fw.device_id)
        try:
            request = json.loads(payload)
            cmd = request["cmd"]
        except (ValueError, KeyError, TypeError):
            fw.publish(ack, {"cmd": None, "ok": False, "error": "malformed command"})
            return
        if not isinstance(cmd, str):  # the ack names a command only by a string (§4 schema)
            fw.publish(ack, {"cmd": None, "ok": False, "error": "malformed command: cmd must be a string"})
            return
        if cmd == "reset":
            fw.ctx.rtc_memory["reset_command"] = True
            await self._ack_then(ack, cmd, lambda: fw.restart("SW"))
        elif cmd == "report":
            fw.publish(ack, {"cmd": cmd, "ok": True})
            self.health.report()
        elif cmd == "factory_reset":
            if D.FACTORY_RESET_WRITES_DEFAULTS in fw.defects:
                fw.store(contract.CONFIG_NAMESPACE, DeviceConfig().nvs_values())  # "defaults", not erased
            elif D.FACTORY_RESET_ERASES_STATS in fw.defects:
                fw.write_nvs(erase_namespace(factory_reset(fw.nvs_image()), STATS_NAMESPACE))  # the counts too
            else:
                fw.write_nvs(factory_reset(fw.nvs_image()))
            await self._ack_then(ack, cmd, lambda: fw.restart("SW"))
        elif cmd == "hang" and fw.test_hooks:
            task = request.get("task", "sensor")
            fw.hang.add(str(task))
            fw.log_mirrored("W", "app", f"test hook: hang task={task}")
            fw.publish(ack, {"cmd": cmd, "ok": True})
        elif cmd == "crash" and fw.test_hooks:
            await self._ack_then(ack, cmd, lambda: fw.panic("Store access fault"))
        elif D.ACK_JSON_UNESCAPED in fw.defects:  # snprintf(buf, n, "{\"cmd\":\"%s\",...}", cmd)
            fw.outbox.put(ack, f'{{"cmd":"{cmd}","ok":false,"error":"unknown command"}}'.encode())
        else:
            fw.publish(ack, {"cmd": cmd, "ok": False, "error": f"unknown command {cmd!r}"})

    async def _ack_then(self, topic: str, cmd: str, then: Any) -> None:
        self.fw.publish(topic, {"cmd": cmd, "ok": True})
        await self.fw.flushed(2.0)
        then()
