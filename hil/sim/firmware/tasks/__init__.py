"""The reference firmware's tasks, one module each, all holding one ``shared.Firmware``.

``hil.sim.firmware.reference`` wires them together for one boot. Each module is in
``hil.sim.mutation.TRACED_MODULES`` (mutants name them by their short names, which must
not clash with another traced module's); this package imports none of them itself.
"""
