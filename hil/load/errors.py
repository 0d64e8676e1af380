"""The load run's two errors: one for a run that could not be set up or driven, one for a
broker that cannot be loaded this way (a test skips on it, saying why)."""

from __future__ import annotations


class LoadError(Exception):
    """The load run could not be set up or driven (an infrastructure problem)."""


class LoadUnsupported(LoadError):
    """The broker under test cannot be loaded this way (the message says why)."""
