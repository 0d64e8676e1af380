"""The bench engineer's tools behind ``hil sim up|down|status``, ``hil broker``, ``hil flash``,
``hil provision``, ``hil monitor``, ``hil sensor`` and ``hil power``.

One module per command group; the CLI only parses arguments and prints. Processes a bench
command leaves running (virtual boards, a fleet, a test broker) are recorded in a *bench
state dir* (`hil.bench.state`) so that a later command finds, lists and stops them.
"""
