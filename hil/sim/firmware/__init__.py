"""The reference firmware model of the virtual rig."""
