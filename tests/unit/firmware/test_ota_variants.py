"""The IDT bad updates of ``hil.services.ota.bad_update``, judged by the firmware model's own
checks (``precheck`` before the download, the image checks after it): each is bad in
exactly the way its name says, and the good request it starts from is not."""

from __future__ import annotations

import hashlib
import json

import pytest

from hil.firmware.catalog import update_image
from hil.images.app import CHIP_ID_ESP32C3, ImageError, check_image, parse_image
from hil.images.partitions import TWO_OTA_TABLE
from hil.services.ota import FAILS_ITS_CHECKS, REJECTED_AT_ONCE, OtaSigner, bad_update, tampered
from hil.sim.firmware.ota import OtaRequest, parse_ota_request, precheck

SLOT = TWO_OTA_TABLE.by_label("ota_0")
RUNNING = "1.0.0"
URL = "http://127.0.0.1:1/x.bin"


@pytest.fixture(scope="module")
def image() -> bytes:
    return update_image(None, "1.1.0")


@pytest.fixture(scope="module")
def signer() -> OtaSigner:
    return OtaSigner()


def judged_before_download(request: dict[str, object], signer: OtaSigner) -> str | None:
    """Why the device refuses the request at once, or None."""
    parsed = parse_ota_request(json.dumps(request).encode())
    if not isinstance(parsed, OtaRequest):
        return parsed.reason
    return precheck(parsed, running_version=RUNNING, partition_size=SLOT.size, pubkey_pem=signer.public_pem)


def judged_after_download(request: dict[str, object], served: bytes) -> str | None:
    """Why the device refuses what it downloaded (size, signed SHA-256, image checks), or None."""
    if len(served) != request["size"]:
        return "size mismatch"
    if hashlib.sha256(served).hexdigest() != request["sha256"]:
        return "sha256 mismatch"
    try:
        check_image(served, flash_offset=SLOT.offset, partition_size=SLOT.size)
    except ImageError as exc:
        return f"invalid image: {exc}"
    return None


def test_the_good_update_they_start_from_passes_every_check(image: bytes, signer: OtaSigner) -> None:
    request = signer.request(image, URL, "1.1.0")
    assert judged_before_download(request, signer) is None
    assert judged_after_download(request, image) is None


@pytest.mark.parametrize("variant", REJECTED_AT_ONCE)
def test_a_bad_request_is_refused_before_the_download(variant: str, image: bytes, signer: OtaSigner) -> None:
    bad = bad_update(variant, image, running_version=RUNNING, partition_size=SLOT.size)
    reason = judged_before_download(bad.request(signer, URL, "1.1.0"), signer)
    expected = {
        "corrupt signature": "signature does not verify",
        "untrusted signer": "signature does not verify",
        "unsigned": "missing field(s): signature",
        "same version": "is not newer",
        "lower version": "is not newer",
        "oversize": "exceeds the OTA partition",
    }[variant]
    assert reason is not None and expected in reason, reason


@pytest.mark.parametrize("variant", FAILS_ITS_CHECKS)
def test_a_bad_image_passes_the_request_checks_and_fails_after_the_download(
    variant: str, image: bytes, signer: OtaSigner
) -> None:
    bad = bad_update(variant, image, running_version=RUNNING, partition_size=SLOT.size)
    request = bad.request(signer, URL, "1.1.0")
    assert judged_before_download(request, signer) is None
    reason = judged_after_download(request, bad.served)
    expected = {
        "corrupt before signing": "invalid image",
        "corrupt after signing": "sha256 mismatch",
        "wrong chip id": "invalid image",
        "one byte": "invalid image",
        "truncated": "invalid image",
        "size mismatch": "size mismatch",
        "partition size": "size mismatch",
    }[variant]
    assert reason is not None and reason.startswith(expected), reason


def test_an_image_tampered_after_signing_checks_itself_as_good(image: bytes) -> None:
    """Only the signed digest can tell it apart: esp_image_verify passes."""
    changed = tampered(image)
    assert changed != image and len(changed) == len(image)
    length = parse_image(image).length
    assert sum(a != b for a, b in zip(changed[: length - 32], image[: length - 32], strict=True)) == 2  # data, checksum
    checked = check_image(changed, flash_offset=SLOT.offset, partition_size=SLOT.size)
    assert checked.checksum_ok and checked.hash_ok


def test_the_wrong_chip_build_is_another_chip_with_a_good_hash(image: bytes) -> None:
    bad = bad_update("wrong chip id", image, running_version=RUNNING, partition_size=SLOT.size)
    parsed = parse_image(bad.served)
    assert parsed.chip_id == 2 != CHIP_ID_ESP32C3 and parsed.hash_ok and parsed.checksum_ok
    assert bad.signed == bad.served


def test_an_unknown_variant_is_named_with_the_known_ones(image: bytes) -> None:
    with pytest.raises(ValueError, match=r"unknown bad update 'sideways'; known: \['corrupt after signing'"):
        bad_update("sideways", image, running_version=RUNNING, partition_size=SLOT.size)
