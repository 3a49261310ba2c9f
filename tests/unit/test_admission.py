"""Admission by expected completion (graph/engine/admission.py): measured curves, and the schedule run forward."""

from __future__ import annotations

import pytest

from graph.engine.admission import (
    Curve,
    Lane,
    PrefillTimes,
    StepTimes,
    Work,
    alone_s,
    bucket,
    extra_latency_s,
    plan,
)


def test_buckets_are_powers_of_two() -> None:
    assert [bucket(n) for n in (0, 1, 2, 3, 5, 8, 9, 64, 65)] == [1, 1, 2, 4, 8, 8, 16, 64, 128]


def test_a_warm_up_table_is_interpolated_and_extrapolated() -> None:
    steps = StepTimes()
    assert steps.at(8) == 0.0  # nothing measured: no estimate
    steps.seed({1: 0.010, 2: 0.012, 4: 0.016, 64: 0.080})
    assert steps.at(1) == pytest.approx(0.010) and steps.at(0) == pytest.approx(0.010)
    assert steps.at(3) == pytest.approx(0.014)  # halfway between 2 and 4
    assert steps.at(34) == pytest.approx(0.016 + (0.080 - 0.016) * 30 / 60)
    assert steps.at(128) == pytest.approx(0.080 + (0.080 - 0.016) / 60 * 64)  # on the slope of the last two
    assert steps.table() == {1: 0.010, 2: 0.012, 4: 0.016, 64: 0.080}


def test_traffic_scales_the_table_per_bucket_by_the_median_of_recent_steps() -> None:
    steps = StepTimes()
    steps.seed({1: 0.010, 8: 0.020, 64: 0.080})
    for _ in range(200):  # a machine twice as busy as at warm-up, measured at batch size 8
        steps.record(8, 0.040)
    assert steps.at(8) == pytest.approx(0.040, rel=1e-3)
    assert steps.at(7) == pytest.approx(2 * (0.010 + 0.010 * 6 / 7), rel=1e-3)  # bucket 8: the same ratio
    assert steps.at(64) == pytest.approx(0.160, rel=1e-3)  # no traffic there: the nearest bucket's ratio
    steps.record(1, 0.010)  # bucket 1 measured as the table says: its own ratio, 1
    assert steps.at(1) == pytest.approx(0.010)
    before = steps.at(8)
    steps.record(8, 10.0)  # one step slowed by something else does not move the median
    assert steps.at(8) == pytest.approx(before)
    for _ in range(9):  # a lasting change does, in a little over half the window
        steps.record(8, 0.010)
    assert steps.at(8) == pytest.approx(0.010)


def test_without_a_table_traffic_fills_the_buckets() -> None:
    steps = Curve()
    steps.record(1, 0.010)
    steps.record(8, 0.020)
    assert steps.at(1) == pytest.approx(0.010) and steps.at(7) == pytest.approx(0.020)
    assert steps.at(2) == pytest.approx(0.020)  # unmeasured: the next larger bucket's time (an upper bound)
    assert steps.at(16) == pytest.approx(0.020)  # one bucket past the measured: explored at the measured time
    assert steps.at(64) == pytest.approx(0.020 * 64 / 16)  # further: grown in proportion


def test_extra_latency_is_the_wait_plus_the_slower_batch() -> None:
    steps = StepTimes()
    steps.seed({1: 0.01, 64: 0.05})
    assert extra_latency_s(0.0, 100, steps, join_rows=1, own_rows=1) == 0.0
    assert extra_latency_s(1.0, 100, steps, join_rows=64, own_rows=1) == pytest.approx(5.0)


def flat(step_s: float = 0.01, prefill_s: float = 0.0) -> tuple[StepTimes, PrefillTimes]:
    steps, prefills = StepTimes(), PrefillTimes()
    steps.seed({1: step_s, 1024: step_s})
    if prefill_s:
        prefills.seed({1: prefill_s, 4096: prefill_s})
    return steps, prefills


def run(running, waiting, max_rows=4, fits=lambda rows, span: True, step_s=0.01, prefill_s=0.0):
    steps, prefills = flat(step_s, prefill_s)
    return plan(running, waiting, max_rows=max_rows, fits=fits, steps=steps, prefills=prefills)


def test_a_request_that_fits_finishes_after_its_tokens_at_the_batch_step_time() -> None:
    # 2 rows running with 10 and 30 tokens left; a newcomer of 20 tokens joins at once (rows are free)
    done = run([Work("a", 1, 0, 10, 50), Work("b", 1, 0, 30, 50)], [Work("new", 1, 8, 20, 28)], prefill_s=0.5)
    assert done["new"] == pytest.approx(
        0.5 + 19 * 0.01
    )  # its prefill, then 19 steps (the first token is the prefill's)
    assert done["a"] == pytest.approx(0.5 + 10 * 0.01)  # the rows running pay the newcomer's prefill too
    assert done["b"] == pytest.approx(0.5 + 30 * 0.01)


def test_a_request_waits_for_rows_then_runs() -> None:
    running = [Work(f"r{i}", 1, 0, 10 * (i + 1), 50) for i in range(4)]  # 4 rows: full
    done = run(running, [Work("w", 2, 4, 5, 20), Work("new", 1, 4, 5, 20)])
    assert done["w"] == pytest.approx((20 + 4) * 0.01)  # 2 rows free after 20 steps, then its 4 steps
    assert done["new"] == pytest.approx((24 + 4) * 0.01)  # in order: after "w", whose rows free at step 24


def test_kv_memory_is_a_second_resource() -> None:
    def fits(rows: int, span: int) -> bool:  # room for 200 positions x rows
        return rows * span <= 200

    running = [Work("long", 1, 0, 50, 100)]
    done = run(running, [Work("new", 1, 4, 10, 120)], max_rows=8, fits=fits)
    assert done["new"] == pytest.approx((50 + 9) * 0.01)  # rows are free, KV is not: it waits for "long"
    alone = run([], [Work("new", 1, 4, 10, 120)], max_rows=8, fits=fits)
    assert alone["new"] == pytest.approx(9 * 0.01)  # an empty batch takes any request


def test_the_batch_step_time_is_the_one_of_the_batch_running() -> None:
    steps, prefills = StepTimes(), PrefillTimes()
    steps.seed({1: 0.01, 2: 0.02, 3: 0.03})
    new = Work("new", 1, 0, 21, 10)
    done = plan([Work("a", 2, 0, 10, 10)], [new], max_rows=3, fits=lambda r, s: True, steps=steps, prefills=prefills)
    # 10 steps with 3 rows, then 10 alone
    assert done["new"] == pytest.approx(10 * 0.03 + 10 * 0.01)
    assert alone_s(new, steps=steps, prefills=prefills) == pytest.approx(20 * 0.01)


def test_a_hybrid_nodes_two_lanes_take_turns_and_each_sees_the_other() -> None:
    """Two engines whose steps alternate (a hybrid node's sides): a round costs both lanes' steps while both
    have rows; a lane alone runs at its own step time; each lane's requests are in the result."""
    steps, prefills = flat(0.01, 0.2)
    other_steps, other_prefills = flat(0.05, 0.0)
    new = Work("new", 1, 4, 21, 30)
    other = Lane([Work("o", 1, 0, 8, 30)], [], 4, lambda r, s: True, other_steps, other_prefills)
    done = plan([], [new], max_rows=4, fits=lambda r, s: True, steps=steps, prefills=prefills, beside=[other])
    # its prefill, then 20 steps: the first 8 rounds with the other lane's step in each, 12 alone
    assert done["new"] == pytest.approx(0.2 + 20 * 0.01 + 8 * 0.05)
    assert done["o"] == pytest.approx(0.2 + 8 * (0.01 + 0.05))  # the other lane pays this one's turns too
    idle = Lane([], [], 4, lambda r, s: True, other_steps, other_prefills)
    alone = plan([], [new], max_rows=4, fits=lambda r, s: True, steps=steps, prefills=prefills, beside=[idle])
    assert alone["new"] == pytest.approx(alone_s(new, steps=steps, prefills=prefills))  # an idle lane adds nothing


def test_a_prompt_on_the_prefill_lane_delays_itself_not_the_rows_running() -> None:
    """A long prompt read beside the decode steps (the prefill lane) costs the rows running nothing in the
    plan; its own finish is its prefill later. Read between the steps, it holds every row up as long."""
    running = [Work("a", 1, 0, 10, 50)]
    lane = run(running, [Work("long", 1, 0, 5, 8100, aside=8000)], prefill_s=2.0)
    assert lane["a"] == pytest.approx(10 * 0.01)
    assert lane["long"] == pytest.approx(2.0 + 4 * 0.01)
    between = run(running, [Work("long", 1, 8000, 5, 8100)], prefill_s=2.0)
    assert between["a"] == pytest.approx(2.0 + 10 * 0.01)
    steps, prefills = flat(0.01, 2.0)
    assert alone_s(Work("long", 1, 0, 5, 8100, aside=8000), steps=steps, prefills=prefills) == pytest.approx(2.04)


def test_a_prefill_ratio_from_short_prompts_does_not_scale_a_long_one() -> None:
    prefills = PrefillTimes()
    prefills.seed({16: 0.05, 512: 0.3})
    for _ in range(5):
        prefills.record(32, 0.5)  # short prompts under load: several times their table time
    assert prefills.at(32) == pytest.approx(0.5)  # its bucket: as measured
    assert prefills.at(8000) == pytest.approx(0.3 + 0.25 / 496 * (8000 - 512))  # 8 buckets away: the table's own
    steps = StepTimes()
    steps.seed({1: 0.01, 64: 0.1})
    for _ in range(5):
        steps.record(1, 0.02)
    assert steps.at(64) == pytest.approx(0.2)  # a step ratio applies at any distance (contention)
