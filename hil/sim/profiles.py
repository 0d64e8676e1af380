"""How real the virtual board is: its profiles, and every figure they use, in one place.

A profile is the physics of one virtual board process (``hil sim board --profile NAME``):
how long the chip and its radio take where a C3 spends time, and what its TCP
connections do when the chip stops. The firmware model runs unchanged on every profile;
only the time things take, and what the broker sees of a reset, change.

* ``default``: today's fast board. Nothing takes time the host does not spend anyway,
  and a reset closes the firmware's connections (the broker sees them closed at once).
  Every suite of CI runs here.
* ``real-board``: a C3 devkit on a lab Wi-Fi. The boot takes the time the boot clock
  models (`hil.sim.bootclock`), the UART and the SPI flash take theirs (`ChipTiming`,
  as ``--realistic-timing``), joining the AP, DHCP, DNS, the TLS handshake and the MQTT
  connect take a C3's time, drawn per boot from the ranges below (seeded jitter: the same
  board and boot count draw the same delays), and a power cut, a reset or a lost AP
  kills TCP silently: no FIN, no RST; the broker learns of it when the keepalive runs
  out (1.5 × keepalive, MQTT 3.1.1 §3.1.2.10).

Each figure says where it comes from; "estimate" marks those no public measurement of a
C3 pins down. docs/virtual-rig.md has the table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A duration in seconds, drawn uniformly from ``low`` to ``high`` (both 0: none)."""

    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high:
            raise ValueError(f"a span needs 0 <= low <= high, not {self.low}..{self.high}")

    def draw(self, rng: random.Random) -> float:
        """One duration; 0.0 without touching ``rng`` for the empty span (the default
        profile draws nothing, so its runs stay exactly as before)."""
        if self.high == 0.0:
            return 0.0
        return rng.uniform(self.low, self.high)

    def __bool__(self) -> bool:
        return self.high > 0.0

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:g} s"
        return f"{self.low:g}–{self.high:g} s"


NONE = Span()


@dataclass(frozen=True)
class BoardProfile:
    """One profile of the virtual board. Frozen: a board process runs one for its life."""

    name: str
    summary: str
    realistic_timing: bool = False
    """UART0 paced at the baud rate and SPI flash work at datasheet durations
    (`hil.sim.timing.ChipTiming`, what ``--realistic-timing`` turns on)."""
    boot_in_real_time: bool = False
    """The ROM, the 2nd-stage bootloader and the app's start-up take, in wall time, the
    time `hil.sim.bootclock` models for them (the boot log's stamps): ~0.2–0.3 s to
    ``app_main`` for the reference image (fitted to the ESP-IDF v5.4.1 C3 boot log of
    SPEC_FACTS §5, where ``main_task`` starts at ~0.25 s for a 50 KB app)."""
    wifi_start: Span = NONE
    """From ``app_main`` to the first scan: ``esp_netif_init``, ``esp_wifi_init`` and
    ``esp_wifi_start`` with the PHY calibration (``phy_init:`` then ``wifi:mode : sta``).
    A C3 log (DroneBridge/ESP32 issue #67) has ``phy_init`` 555 ms and ``wifi:mode`` 585 ms
    after reset; ``app_main`` starts at ~0.25–0.3 s (SPEC_FACTS §5). Estimate."""
    wifi_scan: Span = NONE
    """The station's scan for the configured SSID. ESP-IDF's default active scan spends
    0–120 ms per channel (``WIFI_SCAN_PARAMS_DEFAULT_CONFIG``: active min 0, max 120 ms)
    and ``esp_wifi_connect``'s fast scan stops at the first channel with the SSID; a C3
    log (nodemcu-firmware issue #3660) shows the AP on channel 6 found 110 ms after
    ``wifi:mode : sta``; all 13 channels take ≤ 1.56 s, which is also what a scan that
    finds nothing costs."""
    wifi_join: Span = NONE
    """Authentication, association and the WPA2 4-way handshake: ``init -> auth -> assoc
    -> run`` and ``connected with`` within 20–30 ms in the same C3 log (nodemcu #3660);
    an AP that is slow to answer, or a retried frame, stretches it (estimate: up to
    0.15 s)."""
    dhcp: Span = NONE
    """DHCP DISCOVER/OFFER/REQUEST/ACK and lwIP's ARP check of the offered address
    (``CONFIG_LWIP_DHCP_DOES_ARP_CHECK``, on by default): ``sta ip`` 1.03 s after
    ``connected with`` in the C3 log of nodemcu #3660. A lost DISCOVER is retried after
    0.5, 1, 2, 4 ... s (lwIP), not modelled."""
    dns: Span = NONE
    """One DNS query to the LAN's resolver over Wi-Fi, when the broker is named by host
    name (an IP literal needs none): a round trip plus the resolver's time. Estimate."""
    lan_round_trip: Span = NONE
    """One round trip between the station and a broker on the lab's LAN. The C3 station
    sleeps between beacons by default (``WIFI_PS_MIN_MODEM``: it wakes every DTIM, ESP-IDF
    low-power Wi-Fi guide), so a frame for it can wait up to a beacon interval (102.4 ms)
    at the AP. Both the TCP handshake and the MQTT CONNECT/CONNACK cost one. Estimate from
    those two facts: 10–110 ms."""
    tls_handshake: Span = NONE
    """The TLS 1.2 handshake on the C3's 160 MHz RISC-V core with mbedTLS: the server's
    RSA-2048 or ECDSA P-256 chain verified and an ECDHE P-256 key exchange. The C3 has
    RSA (MPI), SHA and AES accelerators but no ECC one, so the curve work is software.
    Measured on the ESP32 (240 MHz, same mbedTLS): 1.18–1.28 s per handshake
    (micropython-esp32 issue #131); ESP32-S3 with server verification > 3 s per HTTPS
    request (esp-idf issue #10523). The C3's figure is an estimate in that order:
    1.2–2.2 s."""
    silent_tcp_on_reset: bool = False
    """A power cut, any chip reset (EN, watchdog, panic, ``esp_restart``) or a lost AP
    sends nothing: no FIN, no RST, no DISCONNECT. The broker notices when 1.5 × keepalive
    pass without a packet (MQTT 3.1.1 §3.1.2.10; mosquitto, AWS IoT Core's
    ``MQTT_KEEP_ALIVE_TIMEOUT``), and only then publishes the will. See
    `hil.sim.sockets`."""

    def connect_seconds(self, rng: random.Random, *, tls: bool, named_host: bool) -> float:
        """What one broker connection costs before CONNACK, drawn (for reports and tests:
        the firmware draws each part where it happens)."""
        total = self.dns.draw(rng) if named_host else 0.0
        total += self.lan_round_trip.draw(rng) * 2  # TCP handshake, CONNECT/CONNACK
        if tls:
            total += self.tls_handshake.draw(rng)
        return total


DEFAULT = BoardProfile(
    name="default",
    summary="as fast as the host: no modelled delays; a reset closes the firmware's "
    "connections (the broker publishes the will at once)",
)

REAL_BOARD = BoardProfile(
    name="real-board",
    summary="a C3 devkit on a lab Wi-Fi: real boot, UART and flash time; Wi-Fi join, DHCP, "
    "DNS, TLS and MQTT connect times with seeded jitter; power cuts and resets kill TCP "
    "silently (the broker waits 1.5 × keepalive)",
    realistic_timing=True,
    boot_in_real_time=True,
    wifi_start=Span(0.10, 0.30),
    wifi_scan=Span(0.10, 0.80),
    wifi_join=Span(0.02, 0.15),
    dhcp=Span(0.80, 1.60),
    dns=Span(0.02, 0.15),
    lan_round_trip=Span(0.01, 0.11),
    tls_handshake=Span(1.20, 2.20),
    silent_tcp_on_reset=True,
)

PROFILES: dict[str, BoardProfile] = {p.name: p for p in (DEFAULT, REAL_BOARD)}
"""Every profile by name. ``hil.rig.model.VIRTUAL_PROFILES`` lists the same names for the
test side, which never imports the simulator (a unit test holds the two together)."""

ABANDONED_SOCKET_BOUND_EXTRA_S = 10.0
"""An abandoned connection is closed at the latest 2 × its keepalive + this long after the
chip stopped, if its peer never closed it (the broker closes it after 1.5 × keepalive)."""

SCAN_FINDS_NOTHING_S = 13 * 0.120
"""An all-channel active scan at ESP-IDF's default 120 ms per channel: what a join attempt
costs on the real-board profile when the SSID is not on the air."""


def profile_named(name: str) -> BoardProfile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown board profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


def boot_rng(mac: bytes, boots: int) -> random.Random:
    """The jitter of one boot: seeded by the board's MAC and its boot count, so a board
    draws the same delays on the same boot of every run."""
    return random.Random(int.from_bytes(mac, "big") * 1_000_003 + boots)
