"""The model's whole context on tiny random models (issue #32): the default prompt limit is the context less
the request's new tokens, a prompt above it is a 400 naming both, and a long prompt prefilled a chunk per
step (between the running rows' decode steps) gives the same tokens as one prefill; on every backend
(tests/graph/backends.py)."""

from __future__ import annotations

import asyncio

import pytest

from graph.engine.chunk_budget import MIN_TOKENS
from graph.errors import InvalidRequest
from graph.params import GenerationParams as GP
from tests.graph.backends import BACKENDS, assert_same_greedy, build

# ~600 tokens on both tiny tokenizers: longer than a chunk, inside both contexts (512 and 1024 positions)
WORDS = "the cat sat on a mat and the dog ran to the park while a bird sang".split()


def prompt_of(engine, tokens: int) -> list[int]:
    """Token ids of a prompt of exactly `tokens` tokens (repeated words)."""
    ids = engine.tokenizer(" ".join(WORDS * 80), add_special_tokens=False)["input_ids"]
    assert len(ids) >= tokens
    return list(ids[:tokens])


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, tiny_dir):
    eng = build(request.param, tiny_dir, prefix_cache_mb=0)  # no kept prompts: every prompt is prefilled
    yield eng
    eng.close()


def generate(engine, ids: list[int], params: GP):
    """The final GenerationResult of one streamed request."""

    async def go():
        events = [ev async for ev in engine.stream(ids, params)]
        final = [ev.result for ev in events if ev.result is not None]
        return final[0]

    return asyncio.run(go())


def greedy(max_new_tokens: int) -> GP:
    """Greedy, with what assert_same_greedy reads where a chunked prefill is not exact (llama.cpp's flash attention)."""
    return GP(max_new_tokens=max_new_tokens, logprobs=True, top_logprobs=2)


def test_default_prompt_limit_is_the_context_less_new_tokens(engine):
    context = engine._runner.max_positions
    assert engine.max_prompt_tokens == context  # no max_prompt_tokens configured
    assert engine.prompt_limit(GP(max_new_tokens=16)) == context - 16
    ids = prompt_of(engine, context - 16)
    r = generate(engine, ids, GP(max_new_tokens=16))
    assert r.prompt_tokens == context - 16 and r.completion_tokens == 16


def test_a_prompt_above_the_context_is_a_400_naming_the_limit_and_the_context(engine):
    context = engine._runner.max_positions
    ids = prompt_of(engine, 100) * (context // 100 + 1)
    with pytest.raises(InvalidRequest) as err:
        generate(engine, ids, GP(max_new_tokens=8))
    assert err.value.field == "prompt"
    assert f"limit of {context - 8} prompt tokens" in err.value.message
    assert f"context of {context} tokens" in err.value.message


@pytest.mark.parametrize("chunk", [64, 100])
def test_chunked_prefill_gives_the_same_tokens_as_one_prefill(engine, chunk):
    ids = prompt_of(engine, min(450, engine._runner.max_positions - 40))
    params = greedy(24)
    sched = engine._scheduler
    before = sched.counters["prefill_steps_total"]
    sched.chunk_tokens = 10_000
    whole = generate(engine, ids, params)
    assert sched.counters["prefill_steps_total"] - before == 1
    sched.chunk_tokens = chunk
    try:
        before = sched.counters["prefill_steps_total"]
        chunked = generate(engine, ids, params)
        assert sched.counters["prefill_steps_total"] - before == -(-len(ids) // chunk)
    finally:
        sched.chunk_tokens = 512
    assert_same_greedy(engine, chunked, whole)


def test_running_streams_keep_decoding_while_a_long_prompt_is_prefilled(engine):
    """A long prompt of 8 chunks joins a running stream: the stream gets a token at every chunk's step."""
    sched = engine._scheduler
    sched.chunk_tokens = 50
    long_ids = prompt_of(engine, 400)

    async def go() -> tuple[int, int]:
        seen: list[int] = []
        short = asyncio.ensure_future(_count(engine, seen))
        while not seen:  # the short stream is decoding
            await asyncio.sleep(0.001)
        steps = sched.counters["batch_steps_total"]
        await engine.generate(long_ids, GP(max_new_tokens=1))
        during = sched.counters["batch_steps_total"] - steps
        short.cancel()
        return during, len(seen)

    try:
        during, _ = asyncio.run(go())
    finally:
        sched.chunk_tokens = 512
    # a decode step of the running row between every two of the 8 chunks at least (whether one also runs
    # before the first chunk depends on where the step loop was when the prompt arrived)
    assert during >= 7


async def _count(engine, seen: list[int]) -> None:
    """A greedy stream that never ends early: its end-of-sequence tokens are banned (a random model may pick one)."""
    no_eos = {int(t): -100.0 for t in engine._scheduler.eos_ids}
    async for ev in engine.stream("Hello world, this is", GP(max_new_tokens=900, logit_bias=no_eos)):
        seen.append(ev.tokens or 0)


def _during_a_stream(engine, work):
    """Run coroutine function `work` while a greedy stream decodes; returns (its result, decode steps meanwhile)."""
    sched = engine._scheduler

    async def go():
        seen: list[int] = []
        short = asyncio.ensure_future(_count(engine, seen))
        while not seen:  # the short stream is decoding
            await asyncio.sleep(0.001)
        steps = sched.counters["batch_steps_total"]
        try:
            result = await work()
        finally:
            short.cancel()
        return result, sched.counters["batch_steps_total"] - steps

    return asyncio.run(go())


@pytest.mark.parametrize(
    "share, chunks",
    [
        (1e-9, -(-400 // MIN_TOKENS)),  # every chunk at the floor
        (100.0, 1 + -(-(400 - MIN_TOKENS) // 128)),  # the first at the floor (nothing measured), then 128 each
    ],
)
def test_chunks_beside_a_running_stream_follow_the_step_budget(engine, share, chunks):
    """With a stream decoding, a long prompt's chunks are sized by the time budget: a budget below one token's
    cost gives the floor, a large one the node's chunk size (the first chunk, before any is measured, is the
    floor). The stream gets a decode step between chunks, and the prompt's greedy tokens are those of one
    prefill."""
    sched = engine._scheduler
    long_ids = prompt_of(engine, 400)
    params = greedy(12)
    sched.chunk_tokens = 10_000
    lane, sched.prefill_lane = sched.prefill_lane, False  # chunks between the decode steps (the lane's test: below)
    try:
        whole = generate(engine, long_ids, params)
        sched.chunk_tokens = 128
        sched.chunk_sizer.share = share
        sched.chunk_sizer.per_token_s = None  # nothing measured: the first chunk is the floor

        async def work():
            before = sched.counters["prefill_steps_total"]
            (r,) = await engine.generate(long_ids, params)
            return r, sched.counters["prefill_steps_total"] - before

        (beside, prefills), during = _during_a_stream(engine, work)
    finally:
        sched.chunk_tokens = 512
        sched.chunk_sizer.share = 0.5
        sched.prefill_lane = lane
    assert_same_greedy(engine, beside, whole)
    assert prefills == chunks  # the stream was admitted before (its 900 tokens outlast the prompt)
    assert during >= chunks - 1


def test_the_prefill_lane_runs_whole_chunks_beside_the_decode_steps(engine):
    """On runners with concurrent_chunks (onnx), a long prompt beside a running stream is prefilled in whole
    chunks on the lane's thread while the stream keeps decoding (several steps per chunk, not one), with the
    greedy tokens of one prefill; other runners keep the chunks between the steps (the lane stays unused)."""
    sched = engine._scheduler
    long_ids = prompt_of(engine, 400)
    params = greedy(12)
    sched.chunk_tokens = 10_000
    try:
        whole = generate(engine, long_ids, params)
        sched.chunk_tokens = 100

        async def work():
            before = dict(sched.counters)
            (r,) = await engine.generate(long_ids, params)
            after = sched.counters
            return r, {k: after[k] - before[k] for k in ("prefill_steps_total", "prefill_lane_chunks_total")}

        (beside, counts), during = _during_a_stream(engine, work)
    finally:
        sched.chunk_tokens = 512
    assert_same_greedy(engine, beside, whole)
    if engine._runner.concurrent_chunks:
        assert sched.prefill_lane
        assert counts == {"prefill_steps_total": 4, "prefill_lane_chunks_total": 4}  # 400 tokens, 100 a chunk
        assert during >= 4
    else:
        assert not sched.prefill_lane
        assert counts["prefill_lane_chunks_total"] == 0


def test_identical_prompts_join_the_one_being_chunked(engine):
    """best_of: three identical long prompts (same scope), the later two sent while the first is being chunked,
    are prefilled once (the counters) and give its greedy tokens; the prefix cache is off on this engine."""
    sched = engine._scheduler
    ids = prompt_of(engine, 300)
    params = greedy(10)
    alone = generate(engine, ids, params)
    sched.chunk_tokens = 64
    sched.chunk_sizer.share = 1e-9  # floor-sized chunks beside the stream: many steps to join during
    try:

        async def work():
            before = sched.counters["prompt_tokens_total"]
            first = asyncio.ensure_future(engine.generate(ids, params))
            while not (sched._chunking and sched._chunking[0].done):  # the first one's prefill has begun
                await asyncio.sleep(0.001)
            rest = [engine.generate(ids, params) for _ in range(2)]
            results = await asyncio.gather(first, *rest)
            return results, sched.counters["prompt_tokens_total"] - before

        (results, prefilled), _ = _during_a_stream(engine, work)
    finally:
        sched.chunk_tokens = 512
        sched.chunk_sizer.share = 0.5
    assert len({(r.text, r.completion_tokens) for (r,) in results}) == 1  # one prefill, three rows
    for (r,) in results:
        assert_same_greedy(engine, r, alone)
    assert prefilled == len(ids)  # once, not three times


def test_a_kept_short_prompt_is_not_queued_behind_a_long_one(engine):
    """A prompt with little left on top of a kept prefix (a chat turn, a repeated stream) is prefilled whole
    before the chunks of a long prompt that came first: it is answered while the long one is still being
    chunked (it used to wait for all its chunks, and a stream starting again stopped beside a long prefill),
    and both give the greedy tokens of one prefill."""
    from graph.engine.kv.prefix_cache import PrefixCache

    sched = engine._scheduler
    ids = prompt_of(engine, 440)
    long_ids, short_ids = ids[:400], ids[400:]  # different tokens: the long one finds nothing kept
    params = greedy(8)
    sched.chunk_tokens = 10_000
    whole = generate(engine, long_ids, params)
    alone = generate(engine, short_ids, params)
    sched.prefixes = PrefixCache(16 * 2**20, engine._runner.kv_bytes_per_token())
    try:
        generate(engine, short_ids, params)  # kept: 32 of its 40 tokens (whole blocks)
        sched.chunk_tokens = 64
        sched.chunk_sizer.share = 1e-9  # floor-sized chunks beside the stream: 100 steps for the long prompt
        sched.prefill_lane = False  # (on the lane, 64-token chunks of a tiny model could all be done first)

        async def work():
            hits = sched.counters["prefix_hit_tokens_total"]
            first = asyncio.ensure_future(engine.generate(long_ids, params))
            while not (sched._chunking and sched._chunking[0].done):  # the long prompt's prefill has begun
                await asyncio.sleep(0.001)
            (short,) = await engine.generate(short_ids, params)
            left = [len(c.req.prompt_ids) - c.done for c in sched._chunking]
            (long,) = await first
            return short, long, left, sched.counters["prefix_hit_tokens_total"] - hits

        (short, long, left, hits), _ = _during_a_stream(engine, work)
    finally:
        sched.prefixes = None
        sched.chunk_tokens = 512
        sched.chunk_sizer.share = 0.5
        sched.prefill_lane = engine._runner.concurrent_chunks
    assert hits == 32  # the short prompt resumed its kept prefix
    assert left and left[0] > 0  # answered while the long prompt still had tokens to prefill
    assert_same_greedy(engine, short, alone)
    assert_same_greedy(engine, long, whole)
