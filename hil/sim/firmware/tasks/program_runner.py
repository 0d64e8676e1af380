"""The programs task: ``programs/{id}/deploy`` runs a Scheme-subset program with step and
memory budgets (``hil.sim.firmware.programs``), one at a time, never blocking telemetry."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from hil.device import contract
from hil.device import defects as D
from hil.sim.firmware.programs import (
    MAX_PROGRAM_BYTES,
    Budget,
    Deployment,
    ProgramError,
    Rejection,
    parse,
    parse_deployment,
    run_program,
)
from hil.sim.firmware.tasks.shared import Firmware


class ProgramRunner:
    """Accepts a deployment and runs it as ``fw.program_task``, replacing the one before."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw

    def on_deploy(self, payload: bytes) -> None:
        fw = self.fw
        status = contract.programs_status_topic(fw.device_id)
        prefix_only = D.PROGRAM_HASH_PREFIX_ONLY in fw.defects
        deployment = parse_deployment(
            payload,
            check_hash=D.PROGRAM_HASH_UNCHECKED not in fw.defects and not prefix_only,
            max_bytes=MAX_PROGRAM_BYTES - 1 if D.PROGRAM_SIZE_OFF_BY_ONE in fw.defects else MAX_PROGRAM_BYTES,
        )
        if prefix_only and isinstance(deployment, Deployment):
            given = str(json.loads(payload)["sha256"]).lower()
            if deployment.sha256[:32] != given[:32]:  # the defect: strncmp(hex, given, 32)
                deployment = Rejection("hash mismatch", deployment.name)
        if isinstance(deployment, Rejection):
            name = None if D.PROGRAM_REJECTION_UNNAMED in fw.defects else deployment.name
            fw.publish(status, {"name": name, "state": "rejected", "error": deployment.reason})
            if D.PROGRAM_REJECTION_FALLS_THROUGH not in fw.defects or deployment.name is None:
                return
            # The defect: no return after the refusal; the source runs as it came.
            source = json.loads(payload).get("source")
            if not isinstance(source, str):
                return
            deployment = Deployment(deployment.name, source, hashlib.sha256(source.encode()).hexdigest())
        if fw.program_task is not None and not fw.program_task.done():
            fw.program_task.cancel()
        fw.publish(status, {"name": deployment.name, "state": "accepted"})
        fw.program_task = asyncio.ensure_future(self._run_program(deployment.name, deployment.source))

    async def _run_program(self, name: str, source: str) -> None:
        fw = self.fw
        status = contract.programs_status_topic(fw.device_id)
        fw.publish(status, {"name": name, "state": "running"})
        try:
            # The program_memory_unbounded defect: no cap (in the model, "no cap" is a budget
            # far beyond any device's RAM; a C runtime would malloc until the heap is gone).
            budget = Budget(memory_bytes=64 * 2**20) if D.PROGRAM_MEMORY_UNBOUNDED in fw.defects else Budget()
            result = await run_program(parse(source), _ProgramHost(fw), budget)
        except ProgramError as exc:
            if exc.kind == "memory_budget" and D.PROGRAM_OOM_PANICS in fw.defects:
                fw.panic("Load access fault")  # malloc's NULL dereferenced: out of memory is a crash
                return
            named = None if D.PROGRAM_FAILURE_UNNAMED in fw.defects else name
            error = "program failed" if D.PROGRAM_ERROR_GENERIC in fw.defects else f"{exc.kind}: {exc}"
            fw.publish(status, {"name": named, "state": "failed", "error": error})
            return
        if isinstance(result, str) and D.PROGRAM_RESULT_UNESCAPED in fw.defects:  # snprintf's "%s", unescaped
            fw.outbox.put(status, f'{{"name":{json.dumps(name)},"state":"completed","result":"{result}"}}'.encode())
            return
        fw.publish(status, {"name": name, "state": "completed", "result": result})


class _ProgramHost:
    """What a deployed program may touch: the last readings, the LED, its own topics."""

    def __init__(self, firmware: Firmware) -> None:
        self._fw = firmware
        self.integer_division = D.PROGRAM_INTEGER_DIVISION in firmware.defects
        self.division_by_zero_is_zero = D.PROGRAM_DIVISION_BY_ZERO_IS_ZERO in firmware.defects
        self.topics_unchecked = D.PROGRAM_TOPIC_UNCHECKED in firmware.defects
        self.gt_as_ge = D.PROGRAM_GT_AS_GE in firmware.defects
        self.compare_first_two = D.PROGRAM_COMPARE_FIRST_TWO in firmware.defects
        self.sleep_in_us = D.PROGRAM_SLEEP_IN_US in firmware.defects

    def sensor(self, quantity: str) -> float:
        reading = self._fw.last_reading
        if reading is None or quantity not in reading:
            raise KeyError(quantity)
        if quantity == "pressure" and D.PROGRAM_PRESSURE_IN_PA in self._fw.defects:
            return reading[quantity] * 100  # the BME280 driver's Pa, never converted to hPa
        return reading[quantity]

    def led(self, on: bool) -> None:
        self._fw.led = on

    def publish(self, suffix: str, value: Any) -> None:
        if self.topics_unchecked:  # the defect: the suffix appended as it came
            topic = contract.device_publish_prefix(self._fw.device_id) + "programs/" + suffix
        else:
            topic = contract.program_publish_topic(self._fw.device_id, suffix)
        self._fw.publish(topic, {"value": value})

    async def sleep(self, ms: int) -> None:
        # The program_sleep_in_us defect: esp_rom_delay_us(ms), a thousandth of the wait.
        await asyncio.sleep(ms / 1_000_000 if self.sleep_in_us else ms / 1000)
