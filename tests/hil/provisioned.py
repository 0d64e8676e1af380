"""What the session provisioned on the device under test, as the suites need to know it."""

from __future__ import annotations

from hil.device import contract


def setting(hil_session, key: str) -> float:
    """A §5 setting as the session provisions it (else the contract's default)."""
    return float(hil_session.options.config.get(key, contract.CONFIG_INT_SETTINGS[key].default))
