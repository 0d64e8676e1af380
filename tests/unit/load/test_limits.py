"""Before a load run: the host's descriptor limits and the broker's queue limit against the
fleet, each refusal with its figure and its fix; the embedded broker sized for the fleet
(and a session's broker left as it was)."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest

from hil.load.limits import HostLimitError, check_host, needs
from hil.reporting.gate import LoadProfile
from hil.services.broker import BrokerLimitError, BrokerLimits, MosquittoBroker

UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def test_a_fleet_needs_two_descriptors_per_device_here_and_one_in_the_broker() -> None:
    found = needs(LoadProfile(devices=10_000, rate_hz=0.1, duration_s=120), via_proxy=True)
    assert (found.runner_files, found.broker_files) == (20_064, 10_072)
    assert needs(LoadProfile(devices=10_000, rate_hz=0.1, duration_s=120), via_proxy=False).runner_files == 64


def test_a_hard_limit_below_the_need_is_refused_with_the_figure_and_the_fix() -> None:
    profile = LoadProfile(devices=10_000, rate_hz=0.1, duration_s=120, max_queued_messages=0)
    with pytest.raises(HostLimitError) as refused:
        check_host(profile, via_proxy=True, embedded_broker=True, limits=(1024, 20_000))
    message = str(refused.value)
    assert "needs 20064 open files but the hard limit here is 20000" in message
    assert "ulimit -Hn 20064" in message and "LimitNOFILE=20064" in message
    # Straight to the broker (bench/fleet.py) and over two shards, 20 000 is enough for 10 000 devices;
    # in one fleet process it is not (3 per board).
    assert check_host(profile, via_proxy=False, embedded_broker=True, processes=2, limits=(1024, 20_000)).shard_files == 15_064
    with pytest.raises(HostLimitError, match="a fleet process of 10000 devices needs 30064 open files"):
        check_host(profile, via_proxy=False, embedded_broker=True, processes=1, limits=(1024, 20_000))
    assert check_host(profile, via_proxy=True, embedded_broker=True, processes=1, limits=UNLIMITED).devices == 10_000


def test_a_broker_queue_too_short_for_the_restart_storms_backlog_is_refused() -> None:
    storm = LoadProfile(devices=2000, rate_hz=1.0, duration_s=60, broker_restart_outage_s=5.0, max_queued_messages=10_000)
    with pytest.raises(HostLimitError, match=r"max_queued_messages = 10000 cannot hold .* raise it to at least \d+"):
        check_host(storm, via_proxy=True, embedded_broker=True, limits=UNLIMITED)
    roomy = LoadProfile(devices=2000, rate_hz=1.0, duration_s=60, broker_restart_outage_s=5.0, max_queued_messages=0)
    assert check_host(roomy, via_proxy=True, embedded_broker=True, limits=UNLIMITED).storm_backlog > 10_000
    # Without a restart storm, or against a broker the run does not configure, nothing to check.
    check_host(LoadProfile(devices=2000, broker_restart_outage_s=0), via_proxy=True, embedded_broker=True, limits=UNLIMITED)
    check_host(storm, via_proxy=True, embedded_broker=False, limits=UNLIMITED)


def config(broker: MosquittoBroker) -> str:
    return broker._write_config().read_text()


def test_a_session_broker_keeps_its_config_and_a_fleet_broker_gets_the_profiles(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    default = config(broker)
    assert "persistence true\n" in default and "max_queued_messages 10000\n" in default
    broker.apply_limits(BrokerLimits(clients=500, max_queued_messages=123, persistence=False))
    sized = config(broker)
    assert "persistence false\n" in sized and "max_queued_messages 123\n" in sized
    broker.apply_limits(None)
    assert config(broker) == default


def test_the_broker_is_given_the_descriptors_and_refuses_what_the_host_cannot(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    broker = MosquittoBroker(tmp_path / "broker")
    with broker:
        wanted = BrokerLimits(clients=min(soft + 100, hard) - 64)  # above the soft limit it inherits
        broker.apply_limits(wanted)  # running: prlimit, then a reload
        assert broker.open_files_limit() == max(soft, wanted.open_files)
        broker.restart()  # started afresh: the soft limit is set before it runs
        assert broker.open_files_limit() == max(soft, wanted.open_files)
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(BrokerLimitError, match=f"needs {hard + 1} open files but the hard limit here is {hard}"):
                broker.apply_limits(BrokerLimits(clients=hard + 1 - 64))


def test_the_load_profiles_name_the_broker_and_the_restart_storm(tmp_path: Path) -> None:
    from hil.reporting.gate import GateError, load_profile

    gate, ci = load_profile("load").load, load_profile("load-ci").load
    assert gate is not None and ci is not None
    assert (gate.broker_persistence, gate.broker_restart_outage_s) == (True, 5.0)
    assert (ci.devices, ci.broker_restart_outage_s) == (50, 3.0)
    assert LoadProfile().broker_restart_outage_s == 3.0  # CI-sized: the storm runs in CI too
    for line, error in (
        ("broker_persistence = 1", "must be true or false"),
        ("max_queued_messages = -1", "0 (no limit) or more"),
        ("max_queued_messages = 1.5", "must be an integer"),
        ("broker_restart_outage_s = -2", "0 (no restart storm) to 600"),
    ):
        profile = tmp_path / "bad.toml"
        profile.write_text(f'[gate]\ntests = ["tests/hil/test_load.py"]\n[load]\n{line}\n')
        with pytest.raises(GateError, match=re.escape(error)):
            load_profile(str(profile))
