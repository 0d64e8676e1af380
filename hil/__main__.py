"""``python -m hil`` is the ``hil`` command."""

import sys

if sys.argv[1:3] in (["sim", "board"], ["sim", "fleet"]):
    # bench/mutate.py: a mutant of a firmware module and a line recorder, in the board's
    # process only, set up before anything imports the firmware (no-op unless asked).
    from hil.sim.mutation import install_from_environment

    install_from_environment()

from hil.cli import main

sys.exit(main())
