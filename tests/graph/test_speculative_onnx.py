"""Speculative decoding (graph/engine/spec/) on the onnx runtime: prompt-lookup drafts verified in the batch.

The onnx runner verifies drafts as llamacpp's does (`decode_drafts`: the row's last token and drafts in one
forward; `truncate_row` drops the rejected ones), one row at a time (GroupQueryAttention's limit). Compared
with the same converted model without drafts: greedy rows give the same tokens and log-probabilities, a batch
of several rows does not draft, and a rejected draft leaves the row's cache where a row that never saw it would
be. The tiny llama repeats itself within a few dozen tokens, so its drafts hit often.
"""

from __future__ import annotations

import asyncio

import pytest

from graph.params import GenerationParams as GP
from tests.graph import test_engine as te
from tests.graph.backends import build
from tests.graph.backends import spec_counts as counts

QUOTE = "Repeat after me: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over"


@pytest.fixture(scope="module")
def plain(tiny_dir):
    eng = build("onnx", tiny_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def spec(tiny_dir):
    from graph.engine.spec.verify import Speculation

    eng = build("onnx", tiny_dir, speculation=Speculation(max_n=3, draft_tokens=4, max_rows=16))
    yield eng
    eng.close()


def test_greedy_tokens_identical_and_batches_do_not_draft(spec, plain):
    """One row at a time, greedy rows draft and give the tokens of decoding without drafts; in a batch of
    several rows (greedy and sampled) nobody drafts (the runner's max_draft_rows is 1) and the text is the same."""
    assert spec._scheduler.speculation.max_rows == 1  # clamped from the 16 asked
    drafted0, accepted0 = counts(spec)
    for prompt in [*te.PROMPTS, QUOTE]:
        (a,) = asyncio.run(plain.generate(prompt, GP(max_new_tokens=120)))
        (b,) = asyncio.run(spec.generate(prompt, GP(max_new_tokens=120)))
        assert (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
    drafted, accepted = counts(spec)
    assert accepted - accepted0 > 10, (drafted - drafted0, accepted - accepted0)  # drafts were verified and used
    cases = [(p, GP(max_new_tokens=60)) for p in te.PROMPTS]
    cases.append((te.PROMPTS[1], GP(max_new_tokens=40, do_sample=True, seed=7, temperature=1.5)))

    async def together(engine):
        return await asyncio.gather(*(engine.generate(p, params) for p, params in cases))

    alone, batched = asyncio.run(together(plain)), asyncio.run(together(spec))
    assert [[r.text for r in rs] for rs in alone] == [[r.text for r in rs] for rs in batched]
    te._assert_idle(spec)


def test_one_row_alone_equals_decoding_without_drafts(spec, plain):
    before = counts(spec)[1]
    for prompt in (te.PROMPTS[0], te.PROMPTS[3], QUOTE):
        (drafted,) = asyncio.run(spec.generate(prompt, GP(max_new_tokens=80, logprobs=True, top_logprobs=2)))
        (alone,) = asyncio.run(plain.generate(prompt, GP(max_new_tokens=80, logprobs=True, top_logprobs=2)))
        assert drafted.text == alone.text
        for a, b in zip(drafted.logprobs or [], alone.logprobs or []):
            assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-4
    assert counts(spec)[1] > before  # drafts were accepted, log-probabilities and all


def test_rejected_drafts_leave_the_cache_at_the_right_position(plain):
    """A row decodes its token plus 3 wrong drafts, is truncated back, then decodes on: its logits equal those of
    a row that never saw the drafts (the rejected columns left no trace)."""
    import torch

    runner = plain._runner
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    logits, pre = runner.prefill(ids, torch.ones(1, 6, dtype=torch.bool))
    drafted, clean = runner.new_cache(2, 64), runner.new_cache(2, 64)
    drafted.add_rows(pre, [0], 8)
    clean.add_rows(pre, [0], 8)
    first = int(logits[0].argmax())
    wrong = [(first + d) % runner.vocab_size for d in (11, 12, 13)]
    out = runner.decode_drafts([[first, *wrong]], drafted, 8)
    one = runner.decode(torch.tensor([[first]]), torch.tensor([[6]]), clean, 8)
    assert out.shape == (4, runner.vocab_size)
    assert torch.allclose(out[0], one[0], atol=1e-5)  # position 0: the same token after the same prompt
    assert list(drafted.lens[:1]) == [10]
    drafted.truncate_row(0, 7)
    nxt = int(one[0].argmax())
    a = runner.decode(torch.tensor([[nxt]]), torch.tensor([[7]]), drafted, 8)
    b = runner.decode(torch.tensor([[nxt]]), torch.tensor([[7]]), clean, 8)
    assert torch.allclose(a, b, atol=1e-5)
    assert list(drafted.lens[:1]) == list(clean.lens[:1]) == [8]
