"""The behaviour record: which firmware model, with which injected defects, an image carries.

The virtual rig cannot execute RISC-V code, so an app image built for it carries a small
record in a DRAM "load" segment naming the reference firmware model to run and the
defects to inject. Because the record lives inside the image (covered by its checksum and
hash), flashing or OTA-updating another image really changes what the board does.

Layout: magic b"HILBHV01", u32 LE length of the JSON, canonical JSON (UTF-8, sorted keys,
no whitespace), zero padding to a multiple of 4 (segment lengths must be).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hil.images.errors import ImageError
from hil.images.image import AppImage

BEHAVIOUR_MAGIC = b"HILBHV01"
BEHAVIOUR_LOAD_ADDR = 0x3FC8_A000
_PREFIX_LEN = len(BEHAVIOUR_MAGIC) + 4


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class BehaviourRecord:
    """Model name, injected defects and free-form model parameters (JSON-able)."""

    model: str
    defects: tuple[str, ...] = ()
    params: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("behaviour record needs a model name")
        object.__setattr__(self, "defects", tuple(self.defects))
        if not all(isinstance(d, str) for d in self.defects):
            raise ValueError(f"defects must be strings, got {self.defects!r}")
        # A read-only copy: the record is frozen, and so is what it says.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        try:
            self.to_bytes()
        except (TypeError, ValueError) as err:
            raise ValueError(f"behaviour params must be JSON-serialisable: {err}") from err

    def to_bytes(self) -> bytes:
        body = _canonical_json(
            {"model": self.model, "defects": list(self.defects), "params": dict(self.params)}
        )
        raw = BEHAVIOUR_MAGIC + struct.pack("<I", len(body)) + body
        return raw + bytes(-len(raw) % 4)

    @classmethod
    def from_bytes(cls, data: bytes) -> BehaviourRecord:
        """Parse a record at the start of `data` (trailing bytes are ignored)."""
        if not data.startswith(BEHAVIOUR_MAGIC):
            raise ImageError("behaviour record has no HILBHV01 magic")
        if len(data) < _PREFIX_LEN:
            raise ImageError("behaviour record is truncated before its length field")
        (length,) = struct.unpack_from("<I", data, len(BEHAVIOUR_MAGIC))
        body = data[_PREFIX_LEN : _PREFIX_LEN + length]
        if len(body) != length:
            raise ImageError(
                f"behaviour record is truncated: JSON needs {length} bytes, {len(body)} present"
            )
        try:
            decoded: Any = json.loads(body.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ImageError(f"behaviour record JSON is corrupt: {err}") from err
        if not isinstance(decoded, dict):
            raise ImageError("behaviour record JSON is not an object")
        model = decoded.get("model")
        defects = decoded.get("defects", [])
        params = decoded.get("params", {})
        if not isinstance(model, str) or not model:
            raise ImageError("behaviour record has no model name")
        if not isinstance(defects, list) or not all(isinstance(d, str) for d in defects):
            raise ImageError("behaviour record defects must be a list of strings")
        if not isinstance(params, dict):
            raise ImageError("behaviour record params must be an object")
        return cls(model=model, defects=tuple(defects), params=params)


def find_behaviour(image: AppImage) -> BehaviourRecord | None:
    """The behaviour record an image carries, or None for an image without one.

    esptool may split a RAM segment to pad flash segments onto MMU pages, so a record is
    read across segments that continue each other's load address.
    """
    for segment in image.segments:
        if segment.kind != "load" or not segment.data.startswith(BEHAVIOUR_MAGIC):
            continue
        data = bytearray(segment.data)
        next_addr = segment.load_addr + len(segment.data)
        if len(data) >= _PREFIX_LEN:
            (length,) = struct.unpack_from("<I", data, len(BEHAVIOUR_MAGIC))
        else:
            length = 0
        while len(data) < _PREFIX_LEN + length:
            following = next((s for s in image.segments if s.load_addr == next_addr), None)
            if following is None or not following.data:
                break
            data += following.data
            next_addr += len(following.data)
            if length == 0 and len(data) >= _PREFIX_LEN:
                (length,) = struct.unpack_from("<I", data, len(BEHAVIOUR_MAGIC))
        return BehaviourRecord.from_bytes(bytes(data))
    return None
