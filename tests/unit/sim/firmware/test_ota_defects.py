"""The OTA defect switches of the firmware model (hil/device/defects.py): each lets through
exactly what its defect lets through, and the defaults keep the checks."""

from __future__ import annotations

import asyncio
import json

import pytest

from hil.services.ota import tampered
from hil.sim.firmware.ota import OtaFailed, OtaWriter, download_to, next_update_partition
from hil.sim.flash import SpiFlash
from tests.unit.sim.firmware.test_ota import (
    FACTORY,
    OTA_0,
    OTA_1,
    TABLE,
    ImageServer,
    image,
    request_for,
)
from tests.unit.sim.firmware.test_ota import (
    flash as flash,  # the fixture: a chip with the table and a factory app
)


def write_all(writer: OtaWriter, data: bytes) -> None:
    writer.begin()
    writer.write(0, data)


def test_without_the_hash_check_an_image_changed_after_signing_is_accepted(flash: SpiFlash) -> None:
    signed = image("1.1.0")
    served = tampered(signed)
    checked = OtaWriter(flash, OTA_0, request_for(signed))
    write_all(checked, served)
    with pytest.raises(OtaFailed, match="sha256 mismatch"):
        checked.end()
    unchecked = OtaWriter(flash, OTA_0, request_for(signed), check_sha256=False)
    write_all(unchecked, served)
    unchecked.end()  # the defect: esp_image_verify alone finds nothing wrong
    assert flash.read(OTA_0.offset, len(served)) == served


def test_without_the_hash_check_the_image_checks_still_run(flash: SpiFlash) -> None:
    data = image("1.1.0", chip_id=9)
    writer = OtaWriter(flash, OTA_0, request_for(image("1.1.0")), check_sha256=False)
    write_all(writer, data)
    with pytest.raises(OtaFailed, match="mismatch chip ID"):
        writer.end()


@pytest.mark.parametrize(("resume", "starts"), [(True, [None, 30000]), (False, [None, None])])
def test_a_dropped_download_resumes_or_starts_over(flash: SpiFlash, resume: bool, starts: list[int | None]) -> None:
    data = image("1.1.0")
    server = ImageServer(data, drops=(30000,))

    async def scenario() -> OtaWriter:
        async with server:
            req = request_for(data, url=server.url)
            writer = OtaWriter(flash, OTA_0, req)
            await download_to(writer, req, ssl_context=None, timeout_s=5, retry_delay_s=0, resume=resume)
            return writer

    asyncio.run(scenario()).end()
    assert [s.range_start for s in server.served] == starts
    assert server.total_sent == len(data) + (0 if resume else 30000)
    assert flash.read(OTA_0.offset, len(data)) == data


def test_a_fixed_slot_works_once_then_conflicts_with_the_running_app() -> None:
    assert next_update_partition(TABLE, FACTORY, fixed_slot=True) == OTA_0
    assert next_update_partition(TABLE, OTA_1, fixed_slot=True) == OTA_0
    with pytest.raises(OtaFailed, match="partition conflict: ota_0 is the running app"):
        next_update_partition(TABLE, OTA_0, fixed_slot=True)
    assert next_update_partition(TABLE, OTA_0) == OTA_1


def test_with_the_signature_optional_an_unsigned_request_passes_and_a_bad_signature_does_not() -> None:
    from hil.sim.firmware.ota import OtaRequest, parse_ota_request, precheck
    from tests.unit.sim.firmware.test_ota import OTHER_SIGNER, PUBKEY

    good = request_for(image("1.1.0"))
    unsigned = {"version": good.version, "url": good.url, "size": good.size, "sha256": good.sha256}
    payload = json.dumps(unsigned).encode()
    rejected = parse_ota_request(payload)
    assert not isinstance(rejected, OtaRequest) and "missing field(s): signature" in rejected.reason
    parsed = parse_ota_request(payload, require_signature=False)
    assert isinstance(parsed, OtaRequest) and parsed.signature == ""
    checks = {"running_version": "1.0.0", "partition_size": OTA_0.size, "pubkey_pem": PUBKEY}
    assert precheck(parsed, **checks) == "signature is empty"  # the baseline, had it parsed
    assert precheck(parsed, **checks, signature_optional=True) is None
    forged = request_for(image("1.1.0"), signer=OTHER_SIGNER)
    assert "does not verify" in (precheck(forged, **checks, signature_optional=True) or "")


def test_with_the_size_type_unchecked_a_string_size_parses_and_the_precheck_dies_on_it() -> None:
    from dataclasses import asdict

    from hil.sim.firmware.ota import OtaRequest, parse_ota_request, precheck
    from tests.unit.sim.firmware.test_ota import PUBKEY

    good = request_for(image("1.1.0"))
    payload = json.dumps({**asdict(good), "size": str(good.size)}).encode()
    rejected = parse_ota_request(payload)
    assert not isinstance(rejected, OtaRequest) and rejected.reason == "field 'size' must be an integer"
    parsed = parse_ota_request(payload, check_size_type=False)
    assert isinstance(parsed, OtaRequest)
    with pytest.raises(TypeError):  # the handler dies: no ota/status at all
        precheck(parsed, running_version="1.0.0", partition_size=OTA_0.size, pubkey_pem=PUBKEY)


def test_with_the_size_limit_exclusive_exactly_the_partition_size_is_refused() -> None:
    from dataclasses import replace

    from hil.sim.firmware.ota import precheck
    from tests.unit.sim.firmware.test_ota import PUBKEY

    edge = replace(request_for(image("1.1.0")), size=OTA_0.size)
    checks = {"running_version": "1.0.0", "partition_size": OTA_0.size, "pubkey_pem": PUBKEY}
    assert precheck(edge, **checks) is None
    assert "exceeds the OTA partition" in (precheck(edge, **checks, size_limit_exclusive=True) or "")
    assert "exceeds the OTA partition" in (precheck(replace(edge, size=OTA_0.size + 1), **checks) or "")
