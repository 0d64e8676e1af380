"""Before a load run: can this host, and the broker as configured, take the fleet? Each
check says the figure and the fix, so a run that would fail half way (``EMFILE`` in the
proxy at device 9 000, a collector queue that overflows in the storm) stops before it
starts, as infrastructure (`HostLimitError`).

What a fleet of N devices costs, in descriptors (the hard limit is inherited by every
process the run starts, so all are checked against this process's):

* this process: the fault proxy holds two sockets per device (device side, broker
  side), the collector one, plus its own files: ``2 N + FILES_MARGIN``;
* the embedded broker: a socket per client, ``N + FILES_MARGIN`` (it is given that soft
  limit; `hil.services.broker.BrokerLimits`);
* each fleet shard: `FLEET_FILES_PER_BOARD` per board it runs (it lifts its own
  soft limit; only the hard one can stop it).

And in the broker: ``max_queued_messages`` is per client, and the collector is one client
that receives the whole fleet: in the restart storm every device's offline queue arrives
at once, so the limit must hold the storm's backlog, or the broker drops readings.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass

from hil.load.errors import LoadError
from hil.load.storm import longest_pending_delay
from hil.reporting.gate import LoadProfile
from hil.services.broker import FILES_MARGIN, BrokerLimitError, BrokerLimits, check_open_files

FLEET_FILES_PER_BOARD = 3
"""``hil sim fleet``'s descriptors per board (its FILES_PER_BOARD: overlay, lock, socket);
repeated here, as the load run reaches the fleet as a process, never by importing it."""
HOLD_ALLOWANCE_S = 5.0
"""The restart storm holds the devices back until the collector is subscribed again
(paho retries every 1-2 s): what that adds to a device's time offline, at most."""

SHARD_DEVICES_MIN = 250
"""``hil sim fleet --processes auto`` gives a shard no fewer boards (its SHARD_DEVICES_MIN)."""
OBSERVERS = 8
"""Broker clients besides the fleet: the collector, a session's rig and observer, probes."""
PROXY_FILES_PER_DEVICE = 2
OFFLINE_QUEUE = 512  # C3.10: readings a device queues while offline


class HostLimitError(LoadError):
    """This host (or the broker as configured) cannot take the fleet; the message says the
    figure and the fix."""


@dataclass(frozen=True)
class Needs:
    """What a run of ``devices`` needs, worked out before it starts."""

    devices: int
    runner_files: int  # this process (proxy and collector)
    broker_files: int
    shard_files: int  # the largest shard
    storm_backlog: int  # readings the collector may be sent at once after a broker restart

    @property
    def broker(self) -> BrokerLimits:
        return BrokerLimits(clients=self.devices + OBSERVERS)


def shard_count(devices: int, processes: int | str) -> int:
    """How many processes ``hil sim fleet --processes`` runs the boards in (``auto``: one per
    core this process may use, none with fewer than `SHARD_DEVICES_MIN` boards)."""
    if processes != "auto":
        return max(1, min(int(processes), devices))
    return max(1, min(len(os.sched_getaffinity(0)), math.ceil(devices / SHARD_DEVICES_MIN)))


def needs(profile: LoadProfile, *, via_proxy: bool, processes: int | str = "auto") -> Needs:
    devices = profile.devices
    per_shard = math.ceil(devices / shard_count(devices, processes))
    # Readings a device takes while it cannot publish: the outage, the hold for the
    # collector, and the longest backoff delay pending when the broker returns.
    outage = profile.broker_restart_outage_s
    offline_s = outage + HOLD_ALLOWANCE_S + longest_pending_delay(outage + HOLD_ALLOWANCE_S) if outage > 0 else 0.0
    backlog = devices * min(OFFLINE_QUEUE, math.ceil(offline_s * profile.rate_hz) + 1)
    return Needs(
        devices=devices,
        runner_files=(PROXY_FILES_PER_DEVICE * devices if via_proxy else 0) + FILES_MARGIN,
        broker_files=devices + OBSERVERS + FILES_MARGIN,
        shard_files=per_shard * FLEET_FILES_PER_BOARD + FILES_MARGIN,
        storm_backlog=backlog if outage > 0 else 0,
    )


def check_host(
    profile: LoadProfile,
    *,
    via_proxy: bool,
    embedded_broker: bool,
    processes: int | str = "auto",
    limits: tuple[int, int] | None = None,
) -> Needs:
    """Check the fleet (over ``processes`` shards, as ``hil sim fleet --processes``) fits this
    host and the profile's broker settings; lift this process's soft descriptor limit to
    what the proxy needs. Raises `HostLimitError`."""
    found = needs(profile, via_proxy=via_proxy, processes=processes)
    current = limits or resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        check_open_files(
            found.runner_files,
            f"the load run's proxy for {profile.devices} devices (2 sockets each)",
            limits=current,
        )
        if embedded_broker:
            check_open_files(found.broker_files, f"the broker for {profile.devices} devices", limits=current)
        check_open_files(
            found.shard_files,
            f"a fleet process of {math.ceil(profile.devices / shard_count(profile.devices, processes))} devices",
            limits=current,
        )
    except BrokerLimitError as exc:
        raise HostLimitError(str(exc)) from None
    if embedded_broker and 0 < profile.max_queued_messages < found.storm_backlog:
        raise HostLimitError(
            f"[load].max_queued_messages = {profile.max_queued_messages} cannot hold the restart storm's backlog: "
            f"{profile.devices} devices × up to {found.storm_backlog // max(1, profile.devices)} queued readings = "
            f"{found.storm_backlog} messages for the collector at once; raise it to at least {found.storm_backlog} "
            "(or 0, no limit), or shorten broker_restart_outage_s"
        )
    if limits is None:
        raise_soft_limit(found.runner_files)
    return found


def raise_soft_limit(needed: int) -> None:
    """Lift this process's soft descriptor limit to ``needed`` (checked against the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))
