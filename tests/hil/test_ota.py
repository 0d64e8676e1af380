"""OTA and rollback (the AWS IoT Device Tester cases that matter most), end to end.

Updates go *to* the firmware under test: ``update`` rebuilds the session's recipe at a
newer version (``hil.firmware.catalog.update_image``), so a defect in how a new image confirms
itself is carried by the image the device updates to, as in a real release.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil.bme280.faults import Fault
from hil.device import contract
from hil.firmware.catalog import cached_build, update_image
from hil.images.partitions import TWO_OTA_TABLE
from hil.reporting.charts import Instant, phases, timeline_chart
from hil.reporting.report import attach_svg
from hil.services.ota import FAILS_ITS_CHECKS, REJECTED_AT_ONCE, OtaServer, bad_update
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
    or come back online on another version (a refused image booted after all), the
    session's firmware is put back, so the next case runs on the firmware under test and
    not on the image this one let in."""
    mark = mqtt.mark()
    yield dut
    seen = states(mqtt, dut.device_id, mark)
    versions = [m.json().get("version") for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    if not seen or seen[-1] not in ("rejected", "failed") or versions[-1:] not in ([], [dut.version]):
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
    problems = contract.validate_payload("alerts", raised, device_id=device)
    assert problems == [], f"alert {code}: {problems}: {raised}"
    return raised


def later(version: str, steps: int = 1) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) + steps}.0"


def patch_later(version: str) -> str:
    """The next patch release of ``version`` (1.0.0 -> 1.0.1): newer in its last part only."""
    major, minor, patch, *_ = [*version.split("."), "0", "0"]
    return f"{major}.{minor}.{int(patch) + 1}"


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
@pytest.mark.guards("ota_silent_download")
@pytest.mark.clause("C6.4", "C6.6", "C6.7", "C2.2", "C2.9", "C4.12")
def test_a_newer_signed_image_is_installed_and_confirmed(restore_firmware, mqtt, ota_server, ota_signer, images, served) -> None:
    """downloading, verifying, rebooting, success, each naming 1.1.0; one download of the
    whole image, with OTA progress (`I ota:`) on the serial port while it runs; the new
    app boots as 1.1.0, logs `ota: app marked valid` and comes online as 1.1.0 with
    reason SW."""
    dut = restore_firmware
    image = (images / "v1_1_0.bin").read_bytes()
    # A 2 s download, so that the serial port can be read while it is half done; the
    # first second leaves a line printed when the download began ample time to arrive.
    ota_server.throttle(len(image) // 2)
    mark, serial = mqtt.mark(), dut.console.mark()
    try:
        mqtt.publish(contract.ota_update_topic(dut.device_id), ota_signer.request(image, ota_server.add("new.bin", image), "1.1.0"))
        ota_server.wait_sent("new.bin", len(image) // 2, timeout=30)
        said = dut.console.lines(serial)
        assert any(contract.OTA_INFO.search(line) for line in said), f"no `I ota:` progress line with half the image downloaded: {said}"
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
    "oversize": ("ota_size_late",),
    "corrupt signature": ("skips_signature",),
    "untrusted signer": ("skips_signature",),
    "unsigned": ("ota_unsigned_accepted",),
    "same version": ("accepts_downgrade",),
    "lower version": ("accepts_downgrade",),
}
GUARDED_CHECKS = {
    "corrupt before signing": ("ota_failed_as_warning",),
    "corrupt after signing": ("ota_no_hash_check", "ota_failed_left_bootable"),
    "partition size": ("ota_size_edge",),
}


def variants(names: tuple[str, ...], guarded: dict[str, tuple[str, ...]], clauses: dict[str, tuple[str, ...]] | None = None) -> list[object]:
    """``names`` as parameters, each with the defects it guards and any clauses it alone asserts."""
    clauses = clauses or {}
    return [
        pytest.param(
            name,
            marks=[
                *([pytest.mark.guards(*guarded[name])] if name in guarded else []),
                *([pytest.mark.clause(*clauses[name])] if name in clauses else []),
            ],
        )
        for name in names
    ]


def refused_at_once(dut, console, mqtt, served, payload: bytes | dict, what: str) -> dict:
    """Offer ``payload``, which the device must refuse at once: only `rejected` (no
    `downloading` first), with a reason, said on the serial port as an `E ota:` line;
    nothing downloaded; the same boot goes on. Returns the `rejected` status."""
    boot = boot_count_now(mqtt, dut.device_id)
    mark, since = mqtt.mark(), console.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), payload)
    rejected = wait_state(mqtt, dut.device_id, "rejected", mark, timeout=15)
    assert rejected["reason"], rejected
    console.expect(contract.OTA_ERROR, timeout=5, since=since)
    after = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    assert {m.json()["boot_count"] for m in after} == {boot}, f"the device rebooted on {what}"
    assert states(mqtt, dut.device_id, mark) == ["rejected"]
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], f"the device rebooted on {what}"
    assert served() == [], f"the device downloaded {what}, which it should have rejected at once"
    return rejected


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
    rejected = refused_at_once(dut, console, mqtt, served, request, f"a {variant} update")
    assert rejected["version"] == request["version"], rejected


MALFORMED_OFFERS = (
    "malformed JSON", "missing url", "size as a string", "size as a boolean", "non-hex sha256", "empty version",
    "non-http url", "size zero", "negative size", "empty signature", "signature not base64", "signature not DER",
)  # fmt: skip
GUARDED_MALFORMED = {
    "size as a string": ("ota_size_untyped",),
    "size zero": ("ota_size_sign_unchecked",),
    "negative size": ("ota_size_sign_unchecked",),
    "signature not base64": ("ota_signature_garbage_accepted",),
    "signature not DER": ("ota_signature_garbage_accepted",),
}


def malformed(case: str, request: dict) -> bytes:
    """A good signed ``request`` with one field broken as ``case`` says."""
    broken = {
        "malformed JSON": None,  # the request with its closing brace lost
        "missing url": {key: value for key, value in request.items() if key != "url"},
        "size as a string": {**request, "size": str(request["size"])},
        # JSON's true is no integer, though a language whose bool is an int may take it for 1.
        "size as a boolean": {**request, "size": True},
        "non-hex sha256": {**request, "sha256": request["sha256"][:-1] + "z"},  # still 64 characters
        "empty version": {**request, "version": ""},
        "non-http url": {**request, "url": re.sub(r"^https?", "ftp", request["url"])},
        # No image has no bytes, nor fewer than none (C6.2: fields invalid).
        "size zero": {**request, "size": 0},
        "negative size": {**request, "size": -request["size"]},
        # An empty signature is no signature ("unsigned" leaves the field out; this one has it).
        "empty signature": {**request, "signature": ""},
        # Not a signature at all: undecodable, and decodable but no DER ECDSA signature. Only
        # a signature that verifies may pass (C6.2), not one the check could not even read.
        # The undecodable one is the good signature with characters base64 does not have
        # among its digits: a lenient decoder that skips them would find it good.
        "signature not base64": {**request, "signature": request["signature"][:8] + "%%" + request["signature"][8:]},
        "signature not DER": {**request, "signature": base64.b64encode(b"not a DER ECDSA signature").decode()},
    }[case]
    return json.dumps(request).encode()[:-1] if broken is None else json.dumps(broken).encode()


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.2", "C2.9", "C4.12")
@pytest.mark.parametrize("case", variants(MALFORMED_OFFERS, GUARDED_MALFORMED))
def test_an_offer_with_malformed_fields_is_rejected_at_once(refused, console, mqtt, ota_server, ota_signer, images, served, case) -> None:
    """A signed offer of a newer image with one field unusable: refused at once as any
    bad update is (`refused_at_once`); `version` the offered one where it is usable, and
    null (or the empty string offered) where it is not."""
    dut = refused
    image = (images / "v1_1_0.bin").read_bytes()
    request = ota_signer.request(image, ota_server.add(f"malformed-{case.replace(' ', '-')}.bin", image), "1.1.0")
    rejected = refused_at_once(dut, console, mqtt, served, malformed(case, request), f"an offer with {case}")
    usable = {"malformed JSON": (None, "1.1.0"), "empty version": (None, "")}.get(case, ("1.1.0",))
    assert rejected["version"] in usable, rejected


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.5", "C2.9", "C4.12")
@pytest.mark.parametrize("variant", variants(FAILS_ITS_CHECKS, GUARDED_CHECKS, {"partition size": ("C6.3",)}))
def test_an_image_that_fails_its_checks_is_not_installed(refused, console, mqtt, ota_server, ota_signer, update, variant) -> None:
    """Downloaded, then `failed` with a reason and an `E ota:` line, never `rebooting`,
    no reboot. "partition size" offers exactly the partition's size: not too big (C6.3's
    edge), so not refused at once. "corrupt after signing" is self-consistent (checksum
    and appended hash redone): only the comparison with the signed SHA-256 of the request
    can refuse it, and only its slot could boot; a reset after the `failed` must bring
    back the running version (the slot left unbootable: the boot partition never
    switched to it)."""
    dut = refused
    image = update(later(dut.version))
    bad = bad_update(variant, image, running_version=dut.version, partition_size=OTA_SLOT.size)
    request = bad.request(ota_signer, ota_server.add(f"check-{variant.replace(' ', '-')}.bin", bad.served), later(dut.version))
    mark, since = mqtt.mark(), console.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), request)
    failed = wait_state(mqtt, dut.device_id, "failed", mark, timeout=30)
    assert failed["reason"] and failed["version"] == later(dut.version)
    seen = states(mqtt, dut.device_id, mark)
    assert seen[0] == "downloading" and "rebooting" not in seen, seen
    console.expect(contract.OTA_ERROR, timeout=5, since=since)
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], f"the device rebooted after a {variant} image"
    if variant == "corrupt after signing":
        reset = mqtt.mark()
        mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "reset"})
        back = online(mqtt, dut.device_id, reset)
        assert back["version"] == dut.version, f"a reset after the `failed` booted {back['version']}: the refused slot was left bootable"
        assert "success" not in states(mqtt, dut.device_id, mark)


@pytest.mark.requires("ota")
@pytest.mark.clause("C6.3", "C6.4", "C6.6", "C6.7")
def test_an_image_that_fills_the_ota_partition_exactly_is_installed(restore_firmware, mqtt, ota_server, ota_signer, update) -> None:
    """C6.3 refuses a size that *exceeds* the OTA partition, so an image of exactly its size
    installs: the newer image followed by erased flash (0xFF) up to the slot's end, the
    padding part of what is signed and downloaded. Downloaded, verified, rebooted into and
    confirmed; not refused at the download's start (esp_ota_begin's own size check)."""
    dut = restore_firmware
    version = later(dut.version)
    built = update(version)
    image = built + b"\xff" * (OTA_SLOT.size - len(built))
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, image, version, "fills-the-slot.bin")
    wait_state(mqtt, dut.device_id, "success", mark)
    assert states(mqtt, dut.device_id, mark) == ["downloading", "verifying", "rebooting", "success"]
    assert online(mqtt, dut.device_id, mark)["version"] == version


def closed_port() -> int:
    """A loopback port nothing listens on: bound by the OS for us, then let go."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.requires("ota")
@pytest.mark.guards("ota_download_error_unreported")
@pytest.mark.clause("C6.4", "C6.5", "C2.9", "C4.12")
@pytest.mark.parametrize("where", ["not found", "unreachable"])
def test_an_update_whose_download_fails_is_reported_failed(refused, console, mqtt, ota_server, ota_signer, update, where) -> None:
    """A good signed offer whose image cannot be fetched: the URL answers 404, or nothing
    listens there. `downloading`, then `failed` with a reason (§6: any failure of the
    download or of the checks), an `E ota:` line, never `rebooting`, and the same boot goes on."""
    dut = refused
    version = later(dut.version)
    image = update(version)
    request = ota_signer.request(image, ota_server.url("never-added.bin"), version)
    if where == "unreachable":
        request["url"] = f"http://127.0.0.1:{closed_port()}/image.bin"
    boot = boot_count_now(mqtt, dut.device_id)
    mark, since = mqtt.mark(), console.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), request)
    failed = wait_state(mqtt, dut.device_id, "failed", mark, timeout=60)
    assert failed["reason"] and failed["version"] == version, failed
    seen = states(mqtt, dut.device_id, mark)
    assert seen[0] == "downloading" and "rebooting" not in seen, seen
    console.expect(contract.OTA_ERROR, timeout=5, since=since)
    after = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    assert {m.json()["boot_count"] for m in after} == {boot}, f"the device rebooted after a download {where}"


@pytest.mark.requires("ota")
@pytest.mark.guards("ota_no_resume", "ota_patch_ignored")
@pytest.mark.clause("C6.4", "C6.7", "C6.1")
def test_a_dropped_download_resumes_with_a_range_request_and_installs(
    restore_firmware, mqtt, ota_server, ota_signer, update, served
) -> None:
    """Cut after 40 000 bytes: one more request, with a Range from no further than the cut,
    and the image installs. The image is the next patch release (newer in its last part
    only: C6.1 compares every part, so a patch release is an update like any other)."""
    dut = restore_firmware
    version = patch_later(dut.version)
    ota_server.drop_next_after(40_000)
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version), version, "resume.bin")
    wait_state(mqtt, dut.device_id, "success", mark)
    assert states(mqtt, dut.device_id, mark) == ["downloading", "verifying", "rebooting", "success"]
    first, *resumed = served()
    assert first is None and len(resumed) == 1, f"requests: {[first, *resumed]}"
    resumed_at = RESUME.fullmatch(resumed[0] or "")
    assert resumed_at and 0 < int(resumed_at.group(1)) <= 40_000, f"resumed with Range {resumed[0]!r}, not from the cut"
    assert online(mqtt, dut.device_id, mark)["version"] == version


@pytest.fixture(scope="module")
def plain_http() -> Iterator[OtaServer]:
    """An image server on loopback speaking plain HTTP (the session's speaks HTTPS where it
    has a CA): C6.4 downloads over either."""
    with OtaServer() as server:
        yield server


@pytest.mark.requires("ota")
@pytest.mark.guards("ota_fixed_slot", "ota_string_versions", "ota_http_refused", "ota_version_parts_each_newer")
@pytest.mark.clause("C6.1", "C6.4", "C6.6", "C6.7", "C4.12")
def test_two_updates_back_to_back_with_versions_compared_part_by_part(
    restore_firmware, mqtt, ota_server, ota_signer, update, served, plain_http
) -> None:
    """N.9.0, then N.10.0: both succeed (10 > 9 as numbers, though "10" < "9" as text); the
    first is served over plain HTTP, the second by the session's server (HTTPS, where the
    session has a CA). Then, under N.10.0, N.9.0 (older as numbers, newer as text) and
    N.10.0 again (equal) are each refused at once: `rejected` only, nothing downloaded, the
    same boot goes on. Last, (N+1).0.0 installs too: newer by its first part, though its
    second is lower than the running one's (parts compared in order, the first that differs
    decides), and the third update, from the last OTA slot, goes back to the first (the next
    slot wraps around)."""
    dut = restore_firmware
    major = int(dut.version.split(".")[0]) + 1
    first, second = f"{major}.9.0", f"{major}.10.0"
    mark = offer(mqtt, plain_http, ota_signer, dut.device_id, update(first), first, "first.bin")
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
    third = f"{major + 1}.0.0"
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(third), third, "third.bin")
    assert wait_state(mqtt, dut.device_id, "success", mark)["version"] == third, f"{third} refused under {second}"
    assert online(mqtt, dut.device_id, mark)["version"] == third


@pytest.mark.requires("ota", "power_control")
@pytest.mark.guards("never_valid", "ota_success_every_boot", "ota_marked_valid_every_boot")
@pytest.mark.clause("C6.7", "C6.9", "C2.9", "C4.12")
def test_a_confirmed_update_stays_across_a_power_cycle_and_a_reset(
    restore_firmware, mqtt, ota_server, ota_signer, update, power
) -> None:
    """The confirmed app boots again after a power cycle and a reset, and neither boot
    says anything of an OTA: `success` and `ota: app marked valid` belong to the self-test
    of a new app (C6.7), once; a boot of an app already valid reports no verdict at all."""
    dut = restore_firmware
    version = later(dut.version)
    offered = dut.console.mark()
    mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version), version, "confirmed.bin")
    wait_state(mqtt, dut.device_id, "success", mark)
    # The trial boot logs `app marked valid` before it publishes `success`, but the serial
    # line can reach the host after the MQTT message (a UART at 115200 Bd behind the boot
    # log, against a publish on the LAN): wait for it, or it is taken for a later boot's.
    # Within 5 s of `success`, as test_a_newer_signed_image_is_installed_and_confirmed.
    dut.console.expect(contract.OTA_MARKED_VALID, timeout=5, since=offered)
    cycled, serial = mqtt.mark(), dut.console.mark()
    power.cycle()
    status = online(mqtt, dut.device_id, cycled)
    assert (status["version"], status["reset_reason"]) == (version, "POWERON")
    reset = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "reset"})
    status = online(mqtt, dut.device_id, reset)
    assert (status["version"], status["reset_reason"]) == (version, "SW")
    assert "rolled_back" not in states(mqtt, dut.device_id, mark)
    # The reset's boot has had its chance to say more: a reading (the sensor half of a
    # self-test), then a `report` answered, which goes out after anything the boot queued
    # before it.
    mqtt.wait_for(contract.sensors_topic(dut.device_id), lambda m: m.json()["boot_count"] == status["boot_count"], since=reset, timeout=15)
    answered = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "report"})
    mqtt.wait_for(contract.command_ack_topic(dut.device_id), lambda m: m.json()["cmd"] == "report", since=answered, timeout=15)
    assert states(mqtt, dut.device_id, cycled) == [], "a boot of the confirmed app reported an OTA verdict again"
    again = [line for line in dut.console.lines(serial) if contract.OTA_MARKED_VALID.search(line)]
    assert again == [], f"a boot of the confirmed app marked itself valid again: {again}"


@pytest.mark.requires("ota")
@pytest.mark.guards("rollback_every_boot", "rollback_alert_without_device_id", "rollback_seq_kept")
@pytest.mark.clause("C6.9", "C2.9", "C4.8")
def test_an_image_that_crashes_on_boot_is_rolled_back(restore_firmware, console, mqtt, ota_server, ota_signer, images) -> None:
    """Rolled back, reported once (`rolled_back`, the alert, the `ota: rollback` line), not
    again at the next boot; then the same update offered again fails again and is
    reported again: a rollback already reported is only quiet until the next update, which
    may well be given the same otadata seq (same slot, from all-invalid otadata)."""
    dut = restore_firmware
    image = (images / "crash_on_boot.bin").read_bytes()
    for attempt in ("crash.bin", "crash-again.bin"):
        mark, since = mqtt.mark(), console.mark()
        mqtt.publish(contract.ota_update_topic(dut.device_id), ota_signer.request(image, ota_server.add(attempt, image), "1.1.0"))
        rolled = wait_state(mqtt, dut.device_id, "rolled_back", mark, timeout=90)
        assert rolled["version"] == "1.1.0", f"{attempt}: {rolled}"
        console.expect(contract.OTA_ROLLBACK, timeout=10, since=since)
        alert(mqtt, dut.device_id, "ota_rolled_back", mark)
        back = [m.json() for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
        assert back and back[-1]["version"] == dut.version
        assert "success" not in states(mqtt, dut.device_id, mark)
        if attempt == "crash.bin":
            reported_once(mqtt, dut)


def reported_once(mqtt, dut) -> None:
    """A rollback already reported is not reported again: after a reset, the boot comes
    online and answers a `report` (its start-up is over) with no `rolled_back` and no
    `ota_rolled_back` alert."""
    reset = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "reset"})
    assert online(mqtt, dut.device_id, reset)["version"] == dut.version
    answered = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "report"})
    mqtt.wait_for(contract.command_ack_topic(dut.device_id), lambda m: m.json()["cmd"] == "report", since=answered, timeout=15)
    assert states(mqtt, dut.device_id, reset) == [], "the rollback was reported again at a later boot"
    again = [m.json() for m in mqtt.collect(contract.alerts_topic(dut.device_id), since=reset) if m.json()["code"] == "ota_rolled_back"]
    assert again == [], f"ota_rolled_back raised again at a later boot: {again}"


def updated_selftest_s(hil_session) -> int:
    """An `ota_selftest_timeout_s` for a config update whose window of 1 to 1.5 timeouts
    holds neither the provisioned value nor the built-in default (C5.9): a self-test timed
    by either of those is told from one timed by the update's."""
    others = (selftest_s(hil_session), contract.CONFIG_INT_SETTINGS["ota_selftest_timeout_s"].default)
    return next(s for s in (10, 8, 12, 30, 40) if not any(s <= other <= 1.5 * s for other in others))


@pytest.mark.requires("ota")
@pytest.mark.guards("valid_no_selftest", "selftest_timeout_ignored")
@pytest.mark.clause("C6.7", "C6.8", "C6.9", "C2.9", "C4.8")
@pytest.mark.parametrize(
    "broken",
    [
        # C5.8: the self-test is timed by a config update's ota_selftest_timeout_s, read at
        # boot from NVS `config` by the new app, not by the provisioned one.
        pytest.param("broker", marks=[pytest.mark.clause("C5.8"), pytest.mark.guards("selftest_timeout_from_provisioning")]),
        # The sensor half of the self-test (C6.7: a sensor read, and the broker connected):
        # the new app reaches the broker, its sensor never answers.
        pytest.param("sensor", marks=[pytest.mark.requires("sensor_emulation"), pytest.mark.guards("ota_selftest_without_sensor")]),
    ],
)
def test_an_update_that_fails_its_self_test_is_rolled_back(
    restore_firmware, console, mqtt, ota_server, ota_signer, update, hil_session, request, broken
) -> None:
    """IDT: the new image cannot pass its self-test: built with bad Wi-Fi credentials (no
    broker), or booted with a sensor that does not answer. The self-test fails once
    `ota_selftest_timeout_s` has passed (not before it, nor long after: its `E ota:` line
    comes between 1 and 1.5 timeouts after boot, on the device's clock), the app is marked
    invalid and the old app reports the rollback. With the broker out of reach, the timeout
    is a config update's (`updated_selftest_s`), applied before the offer; the sensor case
    runs on the provisioned one."""
    dut = restore_firmware  # the provisioned config back afterwards
    timeout_s = selftest_s(hil_session)
    version = later(dut.version)
    since = console.mark()
    if broken == "broker":
        timeout_s = updated_selftest_s(hil_session)
        updated = mqtt.mark()
        mqtt.publish(contract.config_update_topic(dut.device_id), {"ota_selftest_timeout_s": timeout_s})
        acked = mqtt.wait_for(contract.config_status_topic(dut.device_id), since=updated, timeout=10)[0].json()
        assert acked["ok"] is True, acked
        assert online(mqtt, dut.device_id, updated)["reset_reason"] == "SW"  # restarted into it
    if broken == "sensor":
        sensor = request.getfixturevalue("sensor")
        request.addfinalizer(sensor.clear_faults)
        sensor.fault(Fault.NACK.value)
        mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version), version, "no-sensor.bin")
    else:
        mark = offer(mqtt, ota_server, ota_signer, dut.device_id, update(version, wifi_pass=WRONG_WIFI), version, "offline.bin")
        console.expect(contract.WIFI_WARNING, timeout=30, since=since)
    console.expect(contract.OTA_ROLLBACK, timeout=timeout_s * 1.5 + 30, since=since)
    rolled = wait_state(mqtt, dut.device_id, "rolled_back", mark, timeout=60)
    assert rolled["version"] == version
    alert(mqtt, dut.device_id, "ota_rolled_back", mark)
    assert online(mqtt, dut.device_id, mark, version=dut.version)["reset_reason"] == "SW"  # marked invalid, restarted
    assert "success" not in states(mqtt, dut.device_id, mark)
    records = dut.console.records(since)
    trial = next(i for i, r in enumerate(records) if (m := contract.APP_VERSION.search(r.text)) and m["version"] == version)
    # Timed on the device's own clock: the `E ota:` line that announces the failure carries
    # milliseconds since boot, and the self-test's clock started after boot, so that line
    # can never come before the timeout. (Host receive times of serial lines shift with the
    # host's load, by more than this bound's margin: CI saw 19.998 s for 20 s.) The lines
    # are taken in the port's order, not by receive time: the failure line and the ROM
    # banner of the restart right after it can arrive in one read, with one timestamp.
    restart = next(i for i in range(trial + 1, len(records)) if contract.ROM_RESET.search(records[i].text))
    failed = [m for r in records[trial + 1 : restart] if (m := contract.OTA_ERROR.search(r.text))]
    assert failed, "the failed self-test said nothing on the serial port (an `E ota:` line) before its restart"
    took = int(failed[-1]["ms"]) / 1000
    assert timeout_s <= took <= timeout_s * 1.5, f"the self-test failed {took:.1f} s after boot; ota_selftest_timeout_s is {timeout_s}"


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
