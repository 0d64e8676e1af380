"""The virtual board's profiles (`hil.sim.profiles`): the figures, their documentation, and
how a board and its firmware get them."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
from pathlib import Path

import pytest

from hil.firmware.catalog import build_images, load_recipes
from hil.rig.model import VIRTUAL_PROFILES
from hil.sim.app import AppContext
from hil.sim.board import Board, Mode
from hil.sim.firmware.mqtt_link import BrokerUri, slow_handshake
from hil.sim.flash import SpiFlash
from hil.sim.profiles import (
    DEFAULT,
    PROFILES,
    REAL_BOARD,
    SCAN_FINDS_NOTHING_S,
    BoardProfile,
    Span,
    boot_rng,
    profile_named,
)
from hil.sim.registers import ChipIdentity, parse_mac

ROOT = Path(__file__).resolve().parents[3]
MAC = parse_mac("58:cf:79:01:02:03")
SPANS = [f.name for f in dataclasses.fields(BoardProfile) if f.type in ("Span", Span)]


def test_the_test_side_knows_the_same_profile_names_as_the_simulator() -> None:
    assert tuple(PROFILES) == VIRTUAL_PROFILES
    assert profile_named("real-board") is REAL_BOARD
    with pytest.raises(ValueError, match=r"unknown board profile 'real_board'; known: default, real-board"):
        profile_named("real_board")


def test_a_board_started_with_an_unknown_profile_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    from hil.sim.process import BoardOptions, BoardSetupError, serve_board

    state = tmp_path / "board"
    with pytest.raises(BoardSetupError, match="--profile fast: unknown; use one of default, real-board"):
        asyncio.run(serve_board(BoardOptions(state_dir=state, profile="fast")))
    assert not state.exists()


def test_the_default_profile_is_todays_fast_board_and_draws_nothing() -> None:
    assert not DEFAULT.realistic_timing and not DEFAULT.boot_in_real_time and not DEFAULT.silent_tcp_on_reset
    rng = random.Random(7)
    before = rng.getstate()
    for name in SPANS:
        span = getattr(DEFAULT, name)
        assert not span and span.draw(rng) == 0.0, name
    assert rng.getstate() == before  # no draw at all: the default board's runs stay as they were
    assert DEFAULT.connect_seconds(rng, tls=True, named_host=True) == 0.0


def test_the_real_board_figures_add_up_to_a_c3_s_seconds() -> None:
    profile = REAL_BOARD
    assert profile.realistic_timing and profile.boot_in_real_time and profile.silent_tcp_on_reset
    assert SPANS and all(getattr(profile, name) for name in SPANS)  # every figure is set
    for name in SPANS:
        span = getattr(profile, name)
        assert 0 < span.low <= span.high <= 3.0, (name, span)

    def join(edge: str) -> float:
        return sum(getattr(getattr(profile, n), edge) for n in ("wifi_start", "wifi_scan", "wifi_join", "dhcp"))

    # Wi-Fi up to an address: about a second and a half to three (ESP-IDF logs, nodemcu #3660).
    assert join("low") >= 1.0 and join("high") <= 3.5
    # Then MQTT: two LAN round trips; TLS adds mbedTLS's second or two on the 160 MHz core.
    rng = random.Random(1)
    plain = [profile.connect_seconds(rng, tls=False, named_host=False) for _ in range(200)]
    tls = [profile.connect_seconds(rng, tls=True, named_host=True) for _ in range(200)]
    assert min(plain) >= 0.02 and max(plain) <= 0.22
    assert min(tls) >= 1.2 and max(tls) <= 2.2 + 0.15 + 0.22
    assert pytest.approx(1.56) == SCAN_FINDS_NOTHING_S  # 13 channels × ESP-IDF's 120 ms


def test_a_span_checks_its_bounds_and_says_itself() -> None:
    with pytest.raises(ValueError, match="0 <= low <= high"):
        Span(2.0, 1.0)
    with pytest.raises(ValueError):
        Span(-0.1, 1.0)
    assert str(Span(0.8, 1.6)) == "0.8–1.6 s" and str(Span(1.0, 1.0)) == "1 s"
    rng = random.Random(3)
    assert all(0.8 <= Span(0.8, 1.6).draw(rng) <= 1.6 for _ in range(100))


def test_the_jitter_is_seeded_by_the_board_and_its_boot() -> None:
    first = [boot_rng(MAC, 1).random() for _ in range(2)]
    assert first[0] == first[1]  # the same board, the same boot: the same delays
    assert boot_rng(MAC, 1).random() != boot_rng(MAC, 2).random()
    assert boot_rng(MAC, 1).random() != boot_rng(parse_mac("58:cf:79:01:02:04"), 1).random()


def test_every_figure_is_in_the_docs_table_with_its_value() -> None:
    text = (ROOT / "docs" / "virtual-rig.md").read_text()
    table = text[text.index("## The real-board profile") :]
    for name in SPANS:
        span = getattr(REAL_BOARD, name)
        row = re.search(rf"^\| `{name}` \|[^\n]*$", table, re.M)
        assert row, f"docs/virtual-rig.md has no row for {name}"
        assert str(span) in row.group(0), f"{name}: the docs say {row.group(0)!r}, the profile {span}"


def test_a_broker_named_by_host_needs_dns_and_an_address_does_not() -> None:
    assert BrokerUri.parse("mqtts://broker.lab:8883").named
    assert not BrokerUri.parse("mqtt://127.0.0.1:1883").named
    assert not BrokerUri.parse("mqtt://[::1]:1883").named


def test_the_tls_handshake_costs_the_chip_s_time_only_when_asked() -> None:
    import ssl

    context = ssl.create_default_context()
    plain_class = context.sslsocket_class
    assert slow_handshake(context, 0.0).sslsocket_class is plain_class
    slowed = slow_handshake(context, 1.5).sslsocket_class
    assert issubclass(slowed, ssl.SSLSocket) and slowed.cpu_s == 1.5  # type: ignore[attr-defined]


# -- a board running a profile -----------------------------------------------------------
@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw")
    build_images(load_recipes(), ["baseline"], out)
    return out


def flashed(tmp_path: Path, firmware: Path) -> SpiFlash:
    flash = SpiFlash(tmp_path / "flash.bin")
    for line in (firmware / "flash_args").read_text().splitlines()[1:]:
        offset, name = line.split()
        flash.write(int(offset, 16), (firmware / name).read_bytes())
    return flash


class _Recorder:
    def __init__(self) -> None:
        self.contexts: list[AppContext] = []
        self.started: list[float] = []

    async def run(self, ctx: AppContext) -> None:
        self.contexts.append(ctx)
        self.started.append(time.monotonic())
        await asyncio.Event().wait()


def _boot(tmp_path: Path, firmware: Path, profile: BoardProfile) -> tuple[_Recorder, float, int]:
    app = _Recorder()
    modelled_ms = 0

    async def main() -> float:
        nonlocal modelled_ms
        board = Board(
            flash=flashed(tmp_path, firmware),
            identity=ChipIdentity(mac=MAC),
            app_factory=lambda behaviour: app,
            profile=profile,
        )
        try:
            powered = time.monotonic()
            board.power(True)
            await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
            await asyncio.sleep(0)
            modelled_ms = board.uptime_ms()
            assert board.state()["profile"] == profile.name
            return powered
        finally:
            await board.close()

    powered = asyncio.run(main())
    return app, powered, modelled_ms


def test_on_the_real_board_profile_the_boot_takes_its_modelled_time(tmp_path: Path, firmware: Path) -> None:
    app, powered, modelled_ms = _boot(tmp_path, firmware, REAL_BOARD)
    (ctx,) = app.contexts
    assert ctx.profile is REAL_BOARD and ctx.sockets is not None and ctx.sockets.silent
    assert ctx.jitter.random() == boot_rng(MAC, 1).random()  # seeded by this board's first boot
    waited = app.started[0] - powered
    # The strap latch (0.12 s) and then the ROM, bootloader and app start-up as the boot
    # clock has them (~0.2 s for the reference image): the app starts no earlier.
    assert modelled_ms >= 150
    assert waited >= 0.12 + modelled_ms / 1000 - 0.02


def test_on_the_default_profile_the_app_starts_at_once(tmp_path: Path, firmware: Path) -> None:
    app, powered, _ = _boot(tmp_path, firmware, DEFAULT)
    (ctx,) = app.contexts
    assert ctx.profile is DEFAULT and ctx.sockets is not None and not ctx.sockets.silent
    assert app.started[0] - powered < 0.12 + 0.1  # the strap latch, then no modelled wait


def test_the_timing_the_test_side_declares_bounds_each_profiles_draws() -> None:
    # hil.rig.model.BOARD_TIMINGS is what tests wait by; the simulator draws from
    # hil.sim.profiles. A profile made slower without the declaration would have tests
    # time out on the virtual rig's own figures (or, made faster, wait too little).
    from hil.rig.model import BOARD_TIMINGS
    from hil.sim.profiles import PROFILES

    assert set(BOARD_TIMINGS) == set(PROFILES)
    real, declared = PROFILES["real-board"], BOARD_TIMINGS["real-board"]
    assert declared.wifi_join_s == pytest.approx(real.wifi_start.high + real.wifi_scan.high + real.wifi_join.high + real.dhcp.high)
    assert declared.broker_connect_s == pytest.approx(real.dns.high + 2 * real.lan_round_trip.high)
    assert declared.tls_handshake_s == pytest.approx(real.tls_handshake.high)
    for name, profile in PROFILES.items():
        assert BOARD_TIMINGS[name].silent_tcp_on_reset == profile.silent_tcp_on_reset, name
