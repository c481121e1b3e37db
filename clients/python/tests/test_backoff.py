"""Backoff as ``cubbyhole unwrap``'s: 0.5 s doubling to 8 s, jittered in the upper half of each
step; waits before asking again are the larger of Retry-After and the backoff, at most 30 s."""

from __future__ import annotations

import pytest

from cubbyhole_agent.backoff import MAX_BACKOFF, MAX_WAIT, backoff, backoff_ceiling, retry_wait


def test_ceiling_doubles_from_half_a_second_and_is_capped() -> None:
    assert [backoff_ceiling(r) for r in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_ceiling(10) == MAX_BACKOFF == 8.0
    assert backoff_ceiling(2**40) == MAX_BACKOFF


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 10, 2**31])
def test_delays_are_in_the_upper_half_and_spread_apart(retry: int) -> None:
    ceiling = backoff_ceiling(retry)
    delays = [backoff(retry) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # Two hundred agents retrying together spread over the upper half of the delay.
    assert max(delays) - min(delays) > ceiling / 4
    assert len(set(delays)) > 150


def test_retry_after_wins_when_longer_and_waits_are_capped() -> None:
    assert 0.25 <= retry_wait(0) <= 0.5
    assert retry_wait(0, 3.0) == 3.0
    assert 4.0 <= retry_wait(4, 1.0) <= 8.0
    assert retry_wait(0, 100.0) == MAX_WAIT == 30.0
    assert retry_wait(20, None) <= MAX_BACKOFF
