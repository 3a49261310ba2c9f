"""The step budget in time (graph/engine/chunk_budget.py): a long prompt's chunk beside running rows is sized to
a share of their decode step from the measured per-token cost, with a floor; alone it stays at the chunk size."""

from __future__ import annotations

import pytest

from graph.engine.chunk_budget import MIN_TOKENS, ChunkSizer


def test_no_running_rows_keeps_the_node_chunk_size():
    sizer = ChunkSizer(0.5)
    sizer.decoded(0.070)
    sizer.chunked(512, 0.9)
    assert sizer.size(512, running_rows=0) == 512


def test_sizing_off_keeps_the_node_chunk_size_beside_running_rows():
    sizer = ChunkSizer(None)
    sizer.decoded(0.070)
    sizer.chunked(512, 0.9)
    assert sizer.size(512, running_rows=8) == 512


def test_nothing_measured_yet_starts_at_the_floor():
    sizer = ChunkSizer(0.5)
    assert sizer.size(512, running_rows=8) == MIN_TOKENS
    sizer.decoded(0.070)  # a decode step, but no chunk measured yet
    assert sizer.size(512, running_rows=8) == MIN_TOKENS
    assert sizer.size(2, running_rows=8) == 2  # never above the node's chunk size


def test_the_chunk_is_the_budget_over_the_measured_cost_per_token():
    sizer = ChunkSizer(0.5)
    sizer.decoded(0.070)  # budget 35 ms
    sizer.chunked(512, 0.9)  # 1.76 ms per token at a long context (the measurement)
    assert sizer.budget_s() == pytest.approx(0.035)
    assert sizer.size(512, running_rows=8) == int(0.035 / (0.9 / 512)) == 19
    sizer = ChunkSizer(1.0)
    sizer.decoded(0.070)
    sizer.chunked(100, 0.010)  # cheap tokens: capped at the chunk size
    assert sizer.size(512, running_rows=8) == 512


def test_a_slow_context_hits_the_floor_so_the_prompt_still_advances():
    sizer = ChunkSizer(0.5)
    sizer.decoded(0.010)
    sizer.chunked(16, 0.5)  # 31 ms per token: the budget buys no token
    assert sizer.size(512, running_rows=8) == MIN_TOKENS


def test_feedback_converges_to_a_chunk_that_takes_the_budget():
    """A chunk of k tokens costs f + k u (a forward's fixed cost, then per token): sizing each chunk from the
    last one's measured time settles where a chunk takes the budget, from far above and from the floor."""
    fixed, per_token, decode = 0.008, 0.0005, 0.060
    for first in (512, MIN_TOKENS):
        sizer = ChunkSizer(0.5)
        sizer.decoded(decode)
        k = first
        for _ in range(30):
            sizer.chunked(k, fixed + k * per_token)
            k = sizer.size(512, running_rows=8)
        took = fixed + k * per_token
        assert took == pytest.approx(0.5 * decode, rel=0.1)
        assert k == pytest.approx((0.5 * decode - fixed) / per_token, abs=2)


def test_decode_time_is_a_running_average():
    sizer = ChunkSizer(1.0)
    sizer.decoded(0.100)
    for _ in range(40):
        sizer.decoded(0.050)
    assert sizer.budget_s() == pytest.approx(0.050, rel=0.01)
