"""The trimming parameters a BME280 carries in NVM: their byte layout and known parts' values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from hil.bme280.registers import REG_CALIB_H, REG_CALIB_TP

# --- calibration ---------------------------------------------------------------------------


def _u8(value: int) -> int:
    return value & 0xFF


def _s8(byte: int) -> int:
    return byte - 0x100 if byte & 0x80 else byte


def _u16(lo: int, hi: int) -> int:
    return lo | (hi << 8)


def _s16(lo: int, hi: int) -> int:
    word = _u16(lo, hi)
    return word - 0x10000 if word & 0x8000 else word


_FIELD_RANGES: dict[str, tuple[int, int]] = {
    "dig_T1": (0, 0xFFFF),
    "dig_T2": (-0x8000, 0x7FFF),
    "dig_T3": (-0x8000, 0x7FFF),
    "dig_P1": (0, 0xFFFF),
    **{f"dig_P{i}": (-0x8000, 0x7FFF) for i in range(2, 10)},
    "dig_H1": (0, 0xFF),
    "dig_H2": (-0x8000, 0x7FFF),
    "dig_H3": (0, 0xFF),
    "dig_H4": (-0x800, 0x7FF),  # 12 bits: signed byte * 16 + a nibble
    "dig_H5": (-0x800, 0x7FF),
    "dig_H6": (-0x80, 0x7F),
}


@dataclass(frozen=True)
class Calibration:
    """The trimming parameters a BME280 carries in NVM (names as in the datasheet)."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int
    dig_H1: int
    dig_H2: int
    dig_H3: int
    dig_H4: int
    dig_H5: int
    dig_H6: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = _FIELD_RANGES[f.name]
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"Calibration.{f.name}={value!r} is outside {lo}..{hi}")

    def to_registers(self) -> dict[int, int]:
        """The NVM bytes as the part shows them: 0x88–0xA1 and 0xE1–0xE7 (0xA0 reads 0)."""
        regs: dict[int, int] = {}
        words = [
            self.dig_T1, self.dig_T2, self.dig_T3,
            self.dig_P1, self.dig_P2, self.dig_P3, self.dig_P4, self.dig_P5,
            self.dig_P6, self.dig_P7, self.dig_P8, self.dig_P9,
        ]  # fmt: skip
        for i, word in enumerate(words):
            regs[REG_CALIB_TP + 2 * i] = word & 0xFF
            regs[REG_CALIB_TP + 2 * i + 1] = (word >> 8) & 0xFF
        regs[0xA0] = 0x00
        regs[0xA1] = self.dig_H1
        regs[0xE1] = self.dig_H2 & 0xFF
        regs[0xE2] = (self.dig_H2 >> 8) & 0xFF
        regs[0xE3] = self.dig_H3
        # H4 = (s8)E4 * 16 + E5[3:0];  H5 = (s8)E6 * 16 + E5[7:4]
        regs[0xE4] = _u8(self.dig_H4 >> 4)
        regs[0xE5] = (self.dig_H4 & 0x0F) | ((self.dig_H5 & 0x0F) << 4)
        regs[0xE6] = _u8(self.dig_H5 >> 4)
        regs[0xE7] = _u8(self.dig_H6)
        return regs

    @classmethod
    def from_registers(cls, regs: Mapping[int, int]) -> Calibration:
        """Decode the calibration from register bytes (keys 0x88–0xA1 and 0xE1–0xE7)."""
        needed = [*range(REG_CALIB_TP, 0xA0), 0xA1, *range(REG_CALIB_H, 0xE8)]
        missing = [reg for reg in needed if reg not in regs]
        if missing:
            listed = ", ".join(f"0x{reg:02X}" for reg in missing)
            raise ValueError(f"calibration bytes missing for registers {listed}")
        b = {reg: regs[reg] & 0xFF for reg in needed}

        def word(reg: int, signed: bool) -> int:
            return (_s16 if signed else _u16)(b[reg], b[reg + 1])

        e5 = b[0xE5]
        return cls(
            dig_T1=word(0x88, False),
            dig_T2=word(0x8A, True),
            dig_T3=word(0x8C, True),
            dig_P1=word(0x8E, False),
            dig_P2=word(0x90, True),
            dig_P3=word(0x92, True),
            dig_P4=word(0x94, True),
            dig_P5=word(0x96, True),
            dig_P6=word(0x98, True),
            dig_P7=word(0x9A, True),
            dig_P8=word(0x9C, True),
            dig_P9=word(0x9E, True),
            dig_H1=b[0xA1],
            dig_H2=word(0xE1, True),
            dig_H3=b[0xE3],
            dig_H4=_s8(b[0xE4]) * 16 + (e5 & 0x0F),
            dig_H5=_s8(b[0xE6]) * 16 + (e5 >> 4),
            dig_H6=_s8(b[0xE7]),
        )

    @classmethod
    def from_blocks(
        cls, tp_block: bytes | Sequence[int], h_block: bytes | Sequence[int]
    ) -> Calibration:
        """Decode from the two burst reads a driver makes: 26 bytes at 0x88, 7 bytes at 0xE1."""
        if len(tp_block) != 26 or len(h_block) != 7:
            raise ValueError(
                f"expected 26 bytes from 0x88 and 7 from 0xE1, got {len(tp_block)} and {len(h_block)}"
            )
        regs = {REG_CALIB_TP + i: v for i, v in enumerate(tp_block)}
        regs.update({REG_CALIB_H + i: v for i, v in enumerate(h_block)})
        return cls.from_registers(regs)


#: Calibration sets modelled on real parts.  ``bmp280_datasheet`` has the T/P trimming of the
#: BMP280 datasheet's worked example (same formulas on the BME280) with humidity trimming of
#: the kind BME280 parts ship with; the other two are within the ranges seen on real parts.
CALIBRATIONS: dict[str, Calibration] = {
    "bmp280_datasheet": Calibration(
        dig_T1=27504, dig_T2=26435, dig_T3=-1000,
        dig_P1=36477, dig_P2=-10685, dig_P3=3024, dig_P4=2855, dig_P5=140,
        dig_P6=-7, dig_P7=15500, dig_P8=-14600, dig_P9=6000,
        dig_H1=75, dig_H2=362, dig_H3=0, dig_H4=313, dig_H5=50, dig_H6=30,
    ),
    "unit_a": Calibration(
        dig_T1=28485, dig_T2=26735, dig_T3=50,
        dig_P1=37987, dig_P2=-10637, dig_P3=3024, dig_P4=7364, dig_P5=-150,
        dig_P6=-7, dig_P7=9900, dig_P8=-10230, dig_P9=4285,
        dig_H1=75, dig_H2=359, dig_H3=0, dig_H4=339, dig_H5=0, dig_H6=30,
    ),
    "unit_b": Calibration(
        dig_T1=28163, dig_T2=26243, dig_T3=50,
        dig_P1=36852, dig_P2=-10650, dig_P3=3024, dig_P4=7042, dig_P5=-110,
        dig_P6=-7, dig_P7=9900, dig_P8=-10230, dig_P9=4285,
        dig_H1=75, dig_H2=370, dig_H3=0, dig_H4=298, dig_H5=50, dig_H6=30,
    ),
}  # fmt: skip
DEFAULT_CALIBRATION = CALIBRATIONS["bmp280_datasheet"]
