"""OTA orchestration: ``ota/update/{id}`` requests, and what a boot after one owes.

A request: version, size, SHA-256 and ECDSA P-256 signature checks; HTTP/HTTPS download
with Range resume into the next slot; image checks; otadata NEW; reboot. At boot: a
rolled-back update is reported once (``rolled_back``, alert ``ota_rolled_back``); an
image pending verification runs its self-test (broker + sensor within
``ota_selftest_timeout_s``), then marks itself valid, or invalid and reboots. The
mechanics (partitions, otadata, download, checks) are ``hil.sim.firmware.ota``'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig
from hil.images.nvs import read_nvs
from hil.sim.firmware.http_client import ssl_context_for_ca
from hil.sim.firmware.ota import (
    OtaFailed,
    OtaRejected,
    OtaWriter,
    download_to,
    find_rollback,
    mark_app_invalid,
    mark_app_valid,
    next_update_partition,
    parse_ota_request,
    precheck,
    running_entry_state,
    set_boot_partition,
)
from hil.sim.firmware.tasks.shared import STATS_NAMESPACE, Firmware


class OtaTask:
    """The boot-time OTA task (rollback report, self-test) and the update handler."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw

    async def run(self) -> None:
        fw = self.fw
        ctx = fw.ctx
        status = contract.ota_status_topic(fw.device_id)
        rolled = find_rollback(ctx.flash, ctx.table, ctx.running)
        if rolled is not None and (rolled.seq != fw.rollback_seq or D.ROLLBACK_REPORTED_EVERY_BOOT in fw.defects):
            fw.log_mirrored("W", "ota", f"rollback detected: version {rolled.version} did not confirm itself")
            fw.publish(status, {"state": "rolled_back", "version": rolled.version, "reason": "new image failed to confirm"})
            if D.ROLLBACK_ALERT_WITHOUT_DEVICE_ID in fw.defects:  # raised before the identity was read
                self._alert_without_identity(f"version {rolled.version} was rolled back")
            else:
                fw.alert("warning", "ota_rolled_back", f"version {rolled.version} was rolled back")
            fw.rollback_seq = rolled.seq
            fw.store(STATS_NAMESPACE, {"rollback_seq": rolled.seq})
        on_trial = fw.pending_verify
        # The defects: the IDF example's mark-valid at every boot of an OTA slot, without
        # asking whether the app is on trial (a no-op on a VALID entry), logged, and with
        # the verdict sent again too, or only the line.
        every_boot = bool({D.OTA_SUCCESS_EVERY_BOOT, D.OTA_MARKED_VALID_EVERY_BOOT} & fw.defects) and (
            running_entry_state(ctx.flash, ctx.table, ctx.running) is not None
        )
        if (not on_trial and not every_boot) or D.NEVER_MARKS_VALID in fw.defects:
            return
        if D.VALID_WITHOUT_SELFTEST not in fw.defects:
            selftest_s = float(fw.config.ota_selftest_timeout_s)
            if D.OTA_SELFTEST_TIMEOUT_IGNORED in fw.defects:
                selftest_s = float(DeviceConfig().ota_selftest_timeout_s)  # the built-in default
            if D.OTA_SELFTEST_TIMEOUT_FROM_PROVISIONING in fw.defects:  # the defect: `config` never read for it
                provisioned = read_nvs(fw.nvs_image()).get(contract.DEVICE_NAMESPACE, {})
                selftest_s = float(DeviceConfig.from_nvs({contract.DEVICE_NAMESPACE: provisioned}).clamped().ota_selftest_timeout_s)
            try:
                async with asyncio.timeout(selftest_s):
                    await fw.connected.wait()
                    if not fw.safe_mode and D.OTA_SELFTEST_WITHOUT_SENSOR not in fw.defects:
                        await fw.sensor_ok.wait()
            except TimeoutError:
                fw.log_mirrored("E", "ota", "self-test failed; rollback to previously worked partition. Restart.")
                mark_app_invalid(ctx.flash, ctx.table, ctx.running)
                fw.restart("SW")
                return
        mark_app_valid(ctx.flash, ctx.table, ctx.running)
        fw.pending_verify = False
        fw.log("I", "ota", "app marked valid")
        if on_trial or D.OTA_SUCCESS_EVERY_BOOT in fw.defects:
            fw.publish(status, {"state": "success", "version": fw.version})

    async def on_update(self, payload: bytes) -> None:
        fw = self.fw
        ctx = fw.ctx
        status = contract.ota_status_topic(fw.device_id)
        request = parse_ota_request(
            payload,
            require_signature=D.OTA_SIGNATURE_OPTIONAL not in fw.defects,
            check_size_type=D.OTA_SIZE_TYPE_UNCHECKED not in fw.defects,
        )
        if isinstance(request, OtaRejected):
            fw.log_mirrored("E", "ota", f"rejected: {request.reason}")
            fw.publish(status, {"state": "rejected", "version": request.version, "reason": request.reason})
            return
        try:
            target = next_update_partition(ctx.table, ctx.running, fixed_slot=D.OTA_FIXED_SLOT in fw.defects)
        except OtaFailed as exc:
            fw.publish(status, {"state": "rejected", "version": request.version, "reason": exc.reason})
            return
        reason = precheck(
            request,
            running_version=fw.version,
            partition_size=target.size,
            pubkey_pem=fw.prov.ota_pubkey,
            allow_downgrade=D.ACCEPTS_DOWNGRADE in fw.defects,
            check_signature=D.SKIPS_SIGNATURE_CHECK not in fw.defects,
            signature_optional=D.OTA_SIGNATURE_OPTIONAL in fw.defects,
            compare_as_strings=D.VERSIONS_COMPARED_AS_STRINGS in fw.defects,
            check_size=D.OTA_SIZE_CHECKED_LATE not in fw.defects,
            size_limit_exclusive=D.OTA_PARTITION_SIZE_EXCLUSIVE in fw.defects,
            major_minor_only=D.OTA_PATCH_IGNORED in fw.defects,
            check_size_positive=D.OTA_SIZE_SIGN_UNCHECKED not in fw.defects,
            decode_errors_pass=D.OTA_SIGNATURE_PARSE_ERROR_ACCEPTED in fw.defects,
        )
        if reason is None and D.OTA_VERSION_PARTS_EACH_NEWER in fw.defects and _a_part_lower(request.version, fw.version):
            reason = f"version {request.version} is not newer than running {fw.version}"  # the defect
        if reason is None and fw.pending_verify:
            reason = "the running image is still pending verification"
        if reason is not None:
            fw.log_mirrored("E", "ota", f"rejected version={request.version}: {reason}")
            fw.publish(status, {"state": "rejected", "version": request.version, "reason": reason})
            return
        if D.OTA_PROGRESS_AT_DEBUG not in fw.defects:  # with it: ESP_LOGD, below the default level
            fw.log("I", "ota", f"downloading version={request.version} into {target.label}")
        fw.publish(status, {"state": "downloading", "version": request.version})
        try:
            ssl_context = None
            if D.OTA_HTTP_REFUSED in fw.defects and not request.url.startswith("https"):
                raise OtaFailed("esp_https_ota: http is not allowed (CONFIG_ESP_HTTPS_OTA_ALLOW_HTTP)")
            if request.url.startswith("https"):
                if not fw.prov.ca_cert:
                    raise OtaFailed("https download but no CA provisioned")
                try:
                    ssl_context = ssl_context_for_ca(fw.prov.ca_cert)
                except ValueError as exc:
                    raise OtaFailed(f"provisioned CA unusable: {exc}") from None
            writer = OtaWriter(ctx.flash, target, request, check_sha256=D.OTA_HASH_UNCHECKED not in fw.defects)
            try:
                await download_to(
                    writer, request, ssl_context=ssl_context, resume=D.OTA_DOWNLOAD_RESTARTS not in fw.defects
                )
            except OtaFailed as exc:
                if D.OTA_DOWNLOAD_ERROR_UNREPORTED not in fw.defects:
                    raise
                fw.log_mirrored("E", "ota", f"download failed version={request.version}: {exc.reason}")
                return  # the defect: cleanup without a status
            fw.publish(status, {"state": "verifying", "version": request.version})
            if D.OTA_BOOT_SET_BEFORE_HASH in fw.defects:
                self._finish_then_compare(writer)
            else:
                writer.end()
                set_boot_partition(ctx.flash, ctx.table, target)
            # The new image reuses sequence numbers; forget the last rollback we reported
            # so that a rollback of this update is reported too.
            if D.ROLLBACK_SEQ_KEPT_AFTER_UPDATE not in fw.defects:
                fw.store(STATS_NAMESPACE, {"rollback_seq": 0})
        except OtaFailed as exc:
            level = "W" if D.OTA_FAILED_AS_WARNING in fw.defects else "E"
            fw.log_mirrored(level, "ota", f"failed version={request.version}: {exc.reason}")
            fw.publish(status, {"state": "failed", "version": request.version, "reason": exc.reason})
            return
        fw.log("I", "ota", f"rebooting into version={request.version}")
        fw.publish(status, {"state": "rebooting", "version": request.version})
        await fw.flushed(2.0)
        fw.restart("SW")

    def _alert_without_identity(self, message: str) -> None:
        """The ROLLBACK_ALERT_WITHOUT_DEVICE_ID defect: the alert as the early rollback check
        builds it, its device_id still the empty buffer."""
        fw = self.fw
        fw.publish(
            contract.alerts_topic(fw.device_id),
            {"level": "warning", "code": "ota_rolled_back", "message": message, "device_id": "", "timestamp": time.time()},
        )

    def _finish_then_compare(self, writer: OtaWriter) -> None:
        """The OTA_BOOT_SET_BEFORE_HASH defect: esp_https_ota_finish (esp_ota_end's image
        checks, then esp_ota_set_boot_partition) first, the signed SHA-256 compared after,
        and a mismatch reported without undoing the switch."""
        ctx = self.fw.ctx
        writer.check_sha256 = False
        writer.end()
        set_boot_partition(ctx.flash, ctx.table, writer.partition)
        actual = hashlib.sha256(ctx.flash.read(writer.partition.offset, writer.request.size)).hexdigest()
        if actual != writer.request.sha256.lower():
            raise OtaFailed(f"sha256 mismatch: image is {actual}, expected {writer.request.sha256.lower()}")


def _a_part_lower(offered: str, running: str) -> bool:
    """The ``ota_version_parts_each_newer`` defect's test: some numeric part of ``offered``
    is lower than the same part of ``running``."""
    pairs = zip(offered.split("."), running.split("."), strict=False)
    return any(a.isdigit() and b.isdigit() and int(a) < int(b) for a, b in pairs)
