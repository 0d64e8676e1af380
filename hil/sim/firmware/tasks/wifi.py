"""The wifi task: joins the rig's virtual AP when SSID and password match, and notices
the AP going away (which drops the broker link without a goodbye)."""

from __future__ import annotations

import asyncio
import contextlib

from hil.device import defects as D
from hil.secret import reveal
from hil.sim.firmware.tasks.shared import Firmware


class WifiTask:
    """Sets ``fw.wifi_up`` / ``fw.wifi_down`` as the station joins and loses the AP."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw

    async def run(self) -> None:
        fw = self.fw
        rig = fw.rig
        lost_once = False
        while True:
            if rig is None:
                await asyncio.Event().wait()
                return
            ap = rig.ap
            changed = asyncio.ensure_future(ap.changed())
            try:
                joinable = ap.accepts(fw.prov.wifi_ssid, reveal(fw.prov.wifi_pass))
                if lost_once and D.NO_WIFI_RECONNECT in fw.defects:
                    joinable = False
                if joinable and not fw.wifi_up.is_set():
                    fw.log("I", "wifi", f"connected ssid={ap.ssid} rssi={ap.rssi}")
                    fw.joined_rssi = ap.rssi
                    fw.wifi_down.clear()
                    fw.wifi_up.set()
                elif not joinable and fw.wifi_up.is_set():
                    lost_once = True
                    fw.wifi_up.clear()
                    fw.wifi_down.set()
                    fw.log_mirrored("W", "wifi", "disconnected reason=beacon_timeout")
                elif not joinable:
                    reason = "no_ap_found" if not ap.up or ap.ssid != fw.prov.wifi_ssid else "auth_fail"
                    said = f"connect failed ssid={fw.prov.wifi_ssid} reason={reason}"
                    if reason == "auth_fail" and D.WIFI_AUTH_FAIL_LOGS_PASSPHRASE in fw.defects:
                        said += f" pass={reveal(fw.prov.wifi_pass)}"  # "which passphrase did it try?"
                    fw.log("W", "wifi", said)
                    if D.REBOOTS_ON_WIFI_FAILURE in fw.defects:
                        fw.restart("SW")  # the defect: "cannot join, try a reboot"
                        return
                # Wait for the AP to change, or retry a failed join after 5 s.
                timeout = None if fw.wifi_up.is_set() else 5.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(changed), timeout)
            finally:
                changed.cancel()
