"""Prompts and replies kept for reuse, on tiny random models of every backend (issue #32): a prompt that starts
with a kept one prefills only the rest and gives the same tokens as a full prefill (greedy); a chat's next turn
reuses the last turn's reply too; kept sequences are scoped per API key; a small budget evicts old ones and never
fails a request; identical prompts sent at once are prefilled once.

Every test runs on every backend (tests/graph/backends.py): torch (the tiny llama and gpt2), onnx and llama.cpp."""

from __future__ import annotations

import asyncio

import pytest

from graph.chat_format import ChatMessage, ChatPrompt, clean_reply
from graph.engine.kv.prefix_cache import BLOCK_TOKENS
from graph.params import GenerationParams as GP
from tests.graph.backends import BACKENDS, build

WORDS = "the cat sat on a mat and the dog ran to the park while a bird sang".split()
GREEDY = GP(max_new_tokens=16)


def ids_of(engine, words: int, offset: int = 0) -> list[int]:
    text = " ".join((WORDS * 40)[offset : offset + words])
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request, tiny_dir):
    """An engine that keeps prompts, and one that does not (prefix_cache_mb=0)."""
    kept, plain = build(request.param, tiny_dir), build(request.param, tiny_dir, prefix_cache_mb=0)
    yield kept, plain
    kept.close()
    plain.close()


def texts(engine, prompts: list[list[int]], scope: str = "", *, together: bool = False) -> list[str]:
    """Greedy texts of `prompts` sent concurrently; `together`: all queued before the step loop admits any
    (it holds the scheduler's lock to admit), as a best_of's candidates are on a node that is busy."""

    async def go() -> list[str]:
        if not together:
            outs = await asyncio.gather(*[engine.generate(p, GREEDY, scope=scope) for p in prompts])
            return [rows[0].text for rows in outs]
        with engine._scheduler.lock:
            tasks = [asyncio.ensure_future(engine.generate(p, GREEDY, scope=scope)) for p in prompts]
            await asyncio.sleep(0)  # each task runs to its first await: queued
        return [rows[0].text for rows in await asyncio.gather(*tasks)]

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
        outs = texts(engine, [prompt] * 3, "best_of", together=True)
        assert len(set(outs)) == 1
        assert engine.stats()["prompt_tokens_total"] - before < 2 * len(prompt)  # once, not three times
    assert texts(kept, [prompt], "best_of") == texts(plain, [prompt])


@pytest.mark.parametrize("kind", BACKENDS)
def test_eviction_under_a_small_budget_never_fails_a_request(kind, tiny_dir):
    plain = build(kind, tiny_dir, prefix_cache_mb=0)
    budget_mb = 100 * plain._scheduler.kv_bytes_per_token / 2**20  # room for about one 60-token prompt at a time
    engine = build(kind, tiny_dir, prefix_cache_mb=budget_mb)
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


def common_blocks(a: tuple[int, ...], b: list[int]) -> int:
    """Tokens of the longest common prefix of `a` and `b`, in whole blocks, leaving `b` one token to prefill."""
    n = 0
    while n < min(len(a), len(b) - 1) and a[n] == b[n]:
        n += 1
    return n // BLOCK_TOKENS * BLOCK_TOKENS


# A chat template like Llama 2's ("[/INST] {reply}"): the reply follows its tag after a space, which a model's
# first reply token carries (" cat"), so a trimmed reply re-renders into the tokens it was generated as.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' %} {% endif %}{{ m['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_chat_turn_reuses_the_last_reply(kind, tiny_dir):
    """Each turn's prompt (the chat template over history, reply, new message) reuses the last turn's prompt
    and reply, kept when its row finished: as far as the re-rendered reply tokenizes as it was generated, in
    whole blocks. A random model's reply is random bytes that a re-rendered history cannot hold (U+FFFD), so
    its replies are held to whole words by logit_bias (the model's own logits choose among them).

    Tokens equal an engine that keeps nothing on torch and onnx. On llama.cpp a reply's keys and values were
    computed one token per step and rounded to its float16 cache, which differs from a prefill's by float16
    rounding: the first token's top log-probabilities agree within 0.01, but a near tie may break otherwise."""
    kept = build(kind, tiny_dir, template=CHAT_TEMPLATE)
    plain = build(kind, tiny_dir, template=CHAT_TEMPLATE, prefix_cache_mb=0)
    words = kept.tokenizer.convert_tokens_to_ids(["Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġdog", "Ġpark"])
    params = GP(max_new_tokens=40, logit_bias={w: 100.0 for w in words}, logprobs=True, top_logprobs=3)
    cache = kept._scheduler.prefixes
    assert cache is not None
    try:
        system = ChatMessage(role="system", content=" ".join(WORDS[:9]))
        messages = [system, ChatMessage(role="user", content="The cat")]
        last: list[int] = []
        for turn in range(4):
            ids = kept.fit_chat(messages, params).ids
            expected = max((common_blocks(k.ids, ids) for k in cache._kept.values() if k.scope == "chat"), default=0)
            before = hits(kept)
            (mine,) = asyncio.run(kept.generate(ChatPrompt(messages=messages), params, scope="chat"))
            (theirs,) = asyncio.run(plain.generate(ChatPrompt(messages=messages), params, scope="chat"))
            if kind == "llamacpp":
                assert mine.logprobs and theirs.logprobs
                a, b = mine.logprobs[0].top_logprobs, theirs.logprobs[0].top_logprobs
                assert {t.token for t in a} == {t.token for t in b}, turn
                assert max(abs(x.logprob - y.logprob) for x, y in zip(a, b)) < 0.01, turn
            else:
                assert mine.text == theirs.text, turn
            assert hits(kept) - before == expected, turn  # the longest kept match, in whole blocks
            if turn:  # past the whole last prompt: the reply's tokens hit
                assert expected > len(last), (turn, expected, len(last))
            last = ids
            reply = ChatMessage(role="assistant", content=clean_reply(mine.text))
            messages = [*messages, reply, ChatMessage(role="user", content="And the dog?")]
    finally:
        kept.close()
        plain.close()
