"""Sharding a fleet over processes: how many, which boards each, and the shard's command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from hil.sim.fleet import FleetError, FleetOptions, Shard, parse_processes
from hil.sim.fleet_shards import (
    SHARD_DEVICES_MIN,
    auto_processes,
    parse_shard,
    plan_shards,
    shard_command,
)


@pytest.mark.parametrize(
    ("count", "cores", "expected"),
    [
        (1, 2, 1),
        (30, 2, 1),  # a small fleet stays one process
        (SHARD_DEVICES_MIN, 8, 1),
        (SHARD_DEVICES_MIN + 1, 8, 2),  # as many as the count needs ...
        (1000, 2, 2),  # ... but no more than a process per core
        (10_000, 2, 2),
        (10_000, 1, 1),
    ],
)
def test_auto_is_a_process_per_core_or_as_many_as_the_count_needs(count: int, cores: int, expected: int) -> None:
    assert auto_processes(count, cores) == expected


@pytest.mark.parametrize(("count", "processes"), [(1, 1), (10, 3), (1000, 2), (7, 7), (3, 5), (10_000, 7)])
def test_shards_cover_every_board_once_in_contiguous_near_equal_slices(count: int, processes: int) -> None:
    shards = plan_shards(count, processes)
    assert len(shards) == min(count, processes)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert shards[0].start == 0 and shards[-1].stop == count
    assert all(a.stop == b.start for a, b in itertools.pairwise(shards))
    sizes = [s.stop - s.start for s in shards]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert [s.name for s in shards][:2] == ["shard-0", "shard-1"][: len(shards)]


def test_no_shards_for_no_boards() -> None:
    with pytest.raises(ValueError):
        plan_shards(0, 2)
    with pytest.raises(ValueError):
        plan_shards(5, 0)


def test_processes_option() -> None:
    assert parse_processes("auto") is None
    assert parse_processes("3") == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(FleetError, match="--processes"):
            parse_processes(bad)


def test_shard_option_is_a_slice_of_the_fleet() -> None:
    assert parse_shard("1:5:10", 10) == Shard(1, 5, 10)
    for bad in ("1:5:11", "0:5:5", "0:-1:3", "1:2", "a:b:c"):
        with pytest.raises(ValueError):
            parse_shard(bad, 10)


def test_a_shard_runs_the_fleet_command_with_the_parents_options_and_its_slice(tmp_path: Path) -> None:
    options = FleetOptions(
        count=20,
        state_dir=tmp_path / "fleet",
        broker_uri="mqtt://127.0.0.1:1883",
        credentials=tmp_path / "c.json",
        config={"measurement_interval_s": 1},
        app="baseline",
        ca_file=tmp_path / "ca.pem",
        processes=2,
    )
    command = shard_command(options, Shard(1, 10, 20))
    assert command[1:5] == ["-m", "hil", "sim", "fleet"]
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags == {
        "--count": "20",
        "--state-dir": str(tmp_path / "fleet"),
        "--broker-uri": "mqtt://127.0.0.1:1883",
        "--config": json.dumps({"measurement_interval_s": 1}),
        "--shard": "1:10:20",
        "--credentials": str(tmp_path / "c.json"),
        "--app": "baseline",
        "--ca-file": str(tmp_path / "ca.pem"),
    }
