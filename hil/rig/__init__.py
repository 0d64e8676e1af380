"""Rigs: the rig model (`model`), the inventory of rig files that builds it (`rigfile`),
picking rigs (`selection`) and holding one for a session (`reservation`, or a labgrid
place: `labgrid`), the errors of all these (`errors`), the backends a rig's power, sensor
and network are driven by (`backends`, built from the rig file by `wiring`), a reserved
rig driven as its kind is (`attached`: one class per kind behind one small protocol), and
the processes that stand in for lab hardware (virtual board, virtual PDU, ser2net)."""
