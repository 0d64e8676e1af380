"""Fleet load gate (issue #7): many devices against the broker under test, and a storm.

One load run per module (``hil.load.run``): the virtual fleet (``hil sim fleet``, started as
a process, never imported) publishes through a fault proxy to the session's broker (or
the external ``--broker``), then every connection is reset at once, then (with
``broker_restart_outage_s``) the embedded broker is stopped under the whole fleet and
started again (``hil.load.storm``). Its size and its
thresholds come from ``load_profile`` (``--hil-load-profile``, which ``hil gate load``
passes; without it a CI-sized run). Each threshold is its own test, so the gate's table
says which one failed; the metrics go into the Allure report (the run's setup) and into
``load-metrics.json`` in the log dir, which ``hil gate`` copies into summary.json.

A run that cannot be set up (fleet, proxy, collector) errors in the fixture: broken, not
failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.load.errors import LoadUnsupported
from hil.load.results import LoadResult
from hil.load.run import run_load, write_metrics
from hil.load.storm import RestartStorm, reconnect_chart
from hil.load.target import session_target
from hil.reporting.report import attach_svg

pytestmark = [pytest.mark.hil, pytest.mark.gate_load, pytest.mark.slow]


@pytest.fixture(scope="module")
def load_run(
    hil_session: Any,
    rig: Any,  # the session's rig holds its broker account: none free, the run is skipped saying so
    load_profile: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[LoadResult]:
    firmware = hil_session.firmware().choice
    if firmware and (firmware.endswith(".toml") or os.sep in firmware):
        pytest.skip(f"the virtual fleet runs the virtual rig's recipes; --firmware {firmware} is a manifest")
    try:
        target = session_target(hil_session, load_profile.devices, load_profile)
    except LoadUnsupported as exc:
        pytest.skip(f"no fleet load against this broker: {exc}")
    try:
        workdir = tmp_path_factory.mktemp("load")
        result = run_load(target, load_profile, workdir=workdir, app=firmware)
        write_metrics(hil_session.options.log_dir, request.node.nodeid, result)
        _attach(result, workdir / "fleet.log")
        yield result
    finally:
        if target.restartable is not None:  # the session's broker, back to its own settings
            hil_session.start_broker().apply_limits(None)


def _attach(result: LoadResult, fleet_log: Path) -> None:
    import allure

    allure.attach(json.dumps(result.to_json(), indent=2), "load metrics", allure.attachment_type.JSON)
    allure.attach(result.summary(), "load summary", allure.attachment_type.TEXT)
    if fleet_log.is_file():
        allure.attach.file(str(fleet_log), "fleet log", allure.attachment_type.TEXT)


@pytest.mark.guards("offline_drop")
@pytest.mark.clause("C3.10", "C4.3")
def test_no_reading_is_lost_through_the_load_and_the_storm(load_run: LoadResult, load_profile: Any) -> None:
    loss = load_run.loss
    assert loss.ratio <= load_profile.max_loss, (
        f"{loss.lost} of {loss.expected} readings missing (seq gaps; {loss.ratio:.2%} > max_loss "
        f"{load_profile.max_loss:.2%}); the devices counted {loss.visible} as dropped, so {loss.silent} went "
        f"silently; first missing seqs: {dict(loss.worst)}\n{load_run.summary()}"
    )
    assert loss.reboots == 0, f"{loss.reboots} device reboots under load\n{load_run.summary()}"
    assert load_run.malformed == 0, f"{load_run.malformed} malformed messages\n{load_run.summary()}"


@pytest.mark.clause("C4.2")
def test_the_fleet_keeps_its_rate_in_the_steady_window(load_run: LoadResult, load_profile: Any) -> None:
    ratio = load_run.throughput_msgs_per_s / load_run.expected_msgs_per_s
    assert ratio >= load_profile.min_throughput_ratio, (
        f"{load_run.throughput_msgs_per_s:.1f} readings/s arrived, {ratio:.1%} of the nominal "
        f"{load_run.expected_msgs_per_s:.1f} (< min_throughput_ratio {load_profile.min_throughput_ratio:.0%}); "
        f"the devices' own rate (median, slowest): {load_run.device_rate_hz}\n{load_run.summary()}"
    )


@pytest.mark.clause("C4.2")  # a reading every interval, delivered in time
def test_latency_p99_holds_in_the_steady_window(load_run: LoadResult, load_profile: Any) -> None:
    latency = load_run.latency
    assert latency.p99_s is not None, f"no latency measured: {latency.basis}"
    assert latency.p99_s <= load_profile.max_p99_latency_s, (
        f"p99 latency {latency.p99_s:.3f} s > {load_profile.max_p99_latency_s} s over {latency.samples} readings "
        f"({latency.basis}); p50 {latency.p50_s}, max {latency.max_s}\n{load_run.summary()}"
    )


@pytest.mark.clause("C3.6", "C3.7")
def test_every_device_is_back_soon_after_a_reconnect_storm(load_run: LoadResult, load_profile: Any) -> None:
    storm = load_run.storm
    if storm is None:
        pytest.skip(f"no reconnect storm in this run: {'; '.join(load_run.notes)}")
    assert storm.connections_reset == load_run.devices, f"the storm reset {storm.connections_reset} connections"
    assert storm.recovery_s is not None, (
        f"{len(storm.not_back)} devices never published again after the storm, e.g. {list(storm.not_back[:5])}"
    )
    assert storm.recovery_s <= load_profile.max_storm_recovery_s, (
        f"every device published again {storm.recovery_s:.2f} s after the storm (> {load_profile.max_storm_recovery_s} s; "
        f"all reconnected after {storm.reconnected_s} s)\n{load_run.summary()}"
    )


def _restart(load_run: LoadResult) -> RestartStorm:
    if load_run.restart is None:
        pytest.skip(f"no broker-restart storm in this run (broker_restart_outage_s = 0, or: {'; '.join(load_run.notes)})")
    return load_run.restart


@pytest.mark.guards("no_backoff")
@pytest.mark.clause("C3.6")
def test_the_fleet_backs_off_while_the_broker_is_down(load_run: LoadResult) -> None:
    restart = _restart(load_run)
    assert restart.attempts_in_outage <= restart.max_attempts, (
        f"{restart.attempts_in_outage} connection attempts while the broker was down {restart.outage_s:.1f} s: more "
        f"than the {restart.max_attempts} the contract's backoff (1 s doubling, -20 % at most) allows "
        f"{restart.devices} devices\n{restart.summary()}"
    )


@pytest.mark.clause("C3.6", "C3.7")
def test_every_device_is_back_online_after_a_broker_restart(load_run: LoadResult, load_profile: Any) -> None:
    restart = _restart(load_run)
    attach_svg("reconnects after the broker restart", reconnect_chart(restart))
    assert restart.all_online_s is not None, (
        f"{len(restart.not_back)} devices never came back online after the broker restart, "
        f"e.g. {list(restart.not_back[:5])}\n{restart.summary()}"
    )
    assert restart.all_online_s <= restart.bound_s, (
        f"the last device came back {restart.all_online_s:.2f} s after it could reach the broker: more than the "
        f"longest backoff delay that can be pending plus max_storm_recovery_s {load_profile.max_storm_recovery_s} s "
        f"({restart.bound_s:.2f} s)\n{restart.summary()}"
    )


@pytest.mark.guards("backlog_lifo", "offline_drop")
@pytest.mark.clause("C3.10")
def test_the_offline_queues_drain_in_order_after_a_broker_restart(load_run: LoadResult) -> None:
    restart = _restart(load_run)
    assert not restart.not_drained, (
        f"{len(restart.not_drained)} devices did not publish two fresh readings after the restart, "
        f"e.g. {list(restart.not_drained[:5])}"
    )
    assert not restart.out_of_order, (
        f"{len(restart.out_of_order)} devices delivered their queued readings out of order: seqs that arrived after "
        f"a higher one, e.g. {dict(list(restart.out_of_order.items())[:3])}\n{restart.summary()}"
    )
    assert load_run.loss.lost == 0, f"{load_run.loss.lost} readings lost: {dict(load_run.loss.worst)}"


@pytest.mark.clause("C3.9")  # QoS 1 end to end
def test_the_broker_drops_no_message(load_run: LoadResult, load_profile: Any) -> None:
    if load_run.broker_dropped is None:
        pytest.skip(f"the broker's dropped-message count is unknown: {'; '.join(load_run.notes)}")
    assert load_run.broker_dropped <= load_profile.max_broker_dropped, (
        f"the broker dropped {load_run.broker_dropped} messages (> {load_profile.max_broker_dropped})\n{load_run.summary()}"
    )
