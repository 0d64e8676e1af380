"""Firmware under test: manifests of real builds, recipes of the virtual rig's images, and the
one resolution of ``--firmware`` into what a session flashes."""
