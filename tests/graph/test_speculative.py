"""Speculative decoding (graph/engine/spec/) on the llamacpp runtime: prompt-lookup drafts verified in the batch.

Every test compares the engine with speculation on against the same GGUF file without it (or
llama.cpp's plain one-token decode): greedy rows give the same tokens, rows with sampling transforms
give the same text and log-probabilities, sampled rows do not draft, and stops, streams and cancel
behave as without drafts. The tiny llama of tests/tiny_models.py repeats itself within a few dozen
tokens, so its drafts hit often (the counters show it); the default SmolLM2 GGUF is checked too.
"""

from __future__ import annotations

import asyncio

import pytest

from graph.params import GenerationParams as GP
from tests.graph import test_engine as te
from tests.graph.backends import spec_counts as counts
from tests.graph.test_llamacpp_runtime import llamacpp_engine, llamacpp_runner

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
PROMPTS = te.PROMPTS
# A prompt whose answer quotes it: drafts from the prompt itself.
QUOTE = "Repeat after me: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over"


@pytest.fixture(scope="session")
def gguf_source(tiny_dir):
    from tests.tiny_models import build_gguf_source

    return build_gguf_source(tiny_dir)


def spec_engine(gguf_source, max_rows: int = 16, **kw):
    from graph.engine.spec.verify import Speculation

    return llamacpp_engine(gguf_source, speculation=Speculation(max_n=3, draft_tokens=4, max_rows=max_rows), **kw)


@pytest.fixture(scope="module")
def plain(gguf_source):
    eng = llamacpp_engine(gguf_source)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def llama(gguf_source):
    """The name test_engine's tests take: here the llamacpp engine with speculation on."""
    eng = spec_engine(gguf_source)
    yield eng
    eng.close()


def rows_of(engine, cases):
    async def together():
        return await asyncio.gather(*(engine.generate(p, params) for p, params in cases))

    return asyncio.run(together())


def test_greedy_tokens_identical_long_outputs_batched_with_rows_that_do_not_draft(llama, plain):
    cases = [(p, GP(max_new_tokens=200)) for p in [*PROMPTS, QUOTE]]
    cases += [  # sampled rows share the batch; they decode one token per step
        (PROMPTS[1], GP(max_new_tokens=60, do_sample=True, seed=7, temperature=1.5)),
        (PROMPTS[3], GP(max_new_tokens=60, do_sample=True, seed=11, top_p=0.5, num_return_sequences=2)),
    ]
    alone = [asyncio.run(plain.generate(p, params)) for p, params in cases]
    drafted0, accepted0 = counts(llama)
    batched = rows_of(llama, cases)
    drafted, accepted = counts(llama)
    for a, b in zip(alone, batched):
        assert [(r.text, r.finish_reason, r.completion_tokens) for r in a] == [
            (r.text, r.finish_reason, r.completion_tokens) for r in b
        ]
    assert accepted - accepted0 > 10, (drafted - drafted0, accepted - accepted0)  # drafts were verified and used
    assert llama.stats()["batch_steps_total"] > 0
    te._assert_idle(llama)
    assert llama._runner.in_use() == 0


def test_one_row_alone_equals_llamacpp_own_decode(llama, plain, gguf_source):
    """Alone, with drafts: llama.cpp's own one-token decode (high-level `Llama`) and the engine without
    drafts. (QUOTE's greedy path meets a near-tie at its 29th token, 2.8e-4 apart, which llama.cpp's
    1-thread reference breaks the other way: there the reference is the engine without drafts.)"""
    from tests.graph.test_llamacpp_runtime import reference_greedy

    tok = llama.tokenizer
    for prompt in (PROMPTS[0], QUOTE):
        before = counts(llama)[1]
        text = asyncio.run(llama.generate(prompt, GP(max_new_tokens=60)))[0].text
        assert counts(llama)[1] > before
        assert text == asyncio.run(plain.generate(prompt, GP(max_new_tokens=60)))[0].text
    ref = reference_greedy(gguf_source, tok(PROMPTS[0])["input_ids"], 60)
    drafted = asyncio.run(llama.generate(PROMPTS[0], GP(max_new_tokens=60)))[0]
    assert tok.decode([t for t in ref if t != 2]) == drafted.text


def test_rejected_drafts_leave_the_cache_at_the_right_position(gguf_source):
    """Row 0 decodes its token plus 3 wrong drafts, is truncated back, then decodes on: its logits
    equal a row that never saw the drafts (and a row beside it is untouched)."""
    import torch

    runner = llamacpp_runner(gguf_source, n_seq=6, n_ctx_seq=256)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    logits, pre = runner.prefill(ids, mask)
    cache = runner.new_cache(4, 64)
    cache.add_rows(pre, [0, 0], 8)  # two rows, same prompt
    first = int(logits[0].argmax())
    wrong = [(first + d) % runner.vocab_size for d in (11, 12, 13)]
    out = runner.decode_drafts([[first, *wrong], [first]], cache, 8)
    assert out.shape == (5, runner.vocab_size)
    assert torch.allclose(out[0], out[4], atol=1e-4)  # position 0 of both rows: the same token after the same prompt
    assert list(cache.lens[:2]) == [10, 7]
    cache.truncate_row(0, 7)  # keep the prompt and `first`
    assert list(cache.lens[:2]) == [7, 7]
    nxt = int(out[0].argmax())
    after = runner.decode(torch.tensor([[nxt], [nxt]]), torch.tensor([[7], [7]]), cache, 8)
    assert torch.allclose(after[0], after[1], atol=1e-4)
    assert int(after[0].argmax()) == int(after[1].argmax())
    del cache
    runner.close()


def test_stop_string_inside_an_accepted_run(llama, plain):
    """A stop string completed by a token that came from an accepted draft (not the first token of
    its step): the row stops there, with the text and token count of decoding without drafts."""
    sched = llama._scheduler
    steps: list[tuple[int, int]] = []  # (decode step, token) per accepted token
    accept = sched._accept

    def spy(row, token, lp, out, now):  # records, then does the real bookkeeping
        steps.append((sched.counters["batch_steps_total"], token))
        accept(row, token, lp, out, now)

    sched._accept = spy
    try:
        full = asyncio.run(llama.generate(QUOTE, GP(max_new_tokens=400)))[0]
    finally:
        del sched._accept
    tok = llama.tokenizer
    tokens = [t for _, t in steps]
    assert len(tokens) == full.completion_tokens
    # Tokens m that are not the first of their step: each closes a stop candidate.
    inside = [m for m in range(1, len(steps)) if steps[m][0] == steps[m - 1][0]]
    assert inside, "no step accepted a draft"
    text = tok.decode(tokens)
    for m in inside:
        before, upto = tok.decode(tokens[:m]), tok.decode(tokens[: m + 1])
        end = len(upto)
        if not (text.startswith(upto) and upto.startswith(before)) or end == len(before):
            continue  # token m's text is not settled yet (part of a UTF-8 character)
        # The shortest string ending at `end` whose first occurrence ends there.
        stop = next(text[a:end] for a in range(end - 1, -1, -1) if text.find(text[a:end]) + end - a == end)
        if "\ufffd" in stop:
            continue
        params = GP(max_new_tokens=400, stop=[stop])
        got = asyncio.run(llama.generate(QUOTE, params))[0]
        assert got.finish_reason == "stop" and got.text == text[: text.find(stop)]
        assert got.completion_tokens == m + 1
        ref = asyncio.run(plain.generate(QUOTE, params))[0]
        assert (got.text, got.completion_tokens) == (ref.text, ref.completion_tokens)
        return
    pytest.fail(f"no clean stop candidate among {inside}")


def test_stream_delivers_every_accepted_token_in_order(llama, plain):
    params = GP(max_new_tokens=150)

    async def collect():
        return [ev async for ev in llama.stream(QUOTE, params)]

    before = counts(llama)[1]
    events = asyncio.run(collect())
    assert counts(llama)[1] > before
    ref = asyncio.run(plain.generate(QUOTE, params))[0]
    assert "".join(ev.text for ev in events) == events[-1].result.text == ref.text


def test_cancel_mid_run_frees_the_sequence(llama):
    runner = llama._runner

    async def scenario():
        task = asyncio.create_task(llama.generate(te.LONG, GP(max_new_tokens=1000), request_id="spec-c"))
        while llama.stats()["spec_accepted_tokens_total"] == counts0[1]:
            await asyncio.sleep(0.001)
        assert llama.cancel("spec-c")
        return (await task)[0]

    counts0 = counts(llama)
    r = asyncio.run(scenario())
    assert r.finish_reason == "cancelled" and 0 < r.completion_tokens < 1000
    te._assert_idle(llama)
    assert runner.in_use() == 0


def test_rows_with_penalties_bias_logprobs_and_grammar_give_what_they_give_without_drafts(llama, plain):
    from tests.graph.test_structured import FORMAT, SCHEMA

    cases = [
        (QUOTE, GP(max_new_tokens=60, repetition_penalty=1.3)),
        (QUOTE, GP(max_new_tokens=60, frequency_penalty=0.5, presence_penalty=0.3)),
        (QUOTE, GP(max_new_tokens=60, logit_bias={5: 3.0, 9: -100.0})),
        (QUOTE, GP(max_new_tokens=60, logprobs=True, top_logprobs=3)),
        (PROMPTS[1], GP(max_new_tokens=120, response_format=FORMAT)),
    ]
    for p, params in cases:
        want = asyncio.run(plain.generate(p, params))[0]
        got = asyncio.run(llama.generate(p, params))[0]
        assert (got.text, got.finish_reason, got.completion_tokens) == (
            want.text,
            want.finish_reason,
            want.completion_tokens,
        ), params
        if params.logprobs:
            assert got.logprobs is not None and want.logprobs is not None
            assert [t.token for t in got.logprobs] == [t.token for t in want.logprobs]
            assert [t.logprob for t in got.logprobs] == pytest.approx([t.logprob for t in want.logprobs], abs=1e-3)
            assert [[x.token for x in t.top_logprobs] for t in got.logprobs] == [
                [x.token for x in t.top_logprobs] for t in want.logprobs
            ]
    import json

    import jsonschema_rs

    jsonschema_rs.validate(SCHEMA, json.loads(asyncio.run(llama.generate(PROMPTS[1], cases[-1][1]))[0].text))


def test_sampled_rows_do_not_draft_and_keep_their_seeded_text(llama, plain):
    params = GP(max_new_tokens=80, do_sample=True, seed=3, temperature=0.7)
    before = counts(llama)
    got = asyncio.run(llama.generate(QUOTE, params))[0]
    assert counts(llama) == before
    assert got.text == asyncio.run(plain.generate(QUOTE, params))[0].text


def test_a_batch_above_max_rows_decodes_without_drafts(gguf_source, plain):
    eng = spec_engine(gguf_source, max_rows=1)
    try:
        cases = [(QUOTE, GP(max_new_tokens=40)), (PROMPTS[0], GP(max_new_tokens=40))]
        # Two rows together: no drafts while both run (the first to finish leaves one row that drafts).
        batched = rows_of(eng, cases)
        assert [r[0].text for r in batched] == [asyncio.run(plain.generate(p, q))[0].text for p, q in cases]
        before = counts(eng)
        asyncio.run(eng.generate(QUOTE, GP(max_new_tokens=40)))
        assert counts(eng)[1] > before[1]  # alone it drafts
    finally:
        eng.close()


# test_engine's feature tests, run again with speculation on (fixture `llama` above).
test_stop_string_truncates_before_it = te.test_stop_string_truncates_before_it
test_stream_never_sends_text_past_a_stop_string = te.test_stream_never_sends_text_past_a_stop_string
test_max_new_tokens_gives_length = te.test_max_new_tokens_gives_length
test_cancel_by_request_id_frees_the_row = te.test_cancel_by_request_id_frees_the_row
test_closing_a_stream_stops_generation = te.test_closing_a_stream_stops_generation
test_logprobs = te.test_logprobs


# -- configuration and the default model -------------------------------------------------------------


def test_config_names_the_rule_and_torch_nodes_do_not_draft(tiny_dir):
    from pydantic import ValidationError

    from graph.config import SchedulerConfig

    with pytest.raises(ValidationError, match="min_ngram"):
        SchedulerConfig(speculative={"ngram": 2, "min_ngram": 3})
    with pytest.raises(ValidationError, match="draft_tokens"):
        SchedulerConfig(speculative={"draft_tokens": 0})
    from graph.engine.spec.verify import Speculation

    torch_engine = te.make_engine(tiny_dir / "causal_lm", speculation=Speculation())
    try:
        assert torch_engine._scheduler.speculation is None  # the torch runner decodes one token per row
    finally:
        torch_engine.close()


def test_node_config_turns_speculation_on(gguf_source):
    from graph.config import GeneratorNode
    from graph.models.node_engine import engine_for_node

    node = GeneratorNode(
        model={"path": str(gguf_source)},
        runtime={"backend": "llamacpp", "threads": 1},
        scheduler={"speculative": {"ngram": 2, "draft_tokens": 3}},
    )
    engine = engine_for_node("tiny", node)
    try:
        spec = engine._scheduler.speculation
        assert spec is not None and (spec.max_n, spec.draft_tokens) == (2, 3)
        asyncio.run(engine.generate(QUOTE, GP(max_new_tokens=40)))
        assert engine.stats()["spec_draft_tokens_total"] > 0
    finally:
        engine.close()


def smollm2_on_and_off(max_new_tokens: int) -> dict:
    """In a child process (see the test): SmolLM2's node with and without drafts on two prompts."""
    from graph.config import GeneratorNode
    from graph.models.node_engine import engine_for_node
    from services.store import embedded_lookup

    base = {
        "model": {"embedded": "smollm2-135m-instruct"},
        "chat_template": True,
        "runtime": {"backend": "llamacpp", "threads": 2},
    }
    # Two rows per node: llama.cpp allocates every sequence's KV cells up front.
    engines = {
        name: engine_for_node(
            "smol", GeneratorNode(**base, scheduler={"max_batch_size": 2, **spec}), embedded_lookup=embedded_lookup
        )
        for name, spec in (("on", {}), ("off", {"speculative": None}))  # on by default
    }
    text = (
        "The lighthouse keeper climbed the stairs every evening at dusk. He lit the lamp, wound the clock, "
        "and wrote one line in the logbook: all is well."
    )
    prompts = [f"Repeat this text exactly:\n{text}\n", "Write a short poem about the sea."]
    out: dict = {}
    try:
        for name, engine in engines.items():
            engine.start()
            params = GP(max_new_tokens=max_new_tokens)
            out[name] = [asyncio.run(engine.generate(p, params))[0].text for p in prompts]
            out[f"{name}_accepted"] = engine.stats()["spec_accepted_tokens_total"]
    finally:
        for engine in engines.values():
            engine.close()
    return out


def test_default_smollm2_gguf_greedy_identical_with_and_without_drafts():
    """The shipped SmolLM2 Q4_1 GGUF through its node config: a quoting prompt and a free one. In a
    child process: ggml's CPU variant is chosen once per process by a probe of the first GGUF it
    loads, and the tiny float32 model passes on variants SmolLM2's Q4_1 crashes (AMX, docs/runtimes.md)."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    pytest.importorskip("services.store")
    code = "import json; from tests.graph.test_speculative import smollm2_on_and_off as f; print(json.dumps(f(64)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["on"] == got["off"], got
    assert got["on_accepted"] > 10 and got["off_accepted"] == 0
