"""Fleet load: N virtual devices against the broker under test, measured from outside.

A load run starts ``hil sim fleet`` (many boards' firmware in one process) as a child
process, exactly as `hil.rig.virtual_board` starts one board: it is reached through its first
stdout line and the broker, never by importing ``hil.sim``, so the same measurement works
against any fleet that speaks the device contract. Every board reaches the broker
through one `FaultProxy`, so a reconnect storm is one call (``reset_all``); a collector
(a plain paho subscriber, logged in with the observer account) connects to the broker
directly and sees the storm from the outside.

This module is the run itself, phase by phase; beside it, `hil.load.target` (where the
fleet and the collector connect), `hil.load.fleet` (the fleet process),
`hil.load.collector` and `hil.load.results` (what is measured, and the arithmetic).

What is measured, and how:

* **throughput**: readings (``esp32/+/sensors``) the collector received per second over
  the steady window (``duration_s``), next to what the fleet should publish
  (devices × rate), and the rate the devices themselves took readings at (from their
  timestamps: a fleet process that cannot keep up slows its devices down, it does not
  lose their readings).
* **end-to-end latency**: host wall-clock time when the collector received a reading,
  minus the reading's ``timestamp`` (the device's wall clock when it took the reading;
  DEVICE_CONTRACT.md §4). That spans the device's outbox, its TCP path (the proxy), the
  broker and the delivery to the subscriber. It is only meaningful when the device's
  clock agrees with the host's (the virtual fleet shares the host's clock; a real fleet
  runs SNTP); when readings arrive "before" they were taken (by more than
  `hil.load.results.CLOCK_TOLERANCE_S`), the clocks disagree and the latency is reported
  relative to each device's fastest reading instead (queueing delay above its best case),
  and says so in ``latency.basis``. Only readings received in the steady window count; the storm's
  delayed readings show in the recovery time instead.
* **loss**: per device and boot, ``seq`` starts at 0 and has no gaps (§4), so every
  missing ``seq`` below the highest received one is a lost reading. Visible drops are
  the devices' own ``dropped_readings`` counters (health, asked for with the ``report``
  command at the end); ``silent_loss`` is what the seq gaps show beyond them.
  Duplicates (QoS 1 re-sends after a reconnect) are counted, and are not loss.
* **reconnect storm**: every device's connection is reset at once through the proxy;
  ``reconnected_s`` is when every device has announced ``online`` again, and
  ``recovery_s`` when every device has also published a reading over its new connection
  (the first reading received after its ``online``: a client's messages arrive in order).
* **a broken fleet**: a fleet shard (or the fleet process) that ends on its own during
  the run stops it at once with `FleetBroken`, an infrastructure error naming the shard
  and its devices: its devices' silence is the rig's failure, not lost readings.
* **broker-restart storm** (``broker_restart_outage_s`` > 0, an embedded broker): the
  broker stopped under the full fleet, kept down, started again; attempts while it was
  down against the contract's backoff, the time until every device is online again and
  the reconnect rate over time, and the order the offline queues drained in
  (`hil.load.storm`).
* **limits first**: before anything starts, `hil.load.limits.check_host` checks the
  descriptors this process, the broker and the fleet need, and that the broker's queue
  limit holds the storm's backlog; a host that cannot take the fleet is told the figure
  and the fix.
* **broker drops**: mosquitto's ``$SYS/broker/publish/messages/dropped`` (messages it
  discarded because a client's queue was full), the difference between the start and the
  end of the run, read after two ``$SYS`` updates so the count is current. A broker that
  does not publish it (amqtt, or a broker that hides ``$SYS``) gives ``"unknown"``,
  never 0.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.firmware.catalog import cache_root
from hil.load.collector import SYS_DROPPED, SYS_TICK, FleetCollector, Reading
from hil.load.errors import LoadError
from hil.load.fleet import FleetProcess
from hil.load.limits import check_host
from hil.load.results import Latency, LoadResult, Loss, Storm, device_rates, latency, loss
from hil.load.storm import (
    HOLD_PARTITION_S,
    RestartableBroker,
    RestartStorm,
    failed_attempts,
    listen_overflows,
    longest_pending_delay,
    max_attempts,
    out_of_order,
    wait_seconds,
)
from hil.load.target import LoadTarget, device_ids
from hil.processes import clear_stale, owned_dir
from hil.reporting.gate import LOAD_METRICS_FILE, LoadProfile
from hil.secret import write_private
from hil.services.netfault import FaultProxy

SYS_FIRST_WAIT_S = 3.0  # mosquitto answers the subscription at once (retained $SYS)


@dataclass
class _Clock:
    start: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, event: str) -> float:
        now = time.monotonic()
        self.events.append((now - self.start, event))
        return now


@contextlib.contextmanager
def private_dir(prefix: str) -> Iterator[Path]:
    # Mode 0700 (it holds passwords), named after this process: a SIGKILLed run's is
    # removed by the next one (`hil.processes.clear_stale`), as a session's run dir is.
    root = cache_root() / "run"
    clear_stale(root)
    path = owned_dir(root, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Run:
    """What every phase of one run shares: its size and devices, the collector, the clock
    its timeline is kept on, the notes it hands back, and where progress lines go."""

    profile: LoadProfile
    ids: tuple[str, ...]
    collector: FleetCollector
    clock: _Clock
    notes: list[str]
    progress: Callable[[str], None]


@dataclass(frozen=True)
class _Window:
    """The steady window as measured."""

    seconds: float
    readings: int  # received in the window
    latency: Latency
    device_rates: tuple[float, float] | None
    fleet_cpu_s: float
    fleet_cpu_wait_s: float
    fleet_memory: dict[str, int]


def run_load(
    target: LoadTarget,
    profile: LoadProfile,
    *,
    workdir: Path,
    app: str | None = None,
    storm: bool = True,
    keep_state: bool = False,
    processes: int | str = "auto",
    progress: Callable[[str], None] = lambda _line: None,
) -> LoadResult:
    """Run ``profile`` against ``target`` and measure it; see the module docstring.

    ``processes`` is ``hil sim fleet --processes``: how many shard processes run the
    devices (``auto``: one per core, none with fewer than a few hundred devices).
    ``workdir`` gets the fleet's log (``fleet.log``) and, while it runs, its state (the
    shared base image and a small flash overlay per board; removed afterwards unless
    ``keep_state``). The phases, in
    order: start the fleet, wait until every device has published, the steady window,
    the reconnect storm, the devices' health reports, the broker's drop count.
    """
    ids = device_ids(profile.devices)
    clock = _Clock()
    notes: list[str] = []
    check_host(profile, via_proxy=target.via_proxy, embedded_broker=target.restartable is not None, processes=processes)
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "fleet-state"
    with contextlib.ExitStack() as stack:
        private = stack.enter_context(private_dir("hil-load-"))
        proxy: FaultProxy | None = None
        if target.via_proxy:
            proxy = stack.enter_context(FaultProxy(target.host, target.port, name="fleet-broker"))
        elif storm:
            notes.append("no reconnect storm: the devices reach this TLS broker directly (no loopback proxy)")
            storm = False
        run = _Run(profile, ids, stack.enter_context(FleetCollector(target, ids)), clock, notes, progress)
        dropped_start = _dropped_at_start(run)
        args = [*fleet_args(target, profile, proxy, state_dir, private, app), "--processes", str(processes)]
        progress(f"starting {profile.devices} devices ({app or 'baseline'}, processes {processes}) against {target.name}")
        fleet, started = _start_fleet(run, stack, args, workdir / "fleet.log", state_dir, keep_state=keep_state)
        startup = _wait_all_published(run, fleet) - started
        window = _steady_window(run, fleet)
        storm_result = _storm(run, proxy) if storm and proxy is not None else None
        restart = None
        if profile.broker_restart_outage_s > 0:
            if proxy is None or target.restartable is None:
                notes.append("no broker-restart storm: the broker is not the session's own, or not behind the proxy")
            else:
                restart = _restart_storm(run, proxy, target.restartable)
        final, health = _health_reports(run)
        fleet_cpu = fleet.cpu_seconds()
        end = clock.mark("measurements done")
        dropped = _broker_dropped(run, dropped_start, end)
        _stop_fleet(run, fleet)
        malformed = len(run.collector.malformed)
    return _result(
        run, target.name, app or "baseline", startup=startup, window=window, lost=loss(final, health),
        storm=storm_result, dropped=dropped, fleet_cpu=fleet_cpu, malformed=malformed, restart=restart,
    )  # fmt: skip


def _dropped_at_start(run: _Run) -> int | None:
    """The broker's dropped-message count before the fleet starts (None: it shows none)."""
    sys_ok = run.collector.wait_sys(SYS_DROPPED, count=1, since=0.0, timeout=SYS_FIRST_WAIT_S)
    dropped_start = run.collector.sys_value(SYS_DROPPED) if sys_ok else None
    if dropped_start is None:
        run.notes.append(f"the broker publishes no {SYS_DROPPED} the observer may read: broker drops unknown")
    return dropped_start


def fleet_args(
    target: LoadTarget,
    profile: LoadProfile,
    proxy: FaultProxy | None,
    state_dir: Path,
    private: Path,
    app: str | None,
) -> list[str]:
    """``hil sim fleet``'s arguments; its accounts and CA go to files in ``private``."""
    host, port = (proxy.host, proxy.port) if proxy is not None else (target.host, target.port)
    args = [
        "--count", str(profile.devices),
        "--state-dir", str(state_dir),
        "--broker-uri", f"{'mqtts' if target.tls else 'mqtt'}://{host}:{port}",
        "--config", json.dumps({"measurement_interval_s": profile.interval_s}),
    ]  # fmt: skip
    if target.credentials is not None:
        creds = private / "credentials.json"
        write_private(
            creds,
            json.dumps({d: {"username": u, "password": p.reveal()} for d, (u, p) in target.credentials.items()}),
        )
        args += ["--credentials", str(creds)]
    if target.tls and target.ca_pem:
        ca = private / "ca.pem"
        ca.write_text(target.ca_pem)
        args += ["--ca-file", str(ca)]
    if app:
        args += ["--app", app]
    return args


def _start_fleet(
    run: _Run, stack: contextlib.ExitStack, args: list[str], log: Path, state_dir: Path, *, keep_state: bool
) -> tuple[FleetProcess, float]:
    """The fleet, started; it stops, and its flash files go unless ``keep_state``, when
    ``stack`` closes. Also the time it was started at."""
    started = run.clock.mark("fleet starting")
    fleet = FleetProcess(args, log, count=run.profile.devices)
    stack.callback(lambda: None if keep_state else shutil.rmtree(state_dir, ignore_errors=True))
    stack.enter_context(fleet)
    fleet.when_broken(run.collector.abort)  # every wait of the run raises it from then on
    shards = ", ".join(f"{s['name']} pid {s['pid']}: {s['count']}" for s in fleet.shards)
    run.clock.mark(f"fleet up (pid {fleet.pid}; {shards}), boards booting")
    return fleet, started


def _wait_all_published(run: _Run, fleet: FleetProcess) -> float:
    """When every device had published a reading; a LoadError if some never did."""
    collector, devices = run.collector, run.profile.devices
    silent = collector.wait_each(lambda d: collector.count(d) >= 1, 30.0 + run.profile.interval_s + 0.05 * devices)
    if silent:
        raise LoadError(
            f"{len(silent)} of {devices} devices never published a reading, e.g. {sorted(silent)[:5]}; "
            f"fleet log: {fleet.log}:\n{fleet.tail()}"
        )
    return run.clock.mark("every device has published")


def _steady_window(run: _Run, fleet: FleetProcess) -> _Window:
    """The steady window: it ends when every device has published duration × rate
    readings more (an event, not a sleep), or at a deadline if the fleet falls behind."""
    collector, profile, interval = run.collector, run.profile, run.profile.interval_s
    per_device = max(1, round(profile.duration_s / interval))
    run.progress(f"steady window: {per_device} readings per device")
    before = {d: collector.count(d) for d in run.ids}
    cpu_before, wait_before = fleet.cpu_seconds(), fleet.cpu_wait_seconds()
    window_start = run.clock.mark("steady window starts")
    behind = collector.wait_each(
        lambda d: collector.count(d) >= before[d] + per_device, profile.duration_s * 1.5 + 2 * interval + 5
    )
    window_end = run.clock.mark("steady window ends" + (f" ({len(behind)} devices behind)" if behind else ""))
    cpu_window = fleet.cpu_seconds() - cpu_before
    cpu_wait = fleet.cpu_wait_seconds() - wait_before
    memory = fleet.memory()
    snapshot = collector.snapshot()
    in_window = sum(1 for rs in snapshot.values() for r in rs if window_start <= r.received_mono <= window_end)
    lat = latency(snapshot, window_start, window_end)
    rates = device_rates(snapshot, window_start, window_end)
    if behind:
        run.notes.append(f"{len(behind)} devices had not published {per_device} readings by the window's deadline")
    return _Window(window_end - window_start, in_window, lat, rates, cpu_window, cpu_wait, memory)


def _back_online(collector: FleetCollector, device: str, since: float) -> tuple[float, int] | None:
    """The device's first ``online`` from ``since`` on: when, and its readings received before it."""
    return next(((t, n) for t, n in collector.online[device] if t >= since), None)


def _storm(run: _Run, proxy: FaultProxy) -> Storm:
    """Reset every device's connection at once; measure until each is back online and has
    published over its new connection, then let the outboxes drain."""
    collector = run.collector
    run.progress("reconnect storm: every connection reset at once")
    t0 = run.clock.mark("storm: reset every device's connection")
    reset = proxy.reset_all()
    timeout = max(30.0, 3 * run.profile.max_storm_recovery_s)

    def published_again(d: str) -> bool:
        online = _back_online(collector, d, t0)
        return online is not None and collector.count(d) > online[1]

    not_back = collector.wait_each(published_again, timeout)
    run.clock.mark("storm: every device published again" if not not_back else f"storm: {len(not_back)} not back")
    reconnected, recovery = _storm_times(run, t0, all_back=not not_back)
    storm_result = Storm(reset, reconnected, recovery, tuple(sorted(not_back)))
    if reset != run.profile.devices:
        run.notes.append(f"the storm reset {reset} connections for {run.profile.devices} devices")
    _drain_outboxes(run, t0)
    return storm_result


def _storm_times(run: _Run, t0: float, *, all_back: bool) -> tuple[float | None, float | None]:
    """Seconds from the storm until every device was online again, and until every one had
    also published a reading (None: not every device did)."""
    collector, ids = run.collector, run.ids
    with collector.frozen():
        onlines = [_back_online(collector, d, t0) for d in ids]
        reconnected = None if any(o is None for o in onlines) else max(o[0] for o in onlines if o) - t0
        recovery = None
        if all_back:
            recovery = max(collector.readings[d][o[1]].received_mono for d, o in zip(ids, onlines, strict=True) if o) - t0
    return reconnected, recovery


def _drain_outboxes(run: _Run, t0: float) -> None:
    # Queued readings go out before new ones: two fresh readings per device mean
    # every outbox has drained (or lost what it lost).
    collector = run.collector
    settle_from = {d: (_back_online(collector, d, t0) or (0.0, collector.count(d)))[1] for d in run.ids}
    collector.wait_each(lambda d: collector.count(d) >= settle_from[d] + 2, 3 * run.profile.interval_s + 10)
    run.clock.mark("storm: outboxes drained")


def _restart_storm(run: _Run, proxy: FaultProxy, broker: RestartableBroker) -> RestartStorm:
    """Stop the broker under the full fleet, keep it down ``broker_restart_outage_s``,
    start it again; hold the devices at the proxy until the collector is subscribed again
    (it would miss their backlogs), then measure until every device is online and has
    drained its queue. See `hil.load.storm`."""
    collector, profile = run.collector, run.profile
    outage = profile.broker_restart_outage_s
    # What the broker still holds for the collector when it stops is lost to it without
    # persistence: first let the collector catch up (a reading from every device taken
    # after now), so a reading missing later is the fleet's, not the measurement's.
    behind = collector.caught_up(time.time(), profile.interval_s + profile.max_storm_recovery_s + 30.0)
    run.clock.mark("restart storm: collector caught up" + (f" ({len(behind)} devices not)" if behind else ""))
    if behind:
        run.notes.append(f"before the broker restart, {len(behind)} devices had not delivered a current reading")
    run.progress(f"broker restart storm: the broker down for {outage:g} s under {profile.devices} devices")
    overflows_before = listen_overflows()
    t0 = run.clock.mark("restart storm: broker stopping")
    broker.stop()
    wait_seconds(outage)  # the scenario: the broker stays down this long
    t_hold = run.clock.mark("restart storm: devices held at the proxy, broker starting")
    proxy.partition(HOLD_PARTITION_S)
    attempts = failed_attempts(proxy.timeline, t0, t_hold)
    broker.start()
    t_up = run.clock.mark("restart storm: broker listening")
    if not collector.wait_subscribed(t0, 30.0):
        raise LoadError("the collector did not subscribe again within 30 s of the broker's restart")
    proxy.heal()
    t_open = run.clock.mark("restart storm: devices let through")
    bound = longest_pending_delay(t_open - t0) + profile.max_storm_recovery_s

    def published_again(d: str) -> bool:
        online = _back_online(collector, d, t0)
        return online is not None and collector.count(d) > online[1]

    not_back = collector.wait_each(published_again, bound + 30.0)
    run.clock.mark("restart storm: every device published again" if not not_back else f"restart storm: {len(not_back)} not back")
    with collector.frozen():
        onlines = {d: _back_online(collector, d, t0) for d in run.ids}
    reconnects = tuple(sorted(o[0] - t_open for o in onlines.values() if o is not None))
    never = tuple(sorted(d for d, o in onlines.items() if o is None))
    all_online = None if never else max(reconnects, default=0.0)
    recovery: float | None = None
    if not not_back:
        with collector.frozen():
            recovery = max(collector.readings[d][o[1]].received_mono for d, o in onlines.items() if o) - t_open
    # Queued readings go out before new ones: two fresh readings per device mean its
    # queue has drained (or lost what it lost: the run's seq gaps).
    settle = {d: (o[1] if o else collector.count(d)) for d, o in onlines.items()}
    not_drained = collector.wait_each(lambda d: collector.count(d) >= settle[d] + 2, 3 * profile.interval_s + 10)
    run.clock.mark("restart storm: queues drained")
    overflows_after = listen_overflows()
    return RestartStorm(
        devices=profile.devices,
        outage_s=t_up - t0,
        held_s=t_open - t_up,
        attempts_in_outage=attempts,
        max_attempts=profile.devices * max_attempts(t_hold - t0),
        all_online_s=all_online,
        bound_s=bound,
        recovery_s=recovery,
        not_back=tuple(sorted(set(not_back) | set(never))),
        reconnects=reconnects,
        out_of_order=out_of_order(collector.snapshot(), t0),
        not_drained=tuple(sorted(not_drained)),
        listen_overflows=None if overflows_before is None or overflows_after is None else overflows_after - overflows_before,
    )


def _health_reports(run: _Run) -> tuple[dict[str, list[Reading]], dict[str, tuple[float, dict[str, Any]]]]:
    """The devices' own account of what they dropped (the ``report`` command), and every
    reading received by the time they gave it."""
    collector = run.collector
    report_from = run.clock.mark("asking every device for its health")
    collector.request_reports()
    mute = collector.wait_each(lambda d: d in collector.health and collector.health[d][0] >= report_from, 20.0)
    if mute:
        run.notes.append(f"{len(mute)} devices did not answer the report command, e.g. {sorted(mute)[:5]}")
    final = collector.snapshot()
    with collector.frozen():
        health = {d: h for d, h in collector.health.items() if h[0] >= report_from}
    return final, health


def _broker_dropped(run: _Run, dropped_start: int | None, end: float) -> int | None:
    """What the broker dropped over the run (None: unknown). Two $SYS updates after the
    end: the counter covers the whole run."""
    if dropped_start is None:
        return None
    wait = _sys_wait(run.collector)
    if run.collector.wait_sys(SYS_TICK, count=2, since=end, timeout=wait):
        value = run.collector.sys_value(SYS_DROPPED)
        return None if value is None else value - dropped_start
    run.notes.append(f"no two {SYS_TICK} updates within {wait:.0f} s of the end: broker drops unknown")
    return None


def _stop_fleet(run: _Run, fleet: FleetProcess) -> None:
    if fleet.broken is not None:
        raise fleet.broken
    code = fleet.stop()
    run.clock.mark(f"fleet stopped ({code})")
    if code not in (0, None):
        run.notes.append(f"the fleet exited with {code}; see {fleet.log}")


def _result(
    run: _Run,
    broker: str,
    app: str,
    *,
    startup: float,
    window: _Window,
    lost: Loss,
    storm: Storm | None,
    dropped: int | None,
    fleet_cpu: float,
    malformed: int,
    restart: RestartStorm | None = None,
) -> LoadResult:
    profile, seconds = run.profile, window.seconds
    return LoadResult(
        broker=broker,
        app=app,
        devices=profile.devices,
        rate_hz=profile.rate_hz,
        duration_s=profile.duration_s,
        startup_s=startup,
        window_s=seconds,
        readings_in_window=window.readings,
        throughput_msgs_per_s=window.readings / seconds if seconds > 0 else 0.0,
        expected_msgs_per_s=profile.devices * profile.rate_hz,
        latency=window.latency,
        loss=lost,
        storm=storm,
        broker_dropped=dropped,
        fleet_cpu_s=fleet_cpu,
        fleet_cpu_cores=window.fleet_cpu_s / seconds if seconds > 0 else 0.0,
        fleet_memory=window.fleet_memory,
        fleet_cpu_wait_s=window.fleet_cpu_wait_s,
        device_rate_hz=window.device_rates,
        malformed=malformed,
        notes=tuple(run.notes),
        timeline=tuple(run.clock.events),
        restart=restart,
    )


def _sys_wait(collector: FleetCollector) -> float:
    """Long enough for two $SYS updates at the interval this broker has shown."""
    with collector.frozen():
        ticks = [t for t, _ in collector.sys[SYS_TICK]]
    gaps = [b - a for a, b in itertools.pairwise(ticks) if b > a]
    return 2.5 * (statistics.median(gaps) if gaps else 10.0) + 1.0  # 10 s: mosquitto's default


def write_metrics(log_dir: Path, test: str, result: LoadResult) -> Path:
    """Add ``result`` under ``test`` to ``log_dir/load-metrics.json`` (``hil gate`` copies
    every such file into summary.json under ``load``)."""
    path = log_dir / LOAD_METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        metrics = dict(json.loads(path.read_text()))
    metrics[test] = result.to_json()
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
