"""The ESP32-C3 eFuse array and its controller, as esptool and espefuse drive them.

Layout (espefuse ``efuse/esp32c3/mem_definition.py`` and ``efuse_defs/esp32c3.yaml``,
ESP-IDF ``soc/esp32c3/register/soc/efuse_reg.h``): eleven blocks read through registers
at EFUSE_BASE (0x60008800) + 0x2C. BLOCK0 (6 words) holds the system settings, each
stored four times in silicon, so it has no error-correcting code. BLOCK1 (MAC,
revision, package, LDO/DBIAS trim; 6 words) and BLOCK2..10 (8 words each: BLOCK2 the
unique id and ADC/temperature calibration, BLOCK3 user data, BLOCK4..9 keys, BLOCK10
system data part 2) are each protected by a Reed-Solomon (44, 32) code over GF(2^8):
the 12 check bytes are programmed next to the 32 data bytes.

Programming (what espefuse's ``burn_words``/``efuse_program``/``efuse_read`` do):
write the data to EFUSE_PGM_DATA0..7 and the RS check bytes to EFUSE_PGM_CHECK_VALUE0..2,
write 0x5A5A to EFUSE_CONF, then EFUSE_CMD = PGM_CMD | block << 2; the controller burns
and clears the command bit. The read registers do not change until a read command
(0x5AA5 in EFUSE_CONF, then EFUSE_CMD = READ_CMD) or a chip reset reloads them from the
array. A fuse only ever goes from 0 to 1: programming ORs into what is there. A block
whose data no longer matches its check bytes (programmed twice with different data, or
with a wrong code) reads back flagged in EFUSE_RD_RS_ERR0/1, where espefuse looks for
it. Write protection (WR_DIS bits 20..29) and read protection of BLOCK4..10 (RD_DIS)
are modelled per block; the per-field write protection inside BLOCK0 is not.

The fuses a chip leaves the factory with come from `factory_blocks`; what tools burn
afterwards is kept apart (``burned``) and, given a path, persisted to the board's
state dir on every burn, so it survives power cycles and process restarts.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EFUSE_BASE = 0x60008800
EFUSE_SPAN = 0x200

# Register offsets from EFUSE_BASE (efuse_reg.h).
PGM_DATA0 = 0x000
PGM_CHECK_VALUE0 = 0x020
RD_REPEAT_ERR = (0x17C, 0x180, 0x184, 0x188, 0x190)
RD_RS_ERR0 = 0x1C0
RD_RS_ERR1 = 0x1C4
CLK = 0x1C8
CONF = 0x1CC
STATUS = 0x1D0
CMD = 0x1D4
INT_RAW = 0x1D8
INT_ST = 0x1DC
INT_ENA = 0x1E0
INT_CLR = 0x1E4
DAC_CONF = 0x1E8
RD_TIM_CONF = 0x1EC
WR_TIM_CONF1 = 0x1F0
WR_TIM_CONF2 = 0x1F4
DATE = 0x1FC

WRITE_OP_CODE = 0x5A5A
READ_OP_CODE = 0x5AA5
READ_CMD = 1 << 0
PGM_CMD = 1 << 1

# Reset values of the controller's own registers (efuse_reg.h defaults).
_RESET_VALUES = {
    CLK: 1 << 1,  # MEM_CLK_FORCE_ON
    DAC_CONF: 28 | 255 << 9,  # DAC_CLK_DIV 28, DAC_NUM 255
    RD_TIM_CONF: 18 << 24,  # READ_INIT_NUM
    WR_TIM_CONF1: 10368 << 8,  # PWR_ON_NUM
    WR_TIM_CONF2: 400,  # PWR_OFF_NUM
    DATE: 0x2007200,
}
_READ_WRITE = frozenset({CONF, INT_ENA, *_RESET_VALUES}) | frozenset(range(PGM_DATA0, 0x02C, 4))

_WORD = 0xFFFFFFFF
BLOCK_BYTES = 32
RS_CHECK_BYTES = 12


@dataclass(frozen=True)
class BlockLayout:
    index: int
    read_offset: int
    words: int
    write_disable_bit: int | None
    read_disable_bit: int | None

    @property
    def coded(self) -> bool:
        """Blocks 1..10 carry a Reed-Solomon code; BLOCK0 is stored as repeats."""
        return self.index != 0


BLOCKS = (
    BlockLayout(0, 0x02C, 6, None, None),
    BlockLayout(1, 0x044, 6, 20, None),
    BlockLayout(2, 0x05C, 8, 21, None),
    BlockLayout(3, 0x07C, 8, 22, None),
    *(BlockLayout(4 + i, 0x09C + 0x20 * i, 8, 23 + i, i) for i in range(6)),
    BlockLayout(10, 0x15C, 8, 29, 6),
)
BLOCK_USR_DATA = 3

# Where espefuse reads a block's RS result: (register, fail bit or None) and
# (register, err_num shift or None). The C3's fail bits sit one block further on
# than its TRM says (a silicon erratum espefuse compensates for); the model puts each
# block's flag where the tools read it.
_FAIL_BIT = {
    1: (RD_RS_ERR0, 7), 2: (RD_RS_ERR0, 11), 3: (RD_RS_ERR0, 15), 4: (RD_RS_ERR0, 19),
    5: (RD_RS_ERR0, 23), 6: (RD_RS_ERR0, 27), 7: (RD_RS_ERR0, 31), 8: (RD_RS_ERR1, 3),
    9: (RD_RS_ERR1, 7), 10: (RD_RS_ERR1, None),
}  # fmt: skip
_ERR_NUM_SHIFT = {n: ((RD_RS_ERR0, 4 * (n - 1)) if n <= 8 else (RD_RS_ERR1, 4 * (n - 9))) for n in range(1, 11)}
_ERR_NUM_UNCORRECTABLE = 7  # 3-bit error count saturated; the decoder gave up


# -- Reed-Solomon (44, 32) over GF(2^8), primitive polynomial 0x11D, roots 2^0..2^11 ----
def _gf_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= 0x11D
    for power in range(255, 512):
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _gf_tables()


def _gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _generator(nsym: int) -> list[int]:
    poly = [1]
    for i in range(nsym):
        root = _EXP[i]
        out = [0] * (len(poly) + 1)
        for j, coef in enumerate(poly):
            out[j] ^= coef
            out[j + 1] ^= _gf_mul(coef, root)
        poly = out
    return poly


_GENERATOR = _generator(RS_CHECK_BYTES)


def rs_check_bytes(data: bytes) -> bytes:
    """The 12 check bytes the C3 stores next to a block's 32 data bytes (what espefuse
    computes with ``reedsolo.RSCodec(12)`` and writes to EFUSE_PGM_CHECK_VALUE0..2)."""
    if len(data) != BLOCK_BYTES:
        raise ValueError(f"an eFuse block is {BLOCK_BYTES} bytes, got {len(data)}")
    remainder = [0] * RS_CHECK_BYTES
    for byte in data:
        factor = byte ^ remainder[0]
        remainder = [*remainder[1:], 0]
        if factor:
            for j in range(RS_CHECK_BYTES):
                remainder[j] ^= _gf_mul(_GENERATOR[j + 1], factor)
    return bytes(remainder)


# -- what the factory burns ---------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Per-chip trim Espressif burns at test time, as raw field values (sign-magnitude
    where espefuse shows a sign). The ranges in `calibration_for` span what public
    ``espefuse summary`` dumps of C3 parts show (see docs/virtual-rig.md)."""

    k_rtc_ldo: int
    k_dig_ldo: int
    v_rtc_dbias20: int
    v_dig_dbias20: int
    dig_dbias_hvt: int
    thres_hvt: int
    temp_calib: int
    ocode: int
    adc1_init_code: tuple[int, int, int, int]
    adc1_cal_vol: tuple[int, int, int, int]


# (bits, lowest, highest) of the signed value; picked per chip from a hash of its MAC.
_CAL_RANGES = {
    "k_rtc_ldo": (7, -16, 24),
    "k_dig_ldo": (7, -16, 8),
    "v_rtc_dbias20": (8, -16, 44),
    "v_dig_dbias20": (8, -20, 10),
    "dig_dbias_hvt": (5, -8, -2),
    "temp_calib": (9, -110, -60),  # 0.1 °C steps: -11.0 .. -6.0 °C
    "adc1_init_code0": (10, 380, 450),
    "adc1_init_code1": (10, -80, -20),
    "adc1_init_code2": (10, -100, -50),
    "adc1_init_code3": (10, -225, -170),
    "adc1_cal_vol0": (10, -55, -20),
    "adc1_cal_vol1": (10, -5, 31),
    "adc1_cal_vol2": (10, -40, -20),
    "adc1_cal_vol3": (10, -85, -55),
}
_OCODE_RANGE = (75, 105)
_THRES_HVT = (400, 500)


def _sign_magnitude(value: int, bits: int) -> int:
    magnitude = abs(value)
    if magnitude >= 1 << (bits - 1):
        raise ValueError(f"{value} does not fit a {bits}-bit sign-magnitude field")
    return (1 << (bits - 1) | magnitude) if value < 0 else magnitude


def calibration_for(mac: bytes) -> Calibration:
    """Plausible, stable trim for the chip with this base MAC."""
    digest = hashlib.sha256(b"esp32c3-calibration" + mac).digest()
    picks = iter(digest)

    def pick(low: int, high: int) -> int:
        return low + next(picks) % (high - low + 1)

    raw = {name: _sign_magnitude(pick(low, high), bits) for name, (bits, low, high) in _CAL_RANGES.items()}
    return Calibration(
        k_rtc_ldo=raw["k_rtc_ldo"],
        k_dig_ldo=raw["k_dig_ldo"],
        v_rtc_dbias20=raw["v_rtc_dbias20"],
        v_dig_dbias20=raw["v_dig_dbias20"],
        dig_dbias_hvt=raw["dig_dbias_hvt"],
        thres_hvt=_THRES_HVT[next(picks) % len(_THRES_HVT)],
        temp_calib=raw["temp_calib"],
        ocode=pick(*_OCODE_RANGE),
        adc1_init_code=(raw["adc1_init_code0"], raw["adc1_init_code1"], raw["adc1_init_code2"], raw["adc1_init_code3"]),
        adc1_cal_vol=(raw["adc1_cal_vol0"], raw["adc1_cal_vol1"], raw["adc1_cal_vol2"], raw["adc1_cal_vol3"]),
    )


def unique_id_for(mac: bytes) -> bytes:
    """The 128-bit OPTIONAL_UNIQUE_ID in BLOCK2, stable per chip (here: per MAC)."""
    return hashlib.sha256(b"esp32c3-optional-unique-id" + mac).digest()[:16]


def _put(block: int, start: int, bits: int, value: int) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{value} does not fit {bits} bits")
    return block | value << start


ERR_RST_ENABLE_BIT = 159  # BLOCK0: "with check" on current parts
BLK_VERSION_MINOR = 2
BLK_VERSION_MAJOR = 1  # "With calibration": espefuse shows the calibration fields


def factory_blocks(
    *,
    mac: bytes,
    major_rev: int,
    minor_rev: int,
    pkg: int,
    flash_cap: int,
    flash_vendor: int,
    flash_temp: int = 0,
) -> list[bytes]:
    """The data of BLOCK0..10 as a C3 leaves Espressif's test floor (32 bytes each; the
    bit positions are the ``start`` column of espefuse's esp32c3.yaml)."""
    block0 = 1 << ERR_RST_ENABLE_BIT

    block1 = int.from_bytes(mac, "big")  # bytes 0..5 = MAC, last octet first
    block1 = _put(block1, 114, 3, minor_rev & 0x7)  # WAFER_VERSION_MINOR_LO
    block1 = _put(block1, 117, 3, pkg)  # PKG_VERSION
    block1 = _put(block1, 120, 3, BLK_VERSION_MINOR)
    block1 = _put(block1, 123, 3, flash_cap)
    block1 = _put(block1, 126, 2, flash_temp)
    block1 = _put(block1, 128, 3, flash_vendor)
    cal = calibration_for(mac)
    block1 = _put(block1, 135, 7, cal.k_rtc_ldo)
    block1 = _put(block1, 142, 7, cal.k_dig_ldo)
    block1 = _put(block1, 149, 8, cal.v_rtc_dbias20)
    block1 = _put(block1, 157, 8, cal.v_dig_dbias20)
    block1 = _put(block1, 165, 5, cal.dig_dbias_hvt)
    block1 = _put(block1, 170, 10, cal.thres_hvt)
    block1 = _put(block1, 183, 1, minor_rev >> 3)  # WAFER_VERSION_MINOR_HI
    block1 = _put(block1, 184, 2, major_rev)  # WAFER_VERSION_MAJOR

    block2 = int.from_bytes(unique_id_for(mac), "little")
    block2 = _put(block2, 128, 2, BLK_VERSION_MAJOR)
    block2 = _put(block2, 131, 9, cal.temp_calib)
    block2 = _put(block2, 140, 8, cal.ocode)
    for i, code in enumerate(cal.adc1_init_code):
        block2 = _put(block2, 148 + 10 * i, 10, code)
    for i, volt in enumerate(cal.adc1_cal_vol):
        block2 = _put(block2, 188 + 10 * i, 10, volt)

    blocks = [value.to_bytes(BLOCK_BYTES, "little") for value in (block0, block1, block2)]
    return blocks + [bytes(BLOCK_BYTES)] * (len(BLOCKS) - len(blocks))


# -- the array: factory fuses plus what was burned since ---------------------------
_RECORD = BLOCK_BYTES + RS_CHECK_BYTES
EFUSE_FILE_BYTES = len(BLOCKS) * _RECORD


class EfuseArray:
    """The fuses: factory bits OR burned bits, data and RS check bytes per block.

    ``path`` (optional) is where the burned bits live: a file of 11 records of 32 data
    + 12 check bytes, rewritten atomically on every burn. Without a path, burns last as
    long as the object.
    """

    def __init__(self, factory: Sequence[bytes], path: Path | None = None) -> None:
        if len(factory) != len(BLOCKS) or any(len(b) != BLOCK_BYTES for b in factory):
            raise ValueError(f"factory image must be {len(BLOCKS)} blocks of {BLOCK_BYTES} bytes")
        self._factory = [
            (bytes(data), rs_check_bytes(bytes(data)) if layout.coded else bytes(RS_CHECK_BYTES))
            for layout, data in zip(BLOCKS, factory, strict=True)
        ]
        self.path = path
        self._burned = bytearray(EFUSE_FILE_BYTES)
        if path is not None and path.exists():
            stored = path.read_bytes()
            if len(stored) != EFUSE_FILE_BYTES:
                raise ValueError(
                    f"{path}: eFuse file is {len(stored)} bytes, expected {EFUSE_FILE_BYTES}; "
                    "delete it to start from the factory eFuses"
                )
            self._burned[:] = stored

    def block(self, index: int) -> tuple[bytes, bytes]:
        """Data and check bytes of block ``index`` as the fuses hold them."""
        data, check = self._factory[index]
        record = self._burned[index * _RECORD : (index + 1) * _RECORD]
        return _or(data, record[:BLOCK_BYTES]), _or(check, record[BLOCK_BYTES:])

    def program(self, index: int, data: bytes, check: bytes) -> None:
        """Burn: every 1 bit sets its fuse, 0 bits leave it alone."""
        start = index * _RECORD
        record = self._burned[start : start + _RECORD]
        self._burned[start : start + _RECORD] = _or(record, data + check)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(self._burned)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _or(a: bytes | bytearray, b: bytes | bytearray) -> bytes:
    return bytes(x | y for x, y in zip(a, b, strict=True))


# -- the controller: the registers esptool/espefuse read and write -------------------
class EfuseController:
    """EFUSE_BASE..+0x200: programming registers, command/conf, the read registers."""

    def __init__(self, array: EfuseArray) -> None:
        self.array = array
        self._regs: dict[int, int] = {}
        self._read_regs: dict[int, int] = {}
        self.reset()

    @staticmethod
    def handles(addr: int) -> bool:
        return EFUSE_BASE <= addr < EFUSE_BASE + EFUSE_SPAN

    def reset(self) -> None:
        """Chip reset: controller registers to their defaults, the array read afresh."""
        self._regs = dict(_RESET_VALUES)
        self._load()

    def read(self, addr: int) -> int:
        offset = addr - EFUSE_BASE
        if offset in self._read_regs:
            return self._read_regs[offset]
        return self._regs.get(offset, 0)

    def write(self, addr: int, value: int) -> None:
        offset = addr - EFUSE_BASE
        value &= _WORD
        if offset == CMD:
            self._command(value)
        elif offset in _READ_WRITE:
            self._regs[offset] = value
        # read registers, status and error records are read-only; INT_CLR etc. do nothing

    def word(self, block: int, index: int) -> int:
        """A word of a block as the read registers show it now."""
        return self._read_regs[BLOCKS[block].read_offset + 4 * index]

    def _command(self, value: int) -> None:
        op_code = self._regs.get(CONF, 0) & 0xFFFF
        if value & PGM_CMD and op_code == WRITE_OP_CODE:
            self._program((value >> 2) & 0xF)
        elif value & READ_CMD and op_code == READ_OP_CODE:
            self._load()
        # The command bits clear themselves when the state machine is done (at once here);
        # a command without its op code in EFUSE_CONF does nothing.
        self._regs[CMD] = value & ~(PGM_CMD | READ_CMD) & 0x3F

    def _program(self, index: int) -> None:
        if index >= len(BLOCKS):
            return
        layout = BLOCKS[index]
        wr_dis = int.from_bytes(self.array.block(0)[0][:4], "little")
        if layout.write_disable_bit is not None and wr_dis >> layout.write_disable_bit & 1:
            return  # write-protected: the burn changes nothing
        words = [self._regs.get(PGM_DATA0 + 4 * i, 0) for i in range(8)]
        if not layout.coded:
            words[layout.words :] = [0] * (8 - layout.words)
        data = b"".join(w.to_bytes(4, "little") for w in words)
        check = b"".join(self._regs.get(PGM_CHECK_VALUE0 + 4 * i, 0).to_bytes(4, "little") for i in range(3))
        self.array.program(index, data, check if layout.coded else bytes(RS_CHECK_BYTES))

    def _load(self) -> None:
        """What a read command (or reset) latches: block data, read protection applied,
        and the RS decoder's verdict per coded block."""
        rd_dis = int.from_bytes(self.array.block(0)[0][4:8], "little") & 0x7F
        regs: dict[int, int] = {}
        errors = {RD_RS_ERR0: 0, RD_RS_ERR1: 0}
        for layout in BLOCKS:
            data, check = self.array.block(layout.index)
            if layout.read_disable_bit is not None and rd_dis >> layout.read_disable_bit & 1:
                data = bytes(BLOCK_BYTES)
            elif layout.coded and rs_check_bytes(data) != check:
                reg, shift = _ERR_NUM_SHIFT[layout.index]
                errors[reg] |= _ERR_NUM_UNCORRECTABLE << shift
                fail_reg, fail_bit = _FAIL_BIT[layout.index]
                if fail_bit is not None:
                    errors[fail_reg] |= 1 << fail_bit
            for i in range(layout.words):
                regs[layout.read_offset + 4 * i] = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        for offset in RD_REPEAT_ERR:
            regs[offset] = 0  # BLOCK0's four copies always agree in this model
        regs.update(errors)
        regs[STATUS] = 0
        self._read_regs = regs
