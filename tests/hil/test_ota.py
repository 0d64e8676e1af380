"""OTA and rollback (the AWS IoT Device Tester cases that matter most), end to end.

Updates go *to* the firmware under test: ``update`` rebuilds the session's recipe at a
newer version (``hil.firmware.catalog.update_image``), so a defect in how a new image confirms
itself is carried by the image the device updates to, as in a real release.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil.device import contract
from hil.firmware.catalog import cached_build, update_image
from hil.images.partitions import TWO_OTA_TABLE
from hil.reporting.charts import Instant, phases, timeline_chart
from hil.reporting.report import attach_svg
from hil.services.ota import FAILS_ITS_CHECKS, REJECTED_AT_ONCE, bad_update
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e, pytest.mark.destructive]

OTA_SLOT = TWO_OTA_TABLE.by_label("ota_0")
RESUME = re.compile(r"bytes=(\d+)-")
WRONG_WIFI = "not-the-lab-password"


@pytest.fixture(scope="module")
def images() -> Path:
    return cached_build()


@pytest.fixture(scope="module")
def update(hil_session) -> Callable[..., bytes]:
    """update(version, **params): the firmware under test, built as that version."""
    return functools.partial(update_image, hil_session.firmware().choice)


@pytest.fixture
def served(ota_server) -> Iterator[Callable[[], list[str | None]]]:
    """The Range headers of this test's downloads; a cut left armed and a throttle are
    lifted after."""
    before = len(ota_server.requests)
    yield lambda: [rng for _, rng in ota_server.requests[before:]]
    ota_server.drop_next_after(None)
    ota_server.throttle(None)


@pytest.fixture
def refused(dut, mqtt, hil_session) -> Iterator[object]:
    """The device, for a test of an update it must refuse. Should it not end in
    ``rejected`` or ``failed`` (an image with the defect installs it, or is still at it),
    the session's firmware is put back, so the next case runs on the firmware under test
    and not on the image this one let in."""
    mark = mqtt.mark()
    yield dut
    seen = states(mqtt, dut.device_id, mark)
    if not seen or seen[-1] not in ("rejected", "failed"):
        hil_session.restore()


def selftest_s(hil_session) -> float:
    return setting(hil_session, "ota_selftest_timeout_s")


def boot_count_now(mqtt, device: str) -> int:
    """The boot of the next reading."""
    return mqtt.wait_for(contract.sensors_topic(device), since=mqtt.mark(), timeout=10)[0].json()["boot_count"]


def alert(mqtt, device: str, code: str, since: int, timeout: float = 10) -> dict:
    """The first alert ``code`` since ``since``, with the level the contract gives it."""
    raised = mqtt.wait_for(contract.alerts_topic(device), lambda m: m.json()["code"] == code, since=since, timeout=timeout)[0].json()
    assert raised["level"] == contract.ALERT_LEVEL_BY_CODE[code], f"alert {code} at level {raised['level']!r}: {raised}"
    return raised


def later(version: str, steps: int = 1) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) + steps}.0"


def states(mqtt, device: str, since: int) -> list[str]:
    return [m.json()["state"] for m in mqtt.collect(contract.ota_status_topic(device), since=since)]


OTA_VERDICTS = ("success", "rejected", "failed", "rolled_back")


def wait_state(mqtt, device: str, state: str, since: int, timeout: float = 60) -> dict:
    """The first ``state`` on ota/status since ``since``; for a verdict, the first verdict,
    which must be ``state``: a device that already said no is not waited on for a yes."""
    wanted = OTA_VERDICTS if state in OTA_VERDICTS else (state,)
    status = mqtt.wait_for(
        contract.ota_status_topic(device), lambda m: m.json()["state"] in wanted, since=since, timeout=timeout
    )[0].json()
    assert status["state"] == state, f"OTA ended in {status['state']!r}, not {state!r}: {status}"
    return status


def online(mqtt, device: str, since: int, timeout: float = 60, version: str | None = None) -> dict:
    """The first online status since ``since`` (of ``version``, if given)."""
    return mqtt.wait_for(
        contract.status_topic(device),
        lambda m: m.json()["state"] == "online" and version in (None, m.json()["version"]),
        since=since,
        timeout=timeout,
    )[0].json()


def offer(mqtt, ota_server, ota_signer, device: str, image: bytes, version: str, name: str) -> int:
    """Publish a signed update for ``image``; returns the MQTT mark from just before."""
    mark = mqtt.mark()
    mqtt.publish(contract.ota_update_topic(device), ota_signer.request(image, ota_server.add(name, image), version))
    return mark


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.4", "C6.6", "C6.7", "C2.2", "C2.9", "C4.12")
def test_a_newer_signed_image_is_installed_and_confirmed(restore_firmware, mqtt, ota_server, ota_signer, images, served) -> None:
    """downloading, verifying, rebooting, success, each naming 1.1.0; one download of the
    whole image; the new app boots as 1.1.0, logs `ota: app marked valid` and comes online
    as 1.1.0 with reason SW."""
    dut = restore_firmware
    image = (images / "v1_1_0.bin").read_bytes()
    mark, serial = mqtt.mark(), dut.console.mark()
    try:
        mqtt.publish(contract.ota_update_topic(dut.device_id), ota_signer.request(image, ota_server.add("new.bin", image), "1.1.0"))
        wait_state(mqtt, dut.device_id, "success", mark)
        statuses = [m.json() for m in mqtt.collect(contract.ota_status_topic(dut.device_id), since=mark)]
        assert [(s["state"], s["version"]) for s in statuses] == [
            (state, "1.1.0") for state in ("downloading", "verifying", "rebooting", "success")
        ], statuses
        assert served() == [None], f"downloads: {served()}"
        booted = dut.console.expect(contract.APP_VERSION, timeout=5, since=serial)
        assert booted["version"] == "1.1.0", booted[0]
        dut.console.expect(contract.OTA_MARKED_VALID, timeout=5, since=serial)
        status = online(mqtt, dut.device_id, mark)
        assert (status["version"], status["reset_reason"]) == ("1.1.0", "SW"), status
    finally:
        attach_ota_timeline(dut, mqtt, mark, serial)


def attach_ota_timeline(dut, mqtt, mark: int, serial) -> None:
    """The OTA's phases as the device reported them, and what its serial port said when
    (boot of the new app, marked valid, rollback), on the report."""
    statuses = [(m.at, m.json()["state"]) for m in mqtt.collect(contract.ota_status_topic(dut.device_id), since=mark)]
    if not statuses:
        return
    lines = [
        Instant("serial", line.monotonic, label)
        for line in dut.console.records(serial)
        for label, pattern in (
            ("boot", contract.APP_VERSION),
            ("marked valid", contract.OTA_MARKED_VALID),
            ("rollback", contract.OTA_ROLLBACK),
        )
        if pattern.search(line.text)
    ]
    attach_svg("OTA timeline", timeline_chart(phases("ota status", statuses), lines, title="OTA: download, reboot, self-test, verdict"))


GUARDED_REJECTS = {
    "oversize": "ota_size_late",
    "corrupt signature": "skips_signature",
    "untrusted signer": "skips_signature",
    "unsigned": "ota_unsigned_accepted",
    "same version": "accepts_downgrade",
    "lower version": "accepts_downgrade",
}
GUARDED_CHECKS = {"corrupt after signing": "ota_no_hash_check"}


def variants(names: tuple[str, ...], guarded: dict[str, str]) -> list[object]:
    return [pytest.param(name, marks=pytest.mark.guards(guarded[name])) if name in guarded else name for name in names]


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.1", "C6.2", "C6.3", "C2.9", "C4.12")
@pytest.mark.parametrize("variant", variants(REJECTED_AT_ONCE, GUARDED_REJECTS))
def test_a_bad_update_is_rejected_and_the_device_stays(refused, console, mqtt, ota_server, ota_signer, images, served, variant) -> None:
    """Only `rejected` (no `downloading` first), naming the offered version, with a reason,
    said on the serial port as an `E ota:` line; nothing downloaded; the same boot goes on."""
    dut = refused
    image = (images / "v1_1_0.bin").read_bytes()
    bad = bad_update(variant, image, running_version=dut.version, partition_size=OTA_SLOT.size)
    request = bad.request(ota_signer, ota_server.add(f"bad-{variant.replace(' ', '-')}.bin", bad.served), "1.1.0")
    boot = boot_count_now(mqtt, dut.device_id)
    mark, since = mqtt.mark(), console.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), request)
    rejected = wait_state(mqtt, dut.device_id, "rejected", mark, timeout=15)
    assert rejected["reason"] and rejected["version"] == request["version"], rejected
    console.expect(contract.OTA_ERROR, timeout=5, since=since)
    after = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    assert {m.json()["boot_count"] for m in after} == {boot}, f"the device rebooted on a {variant} update"
    assert states(mqtt, dut.device_id, mark) == ["rejected"]
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], f"the device rebooted on a {variant} update"
    assert served() == [], f"the device downloaded a {variant} update it should have rejected at once"


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.5", "C4.12")
@pytest.mark.parametrize("variant", variants(FAILS_ITS_CHECKS, GUARDED_CHECKS))
def test_an_image_that_fails_its_checks_is_not_installed(refused, mqtt, ota_server, ota_signer, update, variant) -> None:
    """"corrupt after signing" is self-consistent (checksum and appended hash redone):
    only the comparison with the signed SHA-256 of the request can refuse it."""
    dut = refused
    image = update(later(dut.version))
    bad = bad_update(variant, image, running_version=dut.version, partition_size=OTA_SLOT.size)
    request = bad.request(ota_signer, ota_server.add(f"check-{variant.replace(' ', '-')}.bin", bad.served), later(dut.version))
    mark = mqtt.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), request)
    failed = wait_state(mqtt, dut.device_id, "failed", mark, timeout=30)
    assert failed["reason"] and failed["version"] == later(dut.version)
    assert "rebooting" not in states(mqtt, dut.device_id, mark)
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], f"the device rebooted after a {variant} image"


@pytest.mark.requires("ota")
@pytest.mark.guards("ota_no_resume")
@pytest.mark.clause("C6.4", "C6.7")
def test_a_dropped_download_resumes_with_a_range_request_and_installs(
    restore_firmware, mqtt, ota_server, ota_signer, update, served
) -> None:
    dut = restore_firmware
    version = later(dut.version)
    ota_server.drop_next_after(40_000)
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version), version, "resume.bin")
    wait_state(mqtt, dut.device_id, "success", mark)
    assert states(mqtt, dut.device_id, mark) == ["downloading", "verifying", "rebooting", "success"]
    first, *resumed = served()
    assert first is None and len(resumed) == 1, f"requests: {[first, *resumed]}"
    resumed_at = RESUME.fullmatch(resumed[0] or "")
    assert resumed_at and 0 < int(resumed_at.group(1)) <= 40_000, f"resumed with Range {resumed[0]!r}, not from the cut"
    assert online(mqtt, dut.device_id, mark)["version"] == version


@pytest.mark.requires("ota")
@pytest.mark.guards("ota_fixed_slot", "ota_string_versions")
@pytest.mark.clause("C6.1", "C6.4", "C6.6", "C6.7", "C4.12")
def test_two_updates_back_to_back_with_versions_compared_part_by_part(
    restore_firmware, mqtt, ota_server, ota_signer, update, served
) -> None:
    """N.9.0, then N.10.0: both succeed (10 > 9 as numbers, though "10" < "9" as text).
    Then, under N.10.0, N.9.0 (older as numbers, newer as text) and N.10.0 again (equal)
    are each refused at once: `rejected` only, nothing downloaded, the same boot goes on."""
    dut = restore_firmware
    major = int(dut.version.split(".")[0]) + 1
    first, second = f"{major}.9.0", f"{major}.10.0"
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(first), first, "first.bin")
    assert wait_state(mqtt, dut.device_id, "success", mark)["version"] == first
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(second), second, "second.bin")
    assert wait_state(mqtt, dut.device_id, "success", mark)["version"] == second, f"{second} refused under {first}"
    assert states(mqtt, dut.device_id, mark) == ["downloading", "verifying", "rebooting", "success"]
    assert online(mqtt, dut.device_id, mark)["version"] == second
    for stale in (first, second):
        downloads = len(served())
        boot = boot_count_now(mqtt, dut.device_id)
        mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(stale), stale, f"stale-{stale}.bin")
        rejected = wait_state(mqtt, dut.device_id, "rejected", mark, timeout=15)
        assert rejected["version"] == stale and rejected["reason"], rejected
        after = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
        assert {m.json()["boot_count"] for m in after} == {boot}, f"rebooted on {stale} offered under {second}"
        assert states(mqtt, dut.device_id, mark) == ["rejected"]
        assert len(served()) == downloads, f"downloaded {stale}, offered under {second}"


@pytest.mark.requires("ota", "power_control")
@pytest.mark.guards("never_valid")
@pytest.mark.clause("C6.7", "C6.9")
def test_a_confirmed_update_stays_across_a_power_cycle_and_a_reset(
    restore_firmware, mqtt, ota_server, ota_signer, update, power
) -> None:
    dut = restore_firmware
    version = later(dut.version)
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version), version, "confirmed.bin")
    wait_state(mqtt, dut.device_id, "success", mark)
    cycled = mqtt.mark()
    power.cycle()
    status = online(mqtt, dut.device_id, cycled)
    assert (status["version"], status["reset_reason"]) == (version, "POWERON")
    reset = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "reset"})
    status = online(mqtt, dut.device_id, reset)
    assert (status["version"], status["reset_reason"]) == (version, "SW")
    assert "rolled_back" not in states(mqtt, dut.device_id, mark)


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.9", "C2.9", "C4.8")
def test_an_image_that_crashes_on_boot_is_rolled_back(restore_firmware, console, mqtt, ota_server, ota_signer, images) -> None:
    dut = restore_firmware
    image = (images / "crash_on_boot.bin").read_bytes()
    mark, since = mqtt.mark(), console.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), ota_signer.request(image, ota_server.add("crash.bin", image), "1.1.0"))
    rolled = wait_state(mqtt, dut.device_id, "rolled_back", mark, timeout=90)
    assert rolled["version"] == "1.1.0"
    console.expect(contract.OTA_ROLLBACK, timeout=10, since=since)
    alert(mqtt, dut.device_id, "ota_rolled_back", mark)
    back = [m.json() for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert back and back[-1]["version"] == dut.version
    assert "success" not in states(mqtt, dut.device_id, mark)


@pytest.mark.requires("ota")
@pytest.mark.guards("valid_no_selftest", "selftest_timeout_ignored")
@pytest.mark.clause("C6.8", "C6.9", "C2.9", "C4.8")
def test_an_update_that_cannot_connect_is_rolled_back(restore_firmware, console, mqtt, ota_server, ota_signer, update, hil_session) -> None:
    """IDT: the new image is built with bad Wi-Fi credentials; its self-test fails once
    `ota_selftest_timeout_s` has passed (not before it, nor long after: the restart comes
    between 1 and 1.5 timeouts after the reset that started the new app), it is marked invalid and
    the old app reports the rollback."""
    dut = restore_firmware
    timeout_s = selftest_s(hil_session)
    version = later(dut.version)
    since = console.mark()
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version, wifi_pass=WRONG_WIFI), version, "offline.bin")
    console.expect(contract.WIFI_WARNING, timeout=30, since=since)
    console.expect(contract.OTA_ROLLBACK, timeout=timeout_s * 1.5 + 30, since=since)
    rolled = wait_state(mqtt, dut.device_id, "rolled_back", mark, timeout=60)
    assert rolled["version"] == version
    alert(mqtt, dut.device_id, "ota_rolled_back", mark)
    assert online(mqtt, dut.device_id, mark, version=dut.version)["reset_reason"] == "SW"  # marked invalid, restarted
    assert "success" not in states(mqtt, dut.device_id, mark)
    records = dut.console.records(since)
    trial = next(r for r in records if (m := contract.APP_VERSION.search(r.text)) and m["version"] == version)
    # The self-test's clock starts when the new app starts, somewhere between the ROM's
    # reset line and the app's version line; from the reset line the restart can never
    # come early, from the version line it can by the app's start-up time.
    boot = [r for r in records if r.monotonic <= trial.monotonic and contract.ROM_RESET.search(r.text)][-1]
    restart = next(r for r in records if r.monotonic > trial.monotonic and contract.ROM_RESET.search(r.text))
    took = restart.monotonic - boot.monotonic
    assert timeout_s <= took <= timeout_s * 1.5, f"the failed self-test restarted {took:.1f} s after boot; ota_selftest_timeout_s is {timeout_s}"


@pytest.mark.requires("ota")
@pytest.mark.guards("no_watchdog")
@pytest.mark.clause("C6.9", "C2.10", "C4.8")
def test_an_update_that_hangs_is_rolled_back_by_the_watchdog(restore_firmware, console, mqtt, ota_server, ota_signer, update) -> None:
    dut = restore_firmware
    version = later(dut.version)
    since = console.mark()
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version, hang_at_boot="sensor"), version, "hang.bin")
    console.expect(contract.TASK_WDT, timeout=60, since=since)
    rolled = wait_state(mqtt, dut.device_id, "rolled_back", mark, timeout=60)
    assert rolled["version"] == version
    alert(mqtt, dut.device_id, "ota_rolled_back", mark)
    assert online(mqtt, dut.device_id, mark, version=dut.version)["reset_reason"] == "TASK_WDT"
    assert "success" not in states(mqtt, dut.device_id, mark)


@pytest.mark.requires("ota", "power_control")
@pytest.mark.clause("C6.10", "C6.9")
@pytest.mark.parametrize("cut", ["mid-download", "at the image check", "after the otadata switch", "during the trial boot"])
def test_a_power_cut_during_an_update_leaves_a_bootable_device(
    restore_firmware, console, mqtt, ota_server, ota_signer, update, power, served, cut
) -> None:
    """Contract §6.6: whenever the power goes, the device comes back on the old or the new
    version, never neither. Each cut waits for the device's own progress, then cuts: half
    the image served (the slot is being written), `verifying` (image check, then the boot
    partition switch), `rebooting` (otadata says NEW), the new app's first line (on trial)."""
    dut = restore_firmware
    version = later(dut.version)
    # The trial image cannot join the AP, so it is still on trial (PENDING_VERIFY) when cut.
    image = update(version, wifi_pass=WRONG_WIFI) if cut == "during the trial boot" else update(version)
    name = f"cut-{cut.replace(' ', '-')}.bin"
    if cut == "mid-download":
        ota_server.throttle(64_000)  # ~1.5 s of download: the slot is being written when cut
    since = console.mark()
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, image, version, name)
    if cut == "mid-download":
        ota_server.wait_sent(name, len(image) // 2, timeout=30)
    elif cut == "during the trial boot":
        assert console.expect(contract.APP_VERSION, timeout=30, since=since).group("version") == version
    else:
        wait_state(mqtt, dut.device_id, {"at the image check": "verifying", "after the otadata switch": "rebooting"}[cut], mark, timeout=30)
    cycled = mqtt.mark()
    power.cycle()
    status = online(mqtt, dut.device_id, cycled)
    assert status["version"] in (dut.version, version), f"came back on {status['version']} after a cut {cut}"
    if status["version"] == version:  # the new image made it: it must confirm itself
        wait_state(mqtt, dut.device_id, "success", mark)
    if cut == "mid-download":
        assert status["version"] == dut.version and "rolled_back" not in states(mqtt, dut.device_id, mark)
    if cut == "during the trial boot":
        assert status["version"] == dut.version
        assert wait_state(mqtt, dut.device_id, "rolled_back", cycled)["version"] == version
