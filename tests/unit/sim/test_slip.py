"""SLIP framing: round trips under any chunking, and the ROM's tolerance of noise."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from hil.sim.slip import SlipDecoder, slip_encode

payloads = st.lists(st.binary(min_size=1, max_size=64), max_size=8)
# Noise between frames never contains 0xC0: a stray delimiter would open a frame.
noise = st.binary(max_size=8).map(lambda b: b.replace(b"\xc0", b""))


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


@given(
    frames=payloads,
    gaps=st.lists(noise, min_size=9, max_size=9),
    cuts=st.lists(st.integers(0, 10_000)),
)
def test_round_trip_with_noise_and_any_chunking(
    frames: list[bytes], gaps: list[bytes], cuts: list[int]
) -> None:
    stream = gaps[0] + b"".join(
        slip_encode(f) + gap for f, gap in zip(frames, gaps[1:], strict=False)
    )
    decoder = SlipDecoder()
    out: list[bytes] = []
    for chunk in _chunked(stream, cuts):
        out += decoder.feed(chunk)
    assert out == frames


@given(payload=st.binary(max_size=64))
def test_encoding_escapes_delimiters(payload: bytes) -> None:
    encoded = slip_encode(payload)
    assert encoded[0] == encoded[-1] == 0xC0
    assert 0xC0 not in encoded[1:-1]


def test_escapes_are_the_rom_ones() -> None:
    assert slip_encode(b"\xc0\xdb") == b"\xc0\xdb\xdc\xdb\xdd\xc0"


def test_bad_escape_drops_only_that_frame() -> None:
    decoder = SlipDecoder()
    stream = b"\xc0ab\xdb\x01cd\xc0" + slip_encode(b"next")
    assert decoder.feed(stream) == [b"next"]


def test_empty_frames_are_not_reported() -> None:
    assert SlipDecoder().feed(b"\xc0\xc0\xc0\xc0") == []


def test_resynchronises_when_started_mid_frame() -> None:
    """Joining mid-frame, the old frame's closing 0xC0 looks like an opening one."""
    decoder = SlipDecoder()
    assert decoder.feed(b"tail of an old frame\xc0" + slip_encode(b"A") + slip_encode(b"B")) == [
        b"A",
        b"B",
    ]


def test_escape_split_across_chunks() -> None:
    decoder = SlipDecoder()
    assert decoder.feed(b"\xc0x\xdb") == []
    assert decoder.feed(b"\xdcy\xc0") == [b"x\xc0y"]
