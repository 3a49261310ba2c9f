"""What a scored request's generators keep out of their max_wait_s for the scoring after them
(graph/entry/policies/deadline.py, Latencies.scoring_reserve_s)."""

from __future__ import annotations

import pytest

from graph.entry.policies.deadline import Latencies


def test_no_reserve_before_any_scoring_call() -> None:
    assert Latencies().scoring_reserve_s(ahead_texts=100) == 0.0


def test_the_completions_in_flight_are_scored_first_at_the_cheapest_measured_time_per_text() -> None:
    lat = Latencies()
    for _ in range(10):
        lat.record(90.0, texts=2)  # 45 ms a text
    lat.record(640.0, texts=32)  # a batch: 20 ms a text
    assert lat.scoring_reserve_s(ahead_texts=0) == pytest.approx(0.0)  # nothing ahead, calls as fast as ever
    assert lat.scoring_reserve_s(ahead_texts=128) == pytest.approx(128 * 0.020)


def test_scoring_slower_than_its_fastest_call_is_reserved_even_with_nothing_ahead() -> None:
    lat = Latencies()
    for ms in [100.0] * 5 + [3100.0] * 5:  # the machine is busy: calls now take 3 s more
        lat.record(ms, texts=2)
    assert lat.scoring_reserve_s() == pytest.approx(3.0)
