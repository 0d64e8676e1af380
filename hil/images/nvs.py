"""NVS partition images: provisioning data for the board, and the firmware model's storage.

Images are written by esp-idf-nvs-partition-gen (the tool a real provisioning step uses),
called in-process through its Python API; they are read back by our own reader
(`hil.images.nvs_reader`). Updating rebuilds the whole image, which is how the firmware
model persists configuration on the virtual flash.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from hil.images.nvs_reader import PAGE_SIZE, read_nvs, read_nvs_typed
from hil.images.nvs_types import (
    MAX_KEY_LEN,
    MAX_NAMESPACES,
    NvsError,
    NvsInt,
    NvsValue,
    StoredValue,
    as_stored,
)

# The generator reserves one page for garbage collection, and a read-write NVS needs
# two more (nvs_partition_gen.check_size).
MIN_NVS_SIZE = 3 * PAGE_SIZE
# Longest string the generator can place: with its NUL it must fill at most 124 of a
# fresh page's 126 entries after the item header (IDF itself allows 4000 bytes with NUL,
# but nvs_partition_gen rejects anything that would use the page's last entry).
MAX_STR_BYTES = 124 * 32 - 1

__all__ = [
    "MAX_STR_BYTES",
    "MIN_NVS_SIZE",
    "NvsError",
    "NvsInt",
    "NvsValue",
    "build_nvs_image",
    "erase_namespace",
    "read_nvs",
    "update_nvs",
]


def _check_name(what: str, name: str) -> None:
    raw = name.encode()
    if not raw or len(raw) > MAX_KEY_LEN or b"\0" in raw:
        raise NvsError(
            f"NVS {what} {name!r} must be 1..{MAX_KEY_LEN} bytes without NULs "
            f"(it is {len(raw)} bytes)"
        )


def _encoding(namespace: str, key: str, value: StoredValue) -> tuple[str, Any]:
    """The generator's (encoding, value) for one stored value, validated first."""
    if isinstance(value, NvsInt):
        return value.kind, value.value
    if isinstance(value, str):
        raw = value.encode()
        if b"\0" in raw:
            raise NvsError(f"{namespace}/{key}: NVS strings cannot contain NUL characters")
        if len(raw) > MAX_STR_BYTES:
            raise NvsError(
                f"{namespace}/{key}: string of {len(raw)} bytes is too long; NVS strings "
                f"hold at most {MAX_STR_BYTES} bytes (store it as bytes to use a blob)"
            )
        return "string", value
    if isinstance(value, bytes | bytearray):
        return "binary", bytes(value)
    raise NvsError(f"{namespace}/{key}: unsupported NVS value type {type(value).__name__}")


def _check_size(size: int) -> None:
    if size % PAGE_SIZE:
        raise NvsError(f"NVS partition size 0x{size:x} is not a multiple of 0x{PAGE_SIZE:x}")
    if size < MIN_NVS_SIZE:
        raise NvsError(
            f"NVS partition size 0x{size:x} is too small: a read-write NVS needs at "
            f"least 0x{MIN_NVS_SIZE:x} bytes"
        )


def _generate(namespaces: Mapping[str, Mapping[str, StoredValue]], size: int) -> bytes:
    # Imported here: the generator pulls in rich-click and cryptography, which readers of
    # NVS (the virtual rig at boot) do not need.
    from esp_idf_nvs_partition_gen import nvs_partition_gen as gen

    out = io.BytesIO()
    try:
        # nvs_open takes the size without the reserved page; its close() writes that page.
        nvs: Any = gen.nvs_open(out, size - PAGE_SIZE, gen.Page.VERSION2)
        for namespace, values in namespaces.items():
            # The NVS object's own methods, not the module-level write_entry(): that one
            # silently adds Wi-Fi driver records for keys such as "sta.ssid".
            nvs.write_namespace(namespace)
            ns_index = nvs.get_namespace_idx()
            for key, value in values.items():
                encoding, raw = _encoding(namespace, key, value)
                nvs.write_entry(key, raw, encoding, ns_index)
        gen.nvs_close(nvs)
    except gen.InsufficientSizeError as err:
        raise NvsError(
            f"the values do not fit an NVS partition of 0x{size:x} bytes; use a larger one"
        ) from err
    except (gen.PageFullError, gen.InputError) as err:
        raise NvsError(f"esp-idf-nvs-partition-gen refused the values: {err!r}") from err
    return out.getvalue()


def _build(namespaces: Mapping[str, Mapping[str, StoredValue]], size: int) -> bytes:
    _check_size(size)
    if len(namespaces) > MAX_NAMESPACES:
        raise NvsError(f"{len(namespaces)} namespaces; NVS holds at most {MAX_NAMESPACES}")
    for namespace, values in namespaces.items():
        _check_name("namespace", namespace)
        for key, value in values.items():
            _check_name("key", key)
            _encoding(namespace, key, value)
    return _generate(namespaces, size)


def build_nvs_image(
    namespaces: Mapping[str, Mapping[str, NvsValue]], *, size: int = 0x4000
) -> bytes:
    """An NVS partition image (format version 2, multi-page blobs) of exactly `size` bytes.

    Values: str → string, bytes → blob, NvsInt → that integer type, a bare int → u32 when
    ≥ 0 else i32 (a bool → u8).
    """
    stored = {
        ns: {key: as_stored(value) for key, value in values.items()}
        for ns, values in namespaces.items()
    }
    return _build(stored, size)


def update_nvs(
    data: bytes,
    namespace: str,
    values: Mapping[str, NvsValue | None],
    *,
    size: int | None = None,
) -> bytes:
    """`data` with `values` set in `namespace` (None deletes a key), rebuilt.

    Every other namespace and key is kept, integers with their stored width. The result
    is `size` bytes, by default as long as `data`.
    """
    _check_name("namespace", namespace)
    content = read_nvs_typed(data)
    keys = dict(content.get(namespace, {}))
    for key, value in values.items():
        if value is None:
            keys.pop(key, None)
        else:
            _check_name("key", key)
            keys[key] = as_stored(value)
    if keys:
        content[namespace] = keys
    else:
        content.pop(namespace, None)
    return _build(content, len(data) if size is None else size)


def erase_namespace(data: bytes, namespace: str) -> bytes:
    """`data` without any key of `namespace` (nvs_erase_all + commit), same size."""
    content = read_nvs_typed(data)
    content.pop(namespace, None)
    return _build(content, len(data))
