"""Rigs: the inventory of rig files, reservation, the backends a rig's power, sensor and
network are driven by, and the processes that stand in for lab hardware (virtual board,
virtual PDU, ser2net, labgrid places)."""
