"""Admission by expected completion (graph/engine/admission.py): step times per batch size and the lateness estimate."""

from __future__ import annotations

import pytest

from graph.engine.admission import StepTimes, bucket, extra_latency_s


def test_buckets_are_powers_of_two() -> None:
    assert [bucket(n) for n in (0, 1, 2, 3, 5, 8, 9, 64, 65)] == [1, 1, 2, 4, 8, 8, 16, 64, 128]


def test_step_times_are_measured_per_batch_size_and_bounded_where_unmeasured() -> None:
    steps = StepTimes()
    assert steps.at(8) == 0.0  # nothing measured: no estimate (the first requests are admitted)
    steps.record(1, 0.010)
    steps.record(8, 0.020)
    assert steps.at(1) == pytest.approx(0.010) and steps.at(7) == pytest.approx(0.020)
    assert steps.at(2) == pytest.approx(0.020)  # unmeasured: the next larger batch's time (an upper bound)
    assert steps.at(16) == pytest.approx(0.020)  # one bucket past the measured: explored at the measured time
    assert steps.at(64) == pytest.approx(0.020 * 64 / 16)  # further: grown in proportion from the explored one
    for seconds in (0.030, 0.5, 0.022):  # the median of the recent steps: one slow step does not swing it
        steps.record(8, seconds)
    assert steps.at(8) == pytest.approx(0.026)


def test_extra_latency_is_the_wait_plus_the_slower_batch() -> None:
    steps = StepTimes()
    steps.record(1, 0.01)
    steps.record(64, 0.05)
    # alone: no wait, no slowdown; joining 64 rows: 100 tokens x 40 ms slower per step = 4 s, plus 1 s of wait
    assert extra_latency_s(0.0, 100, steps, join_rows=1, own_rows=1) == 0.0
    assert extra_latency_s(1.0, 100, steps, join_rows=64, own_rows=1) == pytest.approx(5.0)
