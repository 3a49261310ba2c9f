"""The batch KV buffers reserve the rows in use, not every row slot (issue 32): onnx and torch, on tiny models.

`OnnxKVCache` and torch's `BatchKVCache` used to allocate `row_capacity` (the node's max_batch_size)
rows times the longest row's columns, so one long row among a few short ones reserved 64 x its length
(23 GB on SmolLM2 after an 8,000-token prompt). They now hold the live rows rounded up to a power of
two and re-size whenever they move. These tests drive the real runners as the scheduler does
(prefill, add_rows, decode, remove_rows) and check what the buffers hold and the tokens they give.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from graph.engine.scheduler import RIGHT_ROOM
from graph.params import GenerationParams as GP
from tests.graph import test_onnx_runtime as tor

ROW_CAPACITY = 64
onnx_source, onnx_dir = tor.onnx_source, tor.onnx_dir  # the tiny llama with 16-dim heads, converted to onnx
PLANNED = 32  # the scheduler's planned prompt columns, small here so that a long row outgrows them


@pytest.fixture(scope="module")
def onnx_runner(onnx_dir, onnx_source):
    from graph.engine.runners.onnx_runner import OnnxRunner

    return OnnxRunner(onnx_dir, source_dir=onnx_source, precision="fp32")


@pytest.fixture(scope="module")
def torch_runner(onnx_source):
    from graph.engine.runners.torch_runner import ModelRunner
    from tests.graph.test_engine import load

    model, _ = load(onnx_source)
    return ModelRunner(model)


@pytest.fixture(scope="module", params=["onnx", "torch"])
def runner(request, onnx_runner, torch_runner):
    return onnx_runner if request.param == "onnx" else torch_runner


def buffer_bytes(cache) -> int:
    """Bytes the batch buffers really hold (numpy arrays or torch tensors)."""
    if hasattr(cache, "slabs"):
        return sum(t.numel() * t.element_size() for layer in cache.slabs for t in (layer.kbuf, layer.vbuf))
    return sum(a.nbytes for a in (*cache.keys, *cache.values))


def buffer_address(cache) -> int:
    """Where the first layer's keys live (a move makes new buffers)."""
    return cache.slabs[0].kbuf.data_ptr() if hasattr(cache, "slabs") else cache.keys[0].ctypes.data


def prompt(runner, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, runner.vocab_size, (n,), generator=g).tolist()


class Batch:
    """Greedy rows on one batch cache, driven as graph/engine/scheduler.py drives a runner."""

    def __init__(self, runner, cache) -> None:
        self.runner, self.cache = runner, cache
        self.last: list[int] = []  # each row's last token
        self.pos: list[int] = []  # each row's next position

    def join(self, ids: list[int]) -> None:
        t = torch.tensor([ids])
        logits, pre = self.runner.prefill(t, torch.ones_like(t, dtype=torch.bool))
        self.cache.add_rows(pre, [0], RIGHT_ROOM)
        self.last.append(int(logits.argmax(-1)))
        self.pos.append(len(ids))

    def step(self) -> list[int]:
        ids = torch.tensor([[t] for t in self.last])
        logits = self.runner.decode(ids, torch.tensor([[p] for p in self.pos]), self.cache, RIGHT_ROOM)
        self.last = logits.argmax(-1).tolist()
        self.pos = [p + 1 for p in self.pos]
        return list(self.last)

    def leave(self, rows: list[int]) -> None:
        order = self.cache.remove_rows(rows)
        self.last = [self.last[i] for i in order]
        self.pos = [self.pos[i] for i in order]


def new_batch(runner) -> Batch:
    return Batch(runner, runner.new_cache(ROW_CAPACITY, PLANNED + RIGHT_ROOM, left_room=PLANNED))


def test_a_long_row_among_short_ones_reserves_rows_in_use_not_every_slot(runner):
    """3 short rows, then a 300-token row: the buffers hold 4 rows (not 64) x about the long row's columns,
    and kv_buffer_mb's formula (reserved_rows x capacity x bytes per token) is what they really hold."""
    per_token = runner.kv_bytes_per_token()
    b = new_batch(runner)
    for i in range(3):
        b.join(prompt(runner, 5, i))
    b.step()
    b.join(prompt(runner, 300, 9))
    b.step()
    c = b.cache
    assert c.rows == 4 and c.reserved_rows == 4
    assert buffer_bytes(c) == c.reserved_rows * c.capacity * per_token
    # the columns: the long row plus the right room (torch's right-aligned layout: the room on the left it needed)
    assert c.length >= 301 and c.capacity <= 301 + RIGHT_ROOM + PLANNED
    assert buffer_bytes(c) * 8 <= ROW_CAPACITY * c.capacity * per_token  # what every row slot would reserve
    # decode steps within the columns copy nothing: the same buffers, written in place
    before = [buffer_address(c), c.capacity, c.reserved_rows]
    for _ in range(RIGHT_ROOM // 2):
        b.step()
    assert [buffer_address(c), c.capacity, c.reserved_rows] == before
    # past the right room the batch moves once, into the columns it needs (torch: at the planned left room
    # again, not the long prompt's)
    for _ in range(RIGHT_ROOM // 2 + 8):
        b.step()
    assert buffer_address(c) != before[0]
    assert c.reserved_rows == 4 and c.capacity <= PLANNED + c.length + RIGHT_ROOM + 1


def test_onnx_buffers_fit_again_after_a_long_row_leaves(onnx_runner):
    """A move sizes the buffers for the live rows: once the long row left, rows joining past the reserved
    ones bring the columns back to the planned ones (not the long row's)."""
    b = new_batch(onnx_runner)
    for i in range(3):
        b.join(prompt(onnx_runner, 5, i))
    b.join(prompt(onnx_runner, 300, 9))
    b.step()
    assert b.cache.capacity >= 301
    b.leave([3])
    for i in range(2):  # 5 rows: past the 4 reserved
        b.join(prompt(onnx_runner, 5, 20 + i))
    b.step()
    assert (b.cache.reserved_rows, b.cache.capacity) == (8, PLANNED + RIGHT_ROOM)


def test_rows_joining_past_the_first_allocation_give_the_tokens_of_one_large_allocation(runner):
    """Rows join one at a time (the buffers grow 1, 2, 4, 8 rows and move each time), leave, and a long
    row outgrows the columns: greedy tokens at every step equal a batch whose buffers held every row
    slot and plenty of columns from the start (the former allocation), which never moves."""

    def script(b: Batch, first=None) -> tuple[list[list[int]], list[int]]:
        tokens, reserved = [], []
        for i in range(8):
            b.join(prompt(runner, 4 + 3 * i, i))
            if first is not None and i == 0:
                first(b.cache)
            tokens.append(b.step())
            reserved.append(b.cache.reserved_rows)
        b.leave([1, 4])
        b.join(prompt(runner, 120, 99))  # a long row: more columns (PLANNED is 32)
        for _ in range(4):
            tokens.append(b.step())
            reserved.append(b.cache.reserved_rows)
        return tokens, reserved

    def every_slot(cache) -> None:
        if hasattr(cache, "slabs"):
            cache.left_room = 256  # torch right-aligns rows: room on the left for the long prompt too
            cache._relocate(1024, cache.row_capacity)
        else:
            cache._move(cache.row_capacity, 1024)

    grown, reserved = script(new_batch(runner))
    large, reserved_large = script(new_batch(runner), every_slot)
    assert reserved[:8] == [1, 2, 4, 4, 8, 8, 8, 8]  # it grew (and moved) past its first allocation
    assert set(reserved_large) == {ROW_CAPACITY}  # the reference never did
    assert grown == large


def test_short_rows_joining_a_long_row_give_the_tokens_of_one_large_allocation(runner):
    """A long row first (alone: the buffers are sized for it) decodes into its right room, then short rows
    join past the reserved rows (a move that keeps the columns), and the columns grow: the same greedy tokens
    as one large allocation."""

    def script(b: Batch, first=None) -> list[list[int]]:
        b.join(prompt(runner, 150, 7))
        if first is not None:
            first(b.cache)
        tokens = [b.step() for _ in range(RIGHT_ROOM - 16)]
        for i in range(5):
            b.join(prompt(runner, 3 + i, 30 + i))
            tokens.append(b.step())
        for _ in range(24):  # past the right room: the columns grow once
            tokens.append(b.step())
        return tokens

    def every_slot(cache) -> None:
        if hasattr(cache, "slabs"):
            cache._relocate(2048, cache.row_capacity, cache.start)
        else:
            cache._move(cache.row_capacity, 2048)

    grown = new_batch(runner)
    tokens = script(grown)
    assert grown.cache.reserved_rows == 8 and grown.cache.capacity < 2048
    assert tokens == script(new_batch(runner), every_slot)


def test_max_bytes_cuts_the_room_not_the_live_rows(runner):
    """With max_bytes (the scheduler's KV budget) the power-of-two room is cut to what fits; rows that must
    join still do (admission keeps them within the budget)."""
    per_token = runner.kv_bytes_per_token()
    b = new_batch(runner)
    b.join(prompt(runner, 5, 0))
    b.cache.max_bytes = 3 * b.cache.capacity * per_token
    for i in range(2):
        b.join(prompt(runner, 5, 1 + i))
    b.step()
    assert b.cache.reserved_rows == 3  # not 4
    for i in range(2):
        b.join(prompt(runner, 5, 5 + i))
    assert b.cache.reserved_rows == 5  # above max_bytes: the live rows, no more


def test_node_stats_kv_buffer_stays_within_the_budget_beside_a_long_prompt(onnx_source, onnx_dir):
    """A long prompt prefilled in chunks while short streams run: admission counts the prompt's span while
    it is read (it joins the batch afterwards), so /node_stats' kv_buffer_mb stays within kv_budget_mb plus
    one growth step (the right room of the live rows), and is far below every row slot's reservation."""
    per_token = 2 * 2 * 1 * 16 * 4  # the tiny llama: 2 layers, 1 KV head of 16 dims, float32
    long_prompt, new = 400, 8
    budget_mb = 6 * (long_prompt + new) * per_token / 2**20  # 6 rows of the long prompt's span
    eng = tor.onnx_engine(onnx_source, onnx_dir, max_batch_size=ROW_CAPACITY, max_kv_mb=budget_mb)
    eng._scheduler.chunk_tokens = 64  # the long prompt is read in chunks, streams beside it
    assert eng._scheduler.kv_bytes_per_token == per_token
    seen: list[tuple[float, float, int]] = []

    async def scenario():
        async def watch():
            while True:
                s = eng.stats()
                seen.append((s["kv_buffer_mb"], s["kv_budget_mb"], int(s["active_rows"])))
                await asyncio.sleep(0.002)

        watcher = asyncio.ensure_future(watch())
        ids = eng.tokenizer("word " * long_prompt, add_special_tokens=False)["input_ids"][:long_prompt]
        short = [eng.generate(f"Story {i}:", GP(max_new_tokens=24)) for i in range(12)]
        results = await asyncio.gather(eng.generate(ids, GP(max_new_tokens=new)), *short)
        watcher.cancel()
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        eng.close()
    assert all(r[0].completion_tokens >= 1 for r in results)
    # buffers move (and are sized) for the rows live then, and stay while rows leave: the bound is one growth
    # step (the right room's columns) of the most rows that ran
    rows = max(r for _, _, r in seen)
    assert rows >= 2  # short rows ran beside the long one
    assert 0 < max(buf for buf, _, _ in seen) <= budget_mb + rows * RIGHT_ROOM * per_token / 2**20 + 1e-3, (seen, rows)
    every_slot = ROW_CAPACITY * (long_prompt + 1 + RIGHT_ROOM) * per_token / 2**20
    assert max(buf for buf, _, _ in seen) < every_slot / 4
    assert np.isclose(seen[-1][1], budget_mb, atol=1e-3)
