"""Prompts kept for reuse on tiny random models (issue #32): a prompt that starts with a kept one prefills only
the rest and gives the same tokens as a full prefill (greedy); kept prompts are scoped per API key; a small
budget evicts old ones and never fails a request; identical prompts sent at once are prefilled once."""

from __future__ import annotations

import asyncio

import pytest

from graph.engine.kv.prefix_cache import BLOCK_TOKENS
from graph.params import GenerationParams as GP
from tests.graph.test_engine import make_engine

WORDS = "the cat sat on a mat and the dog ran to the park while a bird sang".split()
GREEDY = GP(max_new_tokens=16)


def ids_of(engine, words: int, offset: int = 0) -> list[int]:
    text = " ".join((WORDS * 40)[offset : offset + words])
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module", params=["causal_lm", "causal_lm_b"], ids=["llama", "gpt2"])
def pair(request, tiny_dir):
    """An engine that keeps prompts, and one that does not (prefix_cache_mb=0)."""
    kept, plain = make_engine(tiny_dir / request.param), make_engine(tiny_dir / request.param, prefix_cache_mb=0)
    yield kept, plain
    kept.close()
    plain.close()


def texts(engine, prompts: list[list[int]], scope: str = "") -> list[str]:
    async def go() -> list[str]:
        outs = await asyncio.gather(*[engine.generate(p, GREEDY, scope=scope) for p in prompts])
        return [rows[0].text for rows in outs]

    return asyncio.run(go())


def hits(engine) -> int:
    return int(engine.stats()["prefix_hit_tokens_total"])


def test_a_kept_prefix_gives_the_same_tokens_as_a_full_prefill(pair):
    kept, plain = pair
    first = ids_of(kept, 60)
    turn = first + ids_of(kept, 20, offset=7)  # a chat's next turn: the last prompt, then more
    assert texts(kept, [first], "k") == texts(plain, [first])
    before, prefilled = hits(kept), kept.stats()["prompt_tokens_total"]
    assert texts(kept, [turn], "k") == texts(plain, [turn])
    reused = hits(kept) - before
    assert reused >= len(first) - BLOCK_TOKENS and reused % BLOCK_TOKENS == 0
    assert kept.stats()["prompt_tokens_total"] - prefilled == len(turn) - reused
    assert hits(plain) == 0


def test_a_prefix_kept_under_one_key_is_not_reused_under_another(pair):
    kept, _ = pair
    prompt = ids_of(kept, 50, offset=3)
    texts(kept, [prompt], "alice")
    before = hits(kept)
    texts(kept, [prompt + ids_of(kept, 5)], "mallory")
    assert hits(kept) == before
    texts(kept, [prompt + ids_of(kept, 5)], "alice")
    assert hits(kept) > before


def test_identical_prompts_sent_at_once_are_prefilled_once(pair):
    kept, plain = pair
    prompt = ids_of(kept, 30, offset=11)
    for engine in pair:
        before = engine.stats()["prompt_tokens_total"]
        outs = texts(engine, [prompt] * 3, "best_of")
        assert len(set(outs)) == 1
        assert engine.stats()["prompt_tokens_total"] - before < 2 * len(prompt)  # once, not three times
    assert texts(kept, [prompt], "best_of") == texts(plain, [prompt])


def test_eviction_under_a_small_budget_never_fails_a_request(tiny_dir):
    probe = make_engine(tiny_dir / "causal_lm", prefix_cache_mb=0)
    per_token = probe._scheduler.kv_bytes_per_token
    probe.close()
    budget_mb = 100 * per_token / 2**20  # room for about one 60-token prompt at a time
    engine = make_engine(tiny_dir / "causal_lm", prefix_cache_mb=budget_mb)
    plain = make_engine(tiny_dir / "causal_lm", prefix_cache_mb=0)
    try:
        prompts = [ids_of(engine, 40, offset=i) for i in range(8)]
        turns = [p + ids_of(engine, 10, offset=i + 1) for i, p in enumerate(prompts)]
        assert texts(engine, prompts, "k") == texts(plain, prompts)  # at once
        assert texts(engine, turns, "k") == texts(plain, turns)  # most of their prefixes were evicted
        for p in prompts:  # one by one: each evicts the last
            assert texts(engine, [p + [p[0]]], "k") == texts(plain, [p + [p[0]]])
        cache = engine._scheduler.prefixes
        assert cache is not None and cache.evictions > 0 and cache.used <= cache.budget
    finally:
        engine.close()
        plain.close()
