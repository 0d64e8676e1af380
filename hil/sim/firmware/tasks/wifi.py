"""The wifi task: joins the rig's virtual AP when SSID and password match, and notices
the AP going away (which drops the broker link without a goodbye).

On the real-board profile (`hil.sim.profiles`) the radio takes a C3's time: starting
Wi-Fi once per boot, then for each join the scan, authentication and association, and
DHCP before ``connected`` (the station has its address); a join that fails costs the
scan (and the association, for a wrong passphrase) before it is reported."""

from __future__ import annotations

import asyncio
import contextlib

from hil.device import defects as D
from hil.secret import reveal
from hil.sim.firmware.tasks.shared import Firmware
from hil.sim.profiles import SCAN_FINDS_NOTHING_S


class WifiTask:
    """Sets ``fw.wifi_up`` / ``fw.wifi_down`` as the station joins and loses the AP."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw

    async def run(self) -> None:
        fw = self.fw
        rig = fw.rig
        lost_once = False
        await _take(fw.profile.wifi_start.draw(fw.jitter))  # esp_wifi_init/start: PHY calibration
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
                    await _take(self._join_s())
                    if not ap.accepts(fw.prov.wifi_ssid, reveal(fw.prov.wifi_pass)):
                        continue  # the AP went (or changed its passphrase) while joining
                    shown_rssi = ap.rssi & 0xFF if D.WIFI_RSSI_LOGGED_UNSIGNED in fw.defects else ap.rssi
                    fw.log("I", "wifi", f"connected ssid={ap.ssid} rssi={shown_rssi}")
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
                    await _take(self._failed_join_s(reason))  # a change meanwhile: `changed` is done
                    said = f"connect failed ssid={fw.prov.wifi_ssid} reason={reason}"
                    if reason == "auth_fail" and D.WIFI_AUTH_FAIL_LOGS_PASSPHRASE in fw.defects:
                        said += f" pass={reveal(fw.prov.wifi_pass)}"  # "which passphrase did it try?"
                    if D.WIFI_WARNINGS_IN_TICKS in fw.defects:  # the defect: its own log macro, in ticks
                        fw.ctx.write(f"W ({fw.ctx.uptime_ms() // 10}) wifi: {said}\r\n".encode())
                    else:
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

    def _join_s(self) -> float:
        """A successful join on this profile: scan, auth/assoc/4-way handshake, DHCP."""
        profile, rng = self.fw.profile, self.fw.jitter
        return profile.wifi_scan.draw(rng) + profile.wifi_join.draw(rng) + profile.dhcp.draw(rng)

    def _failed_join_s(self, reason: str) -> float:
        """A join that fails: no AP found after scanning every channel; a wrong
        passphrase after the scan and the association."""
        profile, rng = self.fw.profile, self.fw.jitter
        if not profile.wifi_scan:
            return 0.0
        if reason == "no_ap_found":
            return SCAN_FINDS_NOTHING_S
        return profile.wifi_scan.draw(rng) + profile.wifi_join.draw(rng)


async def _take(seconds: float) -> None:
    """The radio's time; nothing at all (not even a yield) for 0, the default profile."""
    if seconds > 0:
        await asyncio.sleep(seconds)
