"""OTA in the reference firmware: what an ESP-IDF app does with esp_ota_ops and esp_https_ota.

DEVICE_CONTRACT.md §5–§6 say what the device must do; SPEC_FACTS.md §3–§5 say how ESP-IDF
does it on flash. The pieces, in the order the firmware's OTA task uses them:

1. ``parse_ota_request`` and ``precheck``: reject a bad ``ota/update`` at once (version
   not newer, size, sha256, signature), before anything is downloaded.
2. ``ota_begin`` / ``OtaWriter``: esp_ota_begin/write/end on the next OTA slot, with NOR
   rules (erase, then program) and the image checks of esp_ota_end.
3. ``download_to``: stream the image over HTTP(S) into the writer, resuming with Range
   after a dropped connection without rewriting a byte.
4. ``set_boot_partition``, ``running_entry_state``, ``mark_app_valid``,
   ``mark_app_invalid``, ``find_rollback``: the otadata side, written exactly as
   esp_ota_ops writes it (a sector erase and a write of the *inactive* sector), so the
   virtual bootloader, and a power cut between any two flash operations, see what they
   would see on a chip.

The injected defects of the contract's negative tests are parameters
(``allow_downgrade``, ``check_signature=False``, ``signature_optional``, ``check_sha256=False``,
``resume=False``, ``fixed_slot``, ``check_size_type=False``, ``size_limit_exclusive``,
``major_minor_only``, ``check_size_positive=False``, ``decode_errors_pass``), not forks of
this code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hil.images.app import (
    IMAGE_MAGIC,
    AppDescriptor,
    AppImage,
    ImageError,
    check_image,
)
from hil.images.otadata import OTADATA_SECTOR, SEQ_ERASED, OtaData, OtaEntry, OtaState
from hil.images.partitions import Partition, PartitionTable
from hil.sim.bootloader import FlashIO
from hil.sim.firmware.http_client import (
    ConnectionLost,
    HttpError,
    ProtocolError,
    TlsError,
    open_range,
    parse_url,
)
from hil.sim.flash import SECTOR_SIZE

APP_DESC_OFFSET = 0x20
"""esp_app_desc_t sits after the image header and the first segment header."""

_APP_DESC_LEN = 256
_VERSION_MAX = 31  # esp_app_desc_t.version is char[32], NUL-terminated
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = ("version", "url", "size", "sha256", "signature")

ProgressFn = Callable[[int, int], None]
"""on_progress(bytes written, total bytes)."""


class OtaFailed(Exception):
    """An OTA step failed; ``reason`` is what the device reports in ``ota/status``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RollbackFailed(OtaFailed):
    """esp_ota_mark_app_invalid_rollback_and_reboot's ESP_ERR_OTA_ROLLBACK_FAILED."""


# -- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OtaRequest:
    """An ``ota/update/{id}`` payload (DEVICE_CONTRACT.md §5), types checked."""

    version: str
    url: str
    size: int
    sha256: str
    """Hex SHA-256 of the whole image, as sent (case preserved)."""
    signature: str
    """Base64 DER ECDSA P-256 signature over the SHA-256 digest."""

    @property
    def digest(self) -> bytes:
        """The 32 digest bytes; ValueError when ``sha256`` is not 64 hex digits."""
        if not _SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 hex digits")
        return bytes.fromhex(self.sha256)


@dataclass(frozen=True)
class OtaRejected:
    """Why a payload is not an OtaRequest; ``version`` when the payload had a usable one."""

    reason: str
    version: str | None = None


def parse_ota_request(
    payload: bytes, *, require_signature: bool = True, check_size_type: bool = True
) -> OtaRequest | OtaRejected:
    """Decode and type-check an ``ota/update`` payload.

    Checks JSON, that all five fields are there with the right types, a non-empty version
    that fits esp_app_desc_t (≤ 31 bytes) and an http(s) URL. Values (version order,
    size, digest format, signature) are ``precheck``'s job. Unknown extra keys are
    ignored, so a server may add fields without bricking the fleet's OTA.
    ``require_signature=False`` is the "signature optional" defect: a request without
    one parses, with an empty ``signature``. ``check_size_type=False`` is the "size taken
    as it comes" defect: a ``size`` that is not an integer gets through, and ``precheck``
    then dies on it (the handler ends with no ``ota/status`` at all).
    """
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return OtaRejected(f"malformed JSON: {exc}")
    if not isinstance(doc, dict):
        return OtaRejected("payload is not a JSON object")
    raw_version = doc.get("version")
    version = raw_version if isinstance(raw_version, str) and raw_version else None
    if not require_signature and "signature" not in doc:
        doc = {**doc, "signature": ""}
    missing = [name for name in _FIELDS if name not in doc]
    if missing:
        return OtaRejected(f"missing field(s): {', '.join(missing)}", version)
    for name in ("version", "url", "sha256", "signature"):
        if not isinstance(doc[name], str):
            return OtaRejected(f"field '{name}' must be a string", version)
    size = doc["size"]
    if check_size_type and (not isinstance(size, int) or isinstance(size, bool)):
        return OtaRejected("field 'size' must be an integer", version)
    if version is None:
        return OtaRejected("field 'version' is empty")
    if len(version.encode()) > _VERSION_MAX:
        return OtaRejected(f"version is longer than {_VERSION_MAX} bytes", version)
    try:
        parse_url(doc["url"])
    except ValueError as exc:
        return OtaRejected(f"bad url: {exc}", version)
    return OtaRequest(
        version=version,
        url=doc["url"],
        size=size,
        sha256=doc["sha256"],
        signature=doc["signature"],
    )


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b``.

    Semantic-ish, for what firmware versions look like: an optional leading "v" is
    dropped, the rest is split on "."; parts are compared left to right, numerically
    when both are decimal numbers ("1.10.0" > "1.9.3"), otherwise as strings
    ("1.2.x" > "1.2.3", "1.2.0-rc1" > "1.2.0": no pre-release rule). A missing part
    counts as "0", so "1.2" == "1.2.0".
    """
    for x, y in zip_longest(_version_parts(a), _version_parts(b), fillvalue="0"):
        if _is_number(x) and _is_number(y):
            xn, yn = int(x), int(y)
            if xn != yn:
                return -1 if xn < yn else 1
        elif x != y:
            return -1 if x < y else 1
    return 0


def _version_parts(version: str) -> list[str]:
    text = version.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    return text.split(".")


def _is_number(part: str) -> bool:
    return part.isascii() and part.isdigit()


def precheck(
    req: OtaRequest,
    *,
    running_version: str,
    partition_size: int,
    pubkey_pem: str | None,
    allow_downgrade: bool = False,
    check_signature: bool = True,
    signature_optional: bool = False,
    compare_as_strings: bool = False,
    check_size: bool = True,
    size_limit_exclusive: bool = False,
    major_minor_only: bool = False,
    check_size_positive: bool = True,
    decode_errors_pass: bool = False,
) -> str | None:
    """Why the request must be rejected before any download, or None if it may proceed.

    In order: the version must be newer than the running one (``allow_downgrade`` is the
    "accepts downgrades" defect), 0 < size ≤ the target partition, sha256 is 64 hex
    digits, and ``signature`` (base64 DER ECDSA P-256) verifies over the digest bytes of
    the request with ``ota_pubkey``; the image itself is hashed and compared after the
    download. A missing or unusable key rejects. ``check_signature=False`` is the
    "skips the signature check" defect; ``signature_optional`` the "an unsigned image is
    a development build, install it" one (a signature, when there is one, is checked).
    """
    # ``compare_as_strings`` is the strcmp defect; ``check_size=False`` leaves the size to
    # esp_ota_begin, after the download has started; ``size_limit_exclusive`` is the ``>=``
    # for ``>`` defect (an image of exactly the partition's size refused); ``major_minor_only``
    # the sscanf("%d.%d") one, ``check_size_positive=False`` the unsigned-only size check, and
    # ``decode_errors_pass`` the "only a failed verification refuses" signature check.
    if compare_as_strings:
        newer = req.version > running_version
    elif major_minor_only:
        newer = compare_versions(_major_minor(req.version), _major_minor(running_version)) > 0
    else:
        newer = compare_versions(req.version, running_version) > 0
    if not allow_downgrade and not newer:
        return f"version {req.version} is not newer than running {running_version}"
    if check_size_positive and req.size <= 0:
        return f"size {req.size} is not positive"
    too_big = req.size >= partition_size if size_limit_exclusive else req.size > partition_size
    if check_size and too_big:
        return f"size {req.size} exceeds the OTA partition ({partition_size} bytes)"
    try:
        digest = req.digest
    except ValueError:
        return "sha256 is not 64 hex digits"
    if not check_signature or (signature_optional and not req.signature):
        return None
    return _signature_problem(digest, req.signature, pubkey_pem, decode_errors_pass=decode_errors_pass)


def _major_minor(version: str) -> str:
    return ".".join(_version_parts(version)[:2])


def _signature_problem(
    digest: bytes, signature_b64: str, pubkey_pem: str | None, *, decode_errors_pass: bool = False
) -> str | None:
    if not pubkey_pem:
        return "no ota_pubkey provisioned; cannot verify the signature"
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return None if decode_errors_pass else "signature is not valid base64"
    if not signature:
        return "signature is empty"
    if decode_errors_pass:
        try:
            utils.decode_dss_signature(signature)
        except ValueError:
            return None  # the defect: a DER parse error is not a failed verification
    try:
        key = serialization.load_pem_public_key(pubkey_pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "ota_pubkey is not a PEM public key"
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return "ota_pubkey is not an ECDSA P-256 key"
    try:
        key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return "signature does not verify with ota_pubkey"
    return None


# -- writing the slot (esp_ota_begin / write / end) -------------------------------------------


def next_update_partition(
    table: PartitionTable, running: Partition, *, fixed_slot: bool = False
) -> Partition:
    """esp_ota_get_next_update_partition: the OTA slot after the running one, wrapping.

    factory (or test) → ota_0; ota_N → ota_N+1, or ota_0 after the last. Raises OtaFailed
    when there is no OTA slot other than the running app's. ``fixed_slot`` is the
    "always ota_0" defect: the first OTA slot whatever runs, refused as esp_ota_begin
    refuses the running partition (ESP_ERR_OTA_PARTITION_CONFLICT).
    """
    apps = table.ota_apps()
    if not apps:
        raise OtaFailed("the partition table has no OTA app partition")
    if fixed_slot:
        if apps[0] == running:
            raise OtaFailed(f"partition conflict: {running.label} is the running app")
        return apps[0]
    index = running.ota_index
    target = apps[0]
    if index is not None:
        target = next((p for p in apps if (p.ota_index or 0) > index), apps[0])
    if target == running:
        raise OtaFailed(f"no OTA partition other than the running {running.label}")
    return target


class OtaWriter:
    """esp_ota_begin / esp_ota_write / esp_ota_end for one request into one partition.

    ``begin`` erases the sectors the image will occupy; ``write`` programs the next bytes
    (strictly in order, so ``written`` is where a resumed download continues); ``end``
    reads the slot back and checks size, SHA-256 and the image as the bootloader will.
    Any failure erases the slot's first sector, so a half-written or bad image can never
    boot, and raises OtaFailed.
    """

    def __init__(
        self, flash: FlashIO, partition: Partition, request: OtaRequest, *, check_sha256: bool = True
    ) -> None:
        """``check_sha256=False`` is the "never compares the signed digest" defect."""
        if not partition.is_app:
            raise ValueError(f"partition {partition.label} is not an app partition")
        self.flash = flash
        self.partition = partition
        self.request = request
        self.check_sha256 = check_sha256
        self.written = 0
        self.begun = False

    def begin(self) -> None:
        """Erase the sectors ``request.size`` bytes need (esp_ota_begin with a known size)."""
        size = self.request.size
        if size <= 0 or size > self.partition.size:
            raise OtaFailed(
                f"image size {size} does not fit partition {self.partition.label} "
                f"({self.partition.size} bytes)"
            )
        erase_len = min(-(-size // SECTOR_SIZE) * SECTOR_SIZE, self.partition.size)
        self.flash.erase(self.partition.offset, erase_len)
        self.written = 0
        self.begun = True

    def write(self, offset: int, chunk: bytes) -> None:
        """Program ``chunk`` at image ``offset``, which must be ``written`` (in-order)."""
        if not self.begun:
            raise RuntimeError("OtaWriter.write before begin")
        if offset != self.written:
            raise ValueError(f"OTA write at {offset}, expected the next byte {self.written}")
        if self.written + len(chunk) > self.request.size:
            raise self.fail(
                f"size mismatch: more than the announced {self.request.size} bytes received"
            )
        self.flash.write(self.partition.offset + offset, chunk)
        self.written += len(chunk)

    def end(self) -> AppImage:
        """Check what is on flash; returns the checked image, or raises OtaFailed."""
        if not self.begun:
            raise RuntimeError("OtaWriter.end before begin")
        size = self.request.size
        if self.written != size:
            raise self.fail(f"size mismatch: received {self.written} of {size} bytes")
        data = self.flash.read(self.partition.offset, size)
        actual = hashlib.sha256(data).hexdigest()
        if self.check_sha256 and actual != self.request.sha256.lower():
            raise self.fail(
                f"sha256 mismatch: image is {actual}, expected {self.request.sha256.lower()}"
            )
        try:
            image = check_image(
                data, flash_offset=self.partition.offset, partition_size=self.partition.size
            )
        except ImageError as exc:
            raise self.fail(f"invalid image: {exc}") from exc
        self.begun = False
        return image

    def abort(self) -> None:
        """esp_ota_abort, plus what makes the slot unbootable: erase its first sector."""
        self.flash.erase(self.partition.offset, SECTOR_SIZE)
        self.begun = False

    def fail(self, reason: str) -> OtaFailed:
        """Abort (slot left unbootable) and return the OtaFailed for the caller to raise."""
        self.abort()
        return OtaFailed(reason)


def ota_begin(
    flash: FlashIO, table: PartitionTable, running: Partition, request: OtaRequest
) -> OtaWriter:
    """esp_ota_begin on the next update partition, with its refusal rules.

    Refused (OtaFailed) while the running app is PENDING_VERIFY: a trial image must prove
    itself before it may replace the slot that rollback would return to.
    """
    if running_entry_state(flash, table, running) == OtaState.PENDING_VERIFY:
        raise OtaFailed("the running app is still pending verification")
    writer = OtaWriter(flash, next_update_partition(table, running), request)
    writer.begin()
    return writer


async def download_to(
    writer: OtaWriter,
    req: OtaRequest,
    *,
    ssl_context: ssl.SSLContext | None,
    max_attempts: int = 5,
    on_progress: ProgressFn | None = None,
    timeout_s: float = 30.0,
    retry_delay_s: float = 1.0,
    chunk_size: int = 4096,
    resume: bool = True,
) -> int:
    """Download ``req.url`` into ``writer`` (begun here if it is not yet); returns the size.

    A lost connection (or a 5xx) is retried with ``Range: bytes=<written>-``, so bytes
    already on flash are not fetched again; a server that ignores Range (200) is read
    from the start and the part already written is dropped, never rewritten. At most
    ``max_attempts`` requests in all, ``retry_delay_s`` apart. Fatal at once: 4xx, a TLS
    failure, a malformed response, a server whose resource size differs from
    ``req.size``. Any failure aborts the writer (slot left unbootable) and raises
    OtaFailed. ``end()`` is left to the caller. ``resume=False`` is the "starts over"
    defect: every retry begins the writer again (slot erased) and asks from byte 0.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    if not writer.begun:
        writer.begin()
    last_error = ""
    for attempt in range(1, max_attempts + 1):
        try:
            await _download_once(writer, req, ssl_context, timeout_s, chunk_size, on_progress)
            return writer.written
        except ConnectionLost as exc:
            last_error = str(exc)
        except HttpError as exc:
            if exc.status < 500:
                raise writer.fail(f"download failed: {exc}") from exc
            last_error = str(exc)
        except (TlsError, ProtocolError, ValueError) as exc:
            raise writer.fail(f"download failed: {exc}") from exc
        if attempt < max_attempts:
            await asyncio.sleep(retry_delay_s)
            if not resume:
                writer.begin()  # the defect: esp_https_ota_begin again, from byte 0
    raise writer.fail(f"download failed after {max_attempts} attempts: {last_error}")


async def _download_once(
    writer: OtaWriter,
    req: OtaRequest,
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
    chunk_size: int,
    on_progress: ProgressFn | None,
) -> None:
    async with open_range(
        req.url, writer.written, ssl_context=ssl_context, timeout_s=timeout_s
    ) as resp:
        if resp.total is not None and resp.total != req.size:
            raise writer.fail(
                f"size mismatch: server has {resp.total} bytes, request says {req.size}"
            )
        skip = writer.written - resp.start
        async with contextlib.aclosing(resp.chunks(chunk_size)) as chunks:
            async for data in chunks:
                if skip >= len(data):
                    skip -= len(data)
                    continue
                writer.write(writer.written, data[skip:])
                skip = 0
                if on_progress is not None:
                    on_progress(writer.written, req.size)
    if writer.written != req.size:
        raise writer.fail(f"size mismatch: download ended at {writer.written} of {req.size} bytes")


# -- otadata (esp_ota_set_boot_partition and the rollback API) -------------------------------


@dataclass(frozen=True)
class RolledBack:
    """A newer update that the bootloader (ABORTED) or the app itself (INVALID) gave up on.

    Report it once: the otadata entry stays as it is until the next set_boot_partition
    overwrites it, so ``find_rollback`` keeps finding it on every boot. The firmware keeps
    the ``seq`` it has reported (NVS) and stays quiet while ``find_rollback`` returns
    that seq; it must forget it when it calls ``set_boot_partition`` again, because
    the next update may be given the same seq.
    """

    slot_label: str
    version: str | None
    """The failed app's version from its descriptor; None if the slot is unreadable."""
    state: OtaState
    seq: int


def read_app_descriptor(flash: FlashIO, partition: Partition) -> AppDescriptor | None:
    """esp_ota_get_partition_description: the esp_app_desc_t at partition + 0x20, or None.

    None when there is no image (bad magic, as after a failed OTA erased the first
    sector) or no valid descriptor.
    """
    data = flash.read(partition.offset, APP_DESC_OFFSET + _APP_DESC_LEN)
    if data[0] != IMAGE_MAGIC:
        return None
    try:
        return AppDescriptor.from_bytes(data[APP_DESC_OFFSET:])
    except (ImageError, ValueError):
        return None


def set_boot_partition(
    flash: FlashIO, table: PartitionTable, partition: Partition, *, rollback: bool = True
) -> None:
    """esp_ota_set_boot_partition: validate the image, then select it in otadata.

    factory: otadata is erased (the bootloader then defaults to factory). ota_N: the new
    entry (seq per OtaData.next_seq_for, state NEW with rollback else UNDEFINED) is
    written to the sector that is not active, erase then write, so a power cut leaves
    either the old or the new choice. Raises OtaFailed for an invalid image, ValueError
    for a partition that is neither factory nor an OTA app, or a table without otadata.
    """
    otadata_part = _otadata_partition(table)
    if partition.is_app and partition == table.factory:
        _validate_slot(flash, partition)
        flash.erase(otadata_part.offset, otadata_part.size)
        return
    slot = _ota_slot(table, partition)
    if slot is None:
        raise ValueError(f"partition {partition.label} is neither factory nor an OTA app")
    _validate_slot(flash, partition)
    otadata = _read_otadata(flash, otadata_part)
    active = otadata.active_index()
    target = 0 if active is None else 1 - active
    updated = otadata.set_boot(slot, len(table.ota_apps()), rollback=rollback)
    entry = updated.entries[target]
    assert entry is not None
    _write_entry(flash, otadata_part, target, entry)


def running_entry_state(
    flash: FlashIO, table: PartitionTable, running: Partition
) -> OtaState | None:
    """The state of the active otadata entry if it selects ``running``, else None.

    None too for factory (or a fallback boot the bootloader chose despite otadata) and
    for a state value outside the enum. PENDING_VERIFY here means "on trial: self-test,
    then mark valid or invalid".
    """
    found = _running_entry(flash, table, running)
    if found is None:
        return None
    state = found[2].state
    return state if isinstance(state, OtaState) else None


def mark_app_valid(flash: FlashIO, table: PartitionTable, running: Partition) -> bool:
    """esp_ota_mark_app_valid_cancel_rollback: the active entry becomes VALID.

    Returns True if otadata was rewritten, False if it already said VALID. Raises
    OtaFailed when otadata does not select ``running`` (IDF: "Running firmware is
    factory"; IDF would mark whatever entry is active, we refuse to vouch for another).
    """
    otadata_part, index, entry = _require_running_entry(flash, table, running)
    if entry.state == OtaState.VALID:
        return False
    _write_entry(flash, otadata_part, index, OtaEntry(entry.seq, OtaState.VALID, entry.label))
    return True


def mark_app_invalid(flash: FlashIO, table: PartitionTable, running: Partition) -> None:
    """esp_ota_mark_app_invalid_rollback_and_reboot, minus the reboot (the caller's job).

    Raises RollbackFailed, leaving otadata alone, when no other app could boot (IDF's
    check_rollback_is_possible: factory, or the other entry's slot, must hold a valid
    image); OtaFailed when otadata does not select ``running``.
    """
    otadata_part, index, entry = _require_running_entry(flash, table, running)
    if not _rollback_possible(flash, table, otadata_part, index):
        raise RollbackFailed("rollback not possible: no other bootable app")
    _write_entry(flash, otadata_part, index, OtaEntry(entry.seq, OtaState.INVALID, entry.label))


def find_rollback(flash: FlashIO, table: PartitionTable, running: Partition) -> RolledBack | None:
    """The newer update that was rolled back to ``running``, if any (see RolledBack).

    An entry in ABORTED or INVALID state, with a good CRC, a seq above the active entry's
    (0 when none is active: factory), selecting a slot other than ``running``. Like
    esp_ota_get_last_invalid_partition, the highest such seq wins.
    """
    otadata_part = table.otadata
    apps = table.ota_apps()
    if otadata_part is None or not apps:
        return None
    otadata = _read_otadata(flash, otadata_part)
    active = otadata.active_entry()
    active_seq = 0 if active is None else active.seq
    candidates = [
        entry
        for entry in otadata.entries
        if entry is not None
        and entry.seq != SEQ_ERASED
        and entry.crc_ok
        and entry.state in (OtaState.ABORTED, OtaState.INVALID)
        and entry.seq > active_seq
        and apps[(entry.seq - 1) % len(apps)] != running
    ]
    if not candidates:
        return None
    entry = max(candidates, key=lambda e: e.seq)
    slot = apps[(entry.seq - 1) % len(apps)]
    desc = read_app_descriptor(flash, slot)
    return RolledBack(
        slot_label=slot.label,
        version=None if desc is None else desc.version,
        state=OtaState(entry.state),
        seq=entry.seq,
    )


def _otadata_partition(table: PartitionTable) -> Partition:
    part = table.otadata
    if part is None:
        raise ValueError("the partition table has no otadata partition")
    return part


def _read_otadata(flash: FlashIO, otadata_part: Partition) -> OtaData:
    return OtaData.from_bytes(flash.read(otadata_part.offset, otadata_part.size))


def _write_entry(flash: FlashIO, otadata_part: Partition, index: int, entry: OtaEntry) -> None:
    """What rewrite_ota_seq does: erase the entry's sector, then program the entry."""
    sector = otadata_part.offset + index * OTADATA_SECTOR
    flash.erase(sector, OTADATA_SECTOR)
    flash.write(sector, entry.to_bytes())


def _ota_slot(table: PartitionTable, partition: Partition) -> int | None:
    """Index of ``partition`` among the OTA apps (what (seq - 1) % n selects)."""
    apps = table.ota_apps()
    return apps.index(partition) if partition in apps else None


def _validate_slot(flash: FlashIO, partition: Partition) -> AppImage:
    try:
        return check_image(
            flash.read(partition.offset, partition.size),
            flash_offset=partition.offset,
            partition_size=partition.size,
        )
    except ImageError as exc:
        raise OtaFailed(f"invalid image in {partition.label}: {exc}") from exc


def _running_entry(
    flash: FlashIO, table: PartitionTable, running: Partition
) -> tuple[Partition, int, OtaEntry] | None:
    otadata_part = table.otadata
    apps = table.ota_apps()
    if otadata_part is None or not apps or running not in apps:
        return None
    otadata = _read_otadata(flash, otadata_part)
    index = otadata.active_index()
    if index is None:
        return None
    entry = otadata.entries[index]
    assert entry is not None
    if apps[(entry.seq - 1) % len(apps)] != running:
        return None
    return otadata_part, index, entry


def _require_running_entry(
    flash: FlashIO, table: PartitionTable, running: Partition
) -> tuple[Partition, int, OtaEntry]:
    found = _running_entry(flash, table, running)
    if found is None:
        raise OtaFailed(f"otadata does not select the running app ({running.label})")
    return found


def _rollback_possible(
    flash: FlashIO, table: PartitionTable, otadata_part: Partition, active_index: int
) -> bool:
    otadata = _read_otadata(flash, otadata_part)
    other = otadata.entries[1 - active_index]
    apps = table.ota_apps()
    candidates: list[Partition] = []
    if other is not None and other.is_valid:
        candidates.append(apps[(other.seq - 1) % len(apps)])
    if table.factory is not None:
        candidates.append(table.factory)
    for part in candidates:
        try:
            _validate_slot(flash, part)
        except OtaFailed:
            continue
        return True
    return False
