"""Reset causes of the ESP32-C3 as the ROM prints them and as ESP-IDF reports them.

The ROM prints a hardware code (``rst:0xc (RTC_SW_CPU_RST)``); ``esp_reset_reason()``
refines it with a hint the app stores in RTC memory before a software reset (SPEC_FACTS
§2). Both views are modelled so the serial port and the firmware's health payload can
be checked against each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class RomResetCode(IntEnum):
    POWERON = 0x01
    RTC_SW_SYS_RST = 0x03
    DSLEEP = 0x05
    TG0WDT_SYS_RST = 0x07
    TG1WDT_SYS_RST = 0x08
    RTCWDT_SYS_RST = 0x09
    RTC_SW_CPU_RST = 0x0C
    RTCWDT_RTC_RST = 0x10
    USB_UART_CHIP_RESET = 0x15


# esp_reset_reason() for a hardware code when no hint is stored (IDF v5, C3).
_IDF_REASON_BY_CODE = {
    RomResetCode.POWERON: "POWERON",
    RomResetCode.RTC_SW_SYS_RST: "SW",
    RomResetCode.DSLEEP: "DEEPSLEEP",
    RomResetCode.TG0WDT_SYS_RST: "TASK_WDT",
    RomResetCode.TG1WDT_SYS_RST: "INT_WDT",
    RomResetCode.RTCWDT_SYS_RST: "WDT",
    RomResetCode.RTC_SW_CPU_RST: "SW",
    RomResetCode.RTCWDT_RTC_RST: "WDT",
    RomResetCode.USB_UART_CHIP_RESET: "USB",
}

# Hints an app may leave before a software reset; only these refine RTC_SW_CPU_RST.
RESET_HINTS = frozenset({"SW", "PANIC", "INT_WDT", "TASK_WDT", "BROWNOUT"})


@dataclass(frozen=True)
class ResetCause:
    """One reset: the hardware code and, for software resets, the app's hint."""

    code: RomResetCode
    hint: str | None = None

    def __post_init__(self) -> None:
        if self.hint is not None and self.hint not in RESET_HINTS:
            raise ValueError(f"unknown reset hint {self.hint!r}; expected one of {sorted(RESET_HINTS)}")

    @property
    def rom_line(self) -> str:
        """The ``rst:`` part of the ROM banner."""
        return f"rst:0x{self.code:x} ({self.code.name})"

    @property
    def idf_reason(self) -> str:
        """``esp_reset_reason()`` without the ``ESP_RST_`` prefix."""
        if self.code is RomResetCode.RTC_SW_CPU_RST and self.hint is not None:
            return self.hint
        return _IDF_REASON_BY_CODE[self.code]


POWER_ON = ResetCause(RomResetCode.POWERON)
