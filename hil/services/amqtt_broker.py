"""``python -m hil.services.amqtt_broker CONFIG``: amqtt, the embedded fallback broker, as a process.

`hil.services.broker.AmqttBroker` writes CONFIG (amqtt's broker config as JSON) and starts this
in its own process group, exactly as it would start mosquitto, so ``stop`` (SIGTERM),
``kill`` (SIGKILL) and the parent-death signal work the same way. Logs go to stderr,
which the broker class points at its log file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


async def serve(config: dict[str, Any]) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down cleanly."""
    from amqtt.broker import Broker

    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m hil.services.amqtt_broker CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(args[0]).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)  # its state machine, every step
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
