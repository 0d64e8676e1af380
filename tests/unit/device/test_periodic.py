"""hil.device.periodic: the spacing check the HIL suites hold periodic topics to (§4)."""

from __future__ import annotations

import itertools

import pytest

from hil.device.periodic import Tolerance, gaps, spacing_problems, wait_timeout


def every(interval: float, count: int, start: float = 100.0) -> list[float]:
    return [start + interval * i for i in range(count)]


def test_an_exact_period_has_no_problem_on_either_clock() -> None:
    times = every(5.0, 6)
    assert spacing_problems(5.0, device_times=times, received_times=[t + 0.03 for t in times]) == []


@pytest.mark.parametrize("factor", [2.0, 3.0, 0.5, 1.15, 0.85])
def test_a_wrong_period_fails_on_the_device_clock(factor: float) -> None:
    problems = spacing_problems(5.0, device_times=every(5.0 * factor, 6))
    assert problems and all("device clock" in p for p in problems), problems


def test_a_wrong_period_fails_on_the_receive_clock_alone() -> None:
    problems = spacing_problems(1.0, device_times=every(1.0, 6), received_times=every(2.0, 6))
    assert problems and all("received" in p for p in problems), problems


def test_one_skipped_period_fails_even_when_the_mean_is_close() -> None:
    times = every(1.0, 14)
    del times[5]  # one gap of 2 s among eleven of 1 s: mean 1.08 s, within 10 %
    problems = spacing_problems(1.0, device_times=times)
    assert len(problems) == 1 and "above" in problems[0], problems


def test_a_burst_fails() -> None:
    times = [0.0, 1.0, 2.0, 2.05, 3.0, 4.0, 5.0]  # mean 0.83 s, and one gap of 50 ms
    assert any("below" in p for p in spacing_problems(1.0, device_times=times))


def test_one_late_delivery_is_within_the_receive_slack() -> None:
    received = every(1.0, 6)
    received[2] += 0.2  # one message 200 ms late: one gap 1.2 s, the next 0.8 s
    assert spacing_problems(1.0, device_times=every(1.0, 6), received_times=received) == []


def test_times_going_backwards_are_a_problem() -> None:
    assert "backwards" in spacing_problems(1.0, device_times=[0.0, 1.0, 0.5, 1.5])[0]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        spacing_problems(1.0, device_times=[0.0, 1.0])
    with pytest.raises(ValueError):
        spacing_problems(0.0, device_times=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError):
        spacing_problems(1.0, device_times=[0.0, 1.0, 2.0], received_times=[0.0, 1.0])
    with pytest.raises(ValueError):
        Tolerance(mean=1.5)


def test_gaps_and_the_wait_timeout() -> None:
    assert gaps([1.0, 3.0, 6.0]) == [2.0, 3.0]
    # Enough for count messages at the longest spacing allowed, from any moment.
    tol = Tolerance()
    for interval, count in itertools.product((1.0, 5.0, 10.0), (3, 7)):
        assert (
            wait_timeout(interval, count, tol) >= (count + 1) * interval * tol.max_ratio - interval
        )
