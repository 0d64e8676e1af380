"""The one place infrastructure is told from product: by type, never by names or text.

Three kinds of failure, and what each means for a run:

* ``InfrastructureError``: the rig failed, not the device (a port that vanished, a board
  process or broker that died, a flash that could not sync, an observer that cannot
  connect, a fault proxy or labgrid coordinator that failed). The test is *broken*: the
  device was not judged. Its rig is taken out of the run, and a gate re-runs the test.
* ``UsageError``: what was asked is wrong (an option, a rig file, a firmware file). Fixing
  the input fixes it; running again does not.
* Anything else, above all an ``AssertionError`` (``ObserverTimeout``, ``ConsoleTimeout``):
  the device did not keep its contract, or the test itself is wrong.

Error classes across ``hil`` subclass the first two (``BrokerError``, ``ConsoleError``,
``FlashInfrastructureError`` ...; ``RigConfigError``, ``FirmwareError``, ``FlashInputError``
...), keeping their own names for the callers that catch them. A wrapper keeps the kind of
what it wraps when it chains it (``raise SessionError(...) from exc``): `classify` follows
``__cause__``.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["infrastructure", "usage", "product"]

INFRASTRUCTURE_MARKER = "[infrastructure]"
"""The start of every broken test's message (`InfrastructureFailure`): what Allure's
categories match, so a report sorts infrastructure apart whatever the original type was."""


class InfrastructureError(Exception):
    """The rig failed (rig, port, board process, broker, flasher, fault proxy, labgrid,
    observer connection), not the device: the test is broken, not failed."""


class UsageError(Exception):
    """The input is wrong (options, rig files, firmware); the message names it and the fix."""


class InfrastructureFailure(InfrastructureError):
    """What a test stopped by infrastructure reports: the original error is its
    ``__cause__``; the message starts with `INFRASTRUCTURE_MARKER` and says what failed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{INFRASTRUCTURE_MARKER} {what}")
        self.what = what


def _foreign_infrastructure() -> tuple[type[BaseException], ...]:
    """Other libraries' types that mean the link failed: pyserial's (a port that cannot
    be opened or vanished). Imported here, lazily, so this module stays cheap to import."""
    try:
        from serial import SerialException
    except ImportError:  # pragma: no cover - pyserial is a dependency
        return ()
    return (SerialException,)


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (``raise ... from``), outermost first; a cycle
    ends the walk. Only explicit chaining counts: an error raised while *handling* another
    (``__context__``) is not made of it."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        current = current.__cause__
    return chain


def classify(exc: BaseException) -> Kind:
    """The kind of ``exc``: the first exception along its ``__cause__`` chain that is
    typed decides (a usage error is usage even where it subclasses an infrastructure
    error, as ``UnknownRig`` does ``ReservationError``); none typed: product."""
    foreign = _foreign_infrastructure()
    for link in causes(exc):
        if isinstance(link, UsageError):
            return "usage"
        if isinstance(link, (InfrastructureError, *foreign)):
            return "infrastructure"
    return "product"


def is_infrastructure(exc: BaseException) -> bool:
    return classify(exc) == "infrastructure"


def is_usage(exc: BaseException) -> bool:
    return classify(exc) == "usage"


class RigTakenOut(InfrastructureFailure):
    """The rig left the run (its board process or broker died, its port is gone, it could
    not be set up): this test and every later one of its session are broken, saying so;
    other workers' rigs go on."""


def as_infrastructure_failure(exc: BaseException) -> InfrastructureFailure | None:
    """What a test that ``exc`` stopped reports, if ``exc`` is infrastructure by type
    (raise it *from* ``exc``); None if it is not, or is one already."""
    if isinstance(exc, InfrastructureFailure) or not is_infrastructure(exc):
        return None
    lines = str(exc).strip().splitlines()
    return InfrastructureFailure(f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}")
