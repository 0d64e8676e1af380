"""SLIP framing as the ESP32-C3 ROM loader and the flasher stub speak it.

Frames are delimited by 0xC0; inside a frame 0xDB is sent as ``DB DD`` and 0xC0 as
``DB DC`` (SPEC_FACTS §1.1). The decoder is deliberately forgiving in the ways the
chip is: bytes outside a frame are dropped, a bad escape drops the frame, and an
empty frame is never reported. The last rule keeps the decoder in step with the
host even if it starts listening in the middle of a frame: a closing 0xC0 taken for
an opening one is followed by the next frame's opening 0xC0, which then simply
restarts the (still empty) frame instead of producing a bogus empty one.
"""

from __future__ import annotations

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD


def slip_encode(payload: bytes) -> bytes:
    """Return ``payload`` as one SLIP frame, delimiters included."""
    escaped = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + escaped + b"\xc0"


class SlipDecoder:
    """Incremental SLIP decoder: feed it raw bytes in any chunking, get whole frames.

    ``max_frame`` bounds what one frame may hold: past it the decoder keeps no more bytes
    (a host that never closes its frame cannot grow memory) and reports the frame cut to
    ``max_frame + 1`` bytes when it does close, so the receiver sees it was too long."""

    def __init__(self, max_frame: int | None = None) -> None:
        self._max = max_frame
        self._frame = bytearray()
        self._in_frame = False
        self._in_escape = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data`` and return the frames it completed, in order."""
        frames: list[bytes] = []
        for byte in data:
            if byte == END:
                if self._in_frame and self._frame and not self._in_escape:
                    frames.append(bytes(self._frame))
                    self._in_frame = False
                else:
                    # Opening delimiter, or a restart after an empty/broken frame.
                    self._in_frame = True
                self._frame.clear()
                self._in_escape = False
            elif not self._in_frame:
                continue
            elif self._in_escape:
                self._in_escape = False
                if byte in (ESC_END, ESC_ESC):
                    if self._max is None or len(self._frame) <= self._max:
                        self._frame.append(END if byte == ESC_END else ESC)
                else:
                    self._drop_frame()
            elif byte == ESC:
                self._in_escape = True
            elif self._max is None or len(self._frame) <= self._max:
                self._frame.append(byte)
        return frames

    def _drop_frame(self) -> None:
        """Forget a frame with a bad escape; resynchronise on the next 0xC0."""
        self._frame.clear()
        self._in_frame = False
        self._in_escape = False
