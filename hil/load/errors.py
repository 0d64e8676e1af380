"""The load run's errors: one for a run that could not be set up or driven, one for a
fleet that broke under it (a shard process died), and one for a broker that cannot be
loaded this way (a test skips on it, saying why).

All are infrastructure (`hil.errors.InfrastructureError`): the rig failed, not the
devices; a gate reports the run as broken, not as a product failure."""

from __future__ import annotations

from hil.errors import InfrastructureError


class LoadError(InfrastructureError):
    """The load run could not be set up or driven (an infrastructure problem)."""


class FleetBroken(LoadError):
    """The fleet under load stopped being whole: a shard process (or the fleet process)
    ended on its own. The message names it and the devices it took with it."""


class LoadUnsupported(LoadError):
    """The broker under test cannot be loaded this way (the message says why)."""
