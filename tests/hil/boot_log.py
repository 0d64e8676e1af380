"""What one boot prints on the serial port (DEVICE_CONTRACT.md §2), checked line by line.

``check_boot`` takes the console lines of exactly one boot (from a mark taken before the
reset) and holds them to the contract: one ROM banner whose `rst:` name allows the reset
reason the cause must give, the `app_init` lines with the image's project name and app
version, application lines whose milliseconds never go back, and the milestones with the
provisioned values (sensor found, Wi-Fi up on the provisioned SSID, then the broker session
on the provisioned URI). A list of problems is returned, so a test reports all of them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from hil.device import contract


@dataclass(frozen=True)
class ExpectedBoot:
    reset_reason: str
    """The `reset_reason` the cause must give (POWERON, SW, TASK_WDT, PANIC ...)."""
    project: str
    version: str
    ssid: str | None
    uri: str | None
    sensor: bool = True
    """Whether the sensor must be found (a healthy bus)."""


def boot_problems(lines: list[str], expected: ExpectedBoot) -> list[str]:
    """What in ``lines`` (one boot, from before its ROM banner on) breaks §2."""
    problems: list[str] = []
    banners = [(i, m) for i, line in enumerate(lines) if (m := contract.ROM_RESET.search(line))]
    if len(banners) != 1:
        return [f"{len(banners)} ROM banners where one boot was expected: {[m[0] for _, m in banners]}"]
    at, banner = banners[0]
    allowed = contract.RESET_REASONS_BY_ROM_RESET.get(banner["name"], ())
    if expected.reset_reason not in allowed:
        problems.append(f"ROM banner {banner[0]!r} cannot be a {expected.reset_reason} reset (it allows {allowed})")
    boot = lines[at + 1 :]
    projects = [m["name"] for line in boot if (m := contract.PROJECT_NAME.search(line))]
    versions = [m["version"] for line in boot if (m := contract.APP_VERSION.search(line))]
    if projects != [expected.project]:
        problems.append(f"app_init project name {projects}, expected [{expected.project!r}]")
    if versions != [expected.version]:
        problems.append(f"app_init app version {versions}, expected [{expected.version!r}]")
    # The application's lines: from its first (`cpu_start`/`app_init`) on; the 2nd-stage
    # bootloader keeps a clock of its own.
    logged = [(m, line) for line in boot if (m := contract.LOG_LINE.search(line))]
    app_start = next((i for i, (m, _) in enumerate(logged) if m["tag"] in ("cpu_start", "app_init")), len(logged))
    stamps = [(int(m["ms"]), line) for m, line in logged[app_start:]]
    for (ms_a, a), (ms_b, b) in itertools.pairwise(stamps):
        if ms_b < ms_a:
            problems.append(f"log time went back within a boot: {a!r} then {b!r}")
            break

    def first(pattern: re.Pattern[str], what: str) -> tuple[int, re.Match[str]] | None:
        found = [(i, m) for i, line in enumerate(boot) if (m := pattern.search(line))]
        if not found:
            problems.append(f"no {what} line")
            return None
        return found[0]

    if expected.sensor:
        first(contract.SENSOR_FOUND, "'sensor: bme280 id=0x60 addr=0x76'")
    wifi = first(contract.WIFI_CONNECTED, "'wifi: connected'")
    mqtt = first(contract.MQTT_CONNECTED, "'mqtt: connected'")
    if wifi is not None and expected.ssid is not None and wifi[1]["ssid"] != expected.ssid:
        problems.append(f"wifi connected to ssid={wifi[1]['ssid']!r}, provisioned {expected.ssid!r}")
    if mqtt is not None and expected.uri is not None and mqtt[1]["uri"] != expected.uri:
        problems.append(f"mqtt connected to uri={mqtt[1]['uri']!r}, provisioned {expected.uri!r}")
    if wifi is not None and mqtt is not None and mqtt[0] < wifi[0]:
        problems.append("the broker session came up before Wi-Fi")
    return problems
