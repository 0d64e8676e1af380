"""A network power switch for virtual boards, speaking labgrid's ``rest`` power model.

A lab exports a board's supply as a ``NetworkPowerPort`` (a PDU outlet); labgrid's
``NetworkPowerDriver`` switches it over the network. This switch puts virtual boards'
supplies behind the same interface, so a labgrid exporter can export a virtual board's
power exactly as it exports a real outlet (``model: rest``,
``host: http://127.0.0.1:PORT/outlet/{index}``, ``index: N``):

- ``GET /outlet/N`` answers ``1`` (on) or ``0`` (off);
- ``PUT /outlet/N`` with the body ``1`` or ``0`` switches it.

Each outlet is a board's control endpoint (its ``power`` command); nothing here knows
the board's internals.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from hil.rig.backends import Control

_PATH = re.compile(r"^/outlet/(\d+)$")


class VirtualPdu:
    """An HTTP power switch on 127.0.0.1 whose outlets are boards' control endpoints."""

    def __init__(self, outlets: Mapping[int, Control]) -> None:
        self.outlets = dict(outlets)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the switch first"
        return int(self._server.server_address[1])

    @property
    def url_template(self) -> str:
        """labgrid's ``NetworkPowerPort.host`` for ``model: rest``."""
        return f"http://127.0.0.1:{self.port}/outlet/{{index}}"

    def start(self) -> VirtualPdu:
        outlets = self.outlets

        class Handler(BaseHTTPRequestHandler):
            def _outlet(self) -> Control | None:
                match = _PATH.match(self.path)
                control = outlets.get(int(match.group(1))) if match else None
                if control is None:
                    self._answer(404, f"no outlet {self.path}; outlets: {sorted(outlets)}\n")
                return control

            def _answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                control = self._outlet()
                if control is not None:
                    powered = control.request("state")["state"]["powered"]
                    self._answer(200, "1" if powered else "0")

            def do_PUT(self) -> None:
                control = self._outlet()
                if control is None:
                    return
                value = self.rfile.read(int(self.headers.get("Content-Length") or 0)).strip()
                if value not in (b"0", b"1"):
                    self._answer(400, "send 1 (on) or 0 (off)\n")
                    return
                control.request("power", action="on" if value == b"1" else "off")
                self._answer(200, value.decode())

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the board's own log says what the supply did

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="virtual-pdu", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> VirtualPdu:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
