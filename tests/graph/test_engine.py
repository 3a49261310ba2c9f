"""Generation engine on tiny random models: batching equals solo runs, parameters, stops, streams."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from graph.errors import InvalidRequest, NodeFailure, Overloaded
from graph.params import GenerationParams as GP

PROMPTS = [
    "I have an idea!",
    "The cat",
    "Once upon a time there was a small language model that liked numbers",
    "Hello world, this is",
]
LONG = PROMPTS[3]  # the tiny llama runs it greedily for 1000 tokens without an end-of-sequence


def run(coro):
    return asyncio.run(coro)


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    return model, tok


def make_engine(path, **kw):
    from graph.engine import GenerationEngine

    model, tok = load(path)
    kw.setdefault("max_batch_size", 16)
    engine = GenerationEngine(model, tok, name="test", **kw)
    engine.start()
    return engine


@pytest.fixture(scope="module", params=["causal_lm", "causal_lm_b"], ids=["llama", "gpt2"])
def engine(request, tiny_dir):
    eng = make_engine(tiny_dir / request.param)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def llama(tiny_dir):
    eng = make_engine(tiny_dir / "causal_lm")
    yield eng
    eng.close()


async def solo(engine, prompt, params):
    return (await engine.generate(prompt, params))[0]


def text_of(engine, prompt, params):
    return run(solo(engine, prompt, params)).text


# -- batching ----------------------------------------------------------------------------------


def test_greedy_batch_equals_solo_runs(engine):
    params = GP(max_new_tokens=24)
    alone = [text_of(engine, p, params) for p in PROMPTS]

    async def together():
        return await asyncio.gather(*(solo(engine, p, params) for p in PROMPTS))

    batched = run(together())
    assert [r.text for r in batched] == alone
    assert all(r.prompt_tokens == engine.count_tokens(p) for r, p in zip(batched, PROMPTS))


def test_greedy_matches_transformers_generate(engine):
    model, tok = engine._runner.model, engine.tokenizer
    for prompt in PROMPTS[:2]:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        ref = tok.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
        assert text_of(engine, prompt, GP(max_new_tokens=12)) == ref


def test_rows_joining_mid_batch_get_their_own_tokens(engine):
    long_p, short_p = GP(max_new_tokens=300), GP(max_new_tokens=20)
    ref_long = run(solo(engine, PROMPTS[0], long_p))
    ref_short = text_of(engine, PROMPTS[2], short_p)
    assert ref_long.completion_tokens > 60  # long enough to still run when the second joins

    async def staggered():
        gen0 = engine.stats()["generated_tokens_total"]
        first = asyncio.create_task(solo(engine, PROMPTS[0], long_p))
        while engine.stats()["generated_tokens_total"] - gen0 < 5:
            await asyncio.sleep(0.0005)
        second = await solo(engine, PROMPTS[2], short_p)
        still_running = not first.done()
        return await first, second, still_running

    a, b, still_running = run(staggered())
    assert still_running
    assert a.text == ref_long.text and b.text == ref_short


def test_per_row_params_in_one_batch(llama):
    cases = [
        (PROMPTS[0], GP(max_new_tokens=10)),
        (PROMPTS[1], GP(max_new_tokens=30, do_sample=True, seed=7, temperature=1.5)),
        (PROMPTS[2], GP(max_new_tokens=20, do_sample=True, seed=3, top_k=5, repetition_penalty=2.0)),
        (PROMPTS[3], GP(max_new_tokens=25, do_sample=True, seed=11, top_p=0.5, num_return_sequences=3)),
        (PROMPTS[0], GP(max_new_tokens=16, repetition_penalty=3.0, logprobs=True, top_logprobs=2)),
    ]
    alone = [run(llama.generate(p, params)) for p, params in cases]

    async def together():
        return await asyncio.gather(*(llama.generate(p, params) for p, params in cases))

    batched = run(together())
    for a, b in zip(alone, batched):
        assert [(r.text, r.finish_reason, r.completion_tokens) for r in a] == [
            (r.text, r.finish_reason, r.completion_tokens) for r in b
        ]
    # Log-probabilities agree up to float rounding (batched matmuls sum in another order).
    lp_a, lp_b = alone[4][0].logprobs, batched[4][0].logprobs
    assert [t.token for t in lp_a] == [t.token for t in lp_b]
    assert [t.logprob for t in lp_a] == pytest.approx([t.logprob for t in lp_b], abs=1e-4)
    assert [r.completion_tokens for r in batched[0]] == [10]
    assert len(batched[3]) == 3 and len({r.text for r in batched[3]}) > 1


# -- parameters --------------------------------------------------------------------------------


def test_max_new_tokens_gives_length(llama):
    r = run(solo(llama, PROMPTS[0], GP(max_new_tokens=5)))
    assert (r.completion_tokens, r.finish_reason) == (5, "length")


def test_stop_string_truncates_before_it(llama):
    full = text_of(llama, PROMPTS[1], GP(max_new_tokens=40))
    clean = [i for i in range(4, len(full) - 3) if "\ufffd" not in full[i : i + 3]]
    assert clean, full
    stop = full[clean[0] : clean[0] + 3]  # three characters: likely spans a token boundary
    r = run(solo(llama, PROMPTS[1], GP(max_new_tokens=40, stop=[stop, "never-seen-string"])))
    assert r.finish_reason == "stop"
    assert r.text == full[: full.index(stop)]
    assert stop not in r.text


def test_eos_stops_without_text(tiny_dir):
    # A model whose eos is its most likely first token stops at once with reason "stop".
    from graph.engine import GenerationEngine

    model, tok = load(tiny_dir / "causal_lm")
    first = text_of_first_token(model, tok, PROMPTS[0])
    model.generation_config.eos_token_id = [tok.eos_token_id, first]
    eng = GenerationEngine(model, tok, name="eos")
    try:
        r = run(solo(eng, PROMPTS[0], GP(max_new_tokens=10)))
        assert (r.finish_reason, r.text, r.completion_tokens) == ("stop", "", 1)
    finally:
        eng.close()


def text_of_first_token(model, tok, prompt) -> int:
    with torch.inference_mode():
        logits = model(**tok(prompt, return_tensors="pt")).logits
    return int(logits[0, -1].argmax())


def test_top_k_1_and_tiny_top_p_equal_greedy(llama):
    greedy = text_of(llama, PROMPTS[2], GP(max_new_tokens=20))
    assert text_of(llama, PROMPTS[2], GP(max_new_tokens=20, do_sample=True, top_k=1)) == greedy
    assert text_of(llama, PROMPTS[2], GP(max_new_tokens=20, do_sample=True, top_p=1e-6)) == greedy


def test_seed_reproducible_alone_and_in_a_batch(llama):
    params = GP(max_new_tokens=30, do_sample=True, seed=1234, temperature=1.2)
    a = text_of(llama, PROMPTS[0], params)
    b = text_of(llama, PROMPTS[0], params)
    other = text_of(llama, PROMPTS[0], params.model_copy(update={"seed": 99}))

    async def crowded():
        noise = [solo(llama, p, GP(max_new_tokens=40, do_sample=True)) for p in PROMPTS]
        results = await asyncio.gather(solo(llama, PROMPTS[0], params), *noise)
        return results[0].text

    assert a == b == run(crowded())
    assert other != a


def test_num_return_sequences_use_seed_plus_index(llama):
    many = run(llama.generate(PROMPTS[1], GP(max_new_tokens=20, do_sample=True, seed=5, num_return_sequences=3)))
    assert [r.index for r in many] == [0, 1, 2]
    for i, r in enumerate(many):
        assert r.text == text_of(llama, PROMPTS[1], GP(max_new_tokens=20, do_sample=True, seed=5 + i))


def test_temperature_changes_the_text(llama):
    greedy = text_of(llama, PROMPTS[0], GP(max_new_tokens=30))
    hot = [text_of(llama, PROMPTS[0], GP(max_new_tokens=30, do_sample=True, seed=s, temperature=3.0)) for s in range(3)]
    assert any(h != greedy for h in hot)


def _repeats(engine, prompt, penalty) -> int:
    r = run(solo(engine, prompt, GP(max_new_tokens=40, repetition_penalty=penalty, logprobs=True)))
    tokens = [lp.token for lp in r.logprobs]
    return len(tokens) - len(set(tokens))


def test_repetition_penalty_reduces_repeats(llama):
    assert _repeats(llama, PROMPTS[1], 10.0) < _repeats(llama, PROMPTS[1], 1.0)


def test_max_time_gives_time(llama):
    r = run(solo(llama, LONG, GP(max_new_tokens=900, max_time_ms=30)))
    assert r.finish_reason == "time"
    assert r.completion_tokens < 900


def test_logprobs(llama):
    r = run(solo(llama, PROMPTS[0], GP(max_new_tokens=8, logprobs=True, top_logprobs=3)))
    assert r.logprobs is not None and len(r.logprobs) == r.completion_tokens == 8
    for lp in r.logprobs:
        assert lp.logprob <= 0
        assert len(lp.top_logprobs) == 3
        assert all(t.logprob <= 0 for t in lp.top_logprobs)
        # greedy: the chosen token is the most likely one
        assert lp.logprob == pytest.approx(lp.top_logprobs[0].logprob)
    assert "".join(lp.token for lp in r.logprobs).endswith(r.text[-1:])
    assert run(solo(llama, PROMPTS[0], GP(max_new_tokens=3))).logprobs is None


# -- admission, errors, cancellation ----------------------------------------------------------


def test_prompt_too_long_is_invalid(tiny_dir):
    eng = make_engine(tiny_dir / "causal_lm", max_prompt_tokens=4)
    try:
        with pytest.raises(InvalidRequest) as err:
            run(solo(eng, "a long prompt that has many more than four tokens", GP()))
        assert err.value.field == "prompt" and "4" in err.value.message
    finally:
        eng.close()


def test_empty_prompt_starts_from_bos(llama):
    r = run(solo(llama, "", GP(max_new_tokens=3)))
    assert r.prompt_tokens == 1 and r.completion_tokens == 3


def test_full_queue_raises_overloaded_at_once(tiny_dir):
    eng = make_engine(tiny_dir / "causal_lm", max_batch_size=1, max_queue=2)

    async def scenario():
        busy = asyncio.create_task(eng.generate(PROMPTS[0], GP(max_new_tokens=1000), request_id="busy"))
        while eng.stats()["active_rows"] == 0:
            await asyncio.sleep(0.001)
        waiting = [asyncio.create_task(eng.generate(p, GP(max_new_tokens=4))) for p in PROMPTS[:2]]
        await asyncio.sleep(0)
        assert eng.stats()["queued_requests"] == 2
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            await eng.generate(PROMPTS[2], GP(max_new_tokens=4))
        assert time.perf_counter() - t0 < 0.5
        assert eng.cancel("busy")
        first = (await busy)[0]
        return first, [(await w)[0] for w in waiting]

    try:
        first, rest = run(scenario())
        assert first.finish_reason == "cancelled" and first.completion_tokens < 1000
        assert [r.finish_reason for r in rest] == ["length", "length"]
        assert eng.stats()["rejected_total"] == 1
    finally:
        eng.close()


def test_cancel_by_request_id_frees_the_row(llama):
    async def scenario():
        task = asyncio.create_task(llama.generate(PROMPTS[0], GP(max_new_tokens=1000), request_id="r1"))
        while llama.stats()["active_rows"] == 0:
            await asyncio.sleep(0.001)
        assert llama.cancel("r1")
        return (await task)[0]

    r = run(scenario())
    assert r.finish_reason == "cancelled" and r.completion_tokens < 1000
    assert not llama.cancel("r1")
    _assert_idle(llama)


def test_closing_a_stream_stops_generation(llama):
    async def scenario():
        agen = llama.stream(PROMPTS[0], GP(max_new_tokens=1000), request_id="s1")
        got = 0
        async for event in agen:
            got += len(event.text)
            if got:
                break
        await agen.aclose()

    run(scenario())
    _assert_idle(llama)


def test_cancelled_task_stops_generation(llama):
    async def scenario():
        task = asyncio.create_task(llama.generate(PROMPTS[1], GP(max_new_tokens=1000)))
        while llama.stats()["active_rows"] == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = llama.stats()["cancelled_total"]
    run(scenario())
    _assert_idle(llama)
    assert llama.stats()["cancelled_total"] == before + 1


def _assert_idle(engine):
    deadline = time.monotonic() + 2
    while engine.stats()["active_rows"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.stats()["active_rows"] == 0
    tokens = engine.stats()["generated_tokens_total"]
    time.sleep(0.05)
    assert engine.stats()["generated_tokens_total"] == tokens


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny_dir):
    eng = make_engine(tiny_dir / "causal_lm")
    assert eng.warmup()
    real = eng._runner._forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    eng._runner._forward = flaky
    try:
        with pytest.raises(NodeFailure, match="boom"):
            run(solo(eng, PROMPTS[0], GP(max_new_tokens=10)))
        assert eng.stats()["active_rows"] == 0
        assert run(solo(eng, PROMPTS[0], GP(max_new_tokens=4))).completion_tokens == 4
    finally:
        eng.close()


def test_eager_attention_batch_equals_solo(tiny_dir):
    from transformers import AutoModelForCausalLM

    from graph.engine import GenerationEngine

    _, tok = load(tiny_dir / "causal_lm_b")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "causal_lm_b", attn_implementation="eager").eval()
    eng = GenerationEngine(model, tok, name="eager")
    try:
        alone = [text_of(eng, p, GP(max_new_tokens=12)) for p in PROMPTS]

        async def together():
            return await asyncio.gather(*(solo(eng, p, GP(max_new_tokens=12)) for p in PROMPTS))

        assert [r.text for r in run(together())] == alone
    finally:
        eng.close()


def test_closed_engine_fails_waiting_requests(tiny_dir):
    eng = make_engine(tiny_dir / "causal_lm")

    async def scenario():
        task = asyncio.create_task(eng.generate(PROMPTS[0], GP(max_new_tokens=1000)))
        while eng.stats()["active_rows"] == 0:
            await asyncio.sleep(0.001)
        await asyncio.get_running_loop().run_in_executor(None, eng.close)
        with pytest.raises(NodeFailure):
            await task
        with pytest.raises(NodeFailure):
            await eng.generate(PROMPTS[0], GP())

    run(scenario())


# -- streaming ---------------------------------------------------------------------------------


def test_stream_concatenates_to_the_result_and_matches_generate(llama):
    params = GP(max_new_tokens=40, do_sample=True, seed=42, num_return_sequences=2)

    async def collect():
        parts: dict[int, list[str]] = {0: [], 1: []}
        results = {}
        async for ev in llama.stream(PROMPTS[3], params):
            assert ev.index not in results, "no event after a sequence's final one"
            parts[ev.index].append(ev.text)
            if ev.result is not None:
                results[ev.index] = ev.result
        return parts, results

    parts, results = run(collect())
    plain = run(llama.generate(PROMPTS[3], params))
    for i in (0, 1):
        assert "".join(parts[i]) == results[i].text == plain[i].text


def test_stream_never_sends_text_past_a_stop_string(llama):
    full = text_of(llama, PROMPTS[2], GP(max_new_tokens=40))
    clean = [i for i in range(6, len(full) - 4) if "\ufffd" not in full[i : i + 4]]
    stop = full[clean[0] : clean[0] + 4]

    async def collect():
        return [ev async for ev in llama.stream(PROMPTS[2], GP(max_new_tokens=40, stop=[stop]))]

    events = run(collect())
    streamed = "".join(ev.text for ev in events)
    assert streamed == events[-1].result.text == full[: full.index(stop)]
    sent = ""
    for ev in events:
        sent += ev.text
        assert stop not in sent


def test_stream_interval_coalesces_events(llama):
    interval_ms = 40

    async def collect():
        stamps = []
        async for ev in llama.stream(LONG, GP(max_new_tokens=400), interval_ms=interval_ms):
            stamps.append((time.monotonic(), ev))
        return stamps

    stamps = run(collect())
    assert stamps[-1][1].result is not None and stamps[-1][1].result.completion_tokens == 400
    non_final = [t for t, ev in stamps if ev.result is None]
    gaps = [b - a for a, b in zip(non_final, non_final[1:])]
    assert len(stamps) < 400 / 4  # coalesced: far fewer events than tokens
    assert all(g >= interval_ms / 1000 * 0.8 for g in gaps), gaps


# -- sliding-window attention (Gemma 3 style) -------------------------------------------------


def test_sliding_window_model_matches_generate(tiny_dir, tmp_path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from graph.engine import GenerationEngine

    _, tok = load(tiny_dir / "causal_lm")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.5,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    eng = GenerationEngine(model, tok, name="gemma")
    try:
        for prompt in (PROMPTS[2], PROMPTS[1]):
            enc = tok(prompt, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
            ref = tok.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
            assert text_of(eng, prompt, GP(max_new_tokens=16)) == ref

        async def together():
            return await asyncio.gather(*(solo(eng, p, GP(max_new_tokens=16)) for p in PROMPTS))

        alone = [text_of(eng, p, GP(max_new_tokens=16)) for p in PROMPTS]
        assert [r.text for r in run(together())] == alone
    finally:
        eng.close()


# -- pieces ------------------------------------------------------------------------------------


def test_incremental_detokenizer_never_splits_characters(tiny_dir):
    from graph.engine.detok import IncrementalDetokenizer, make_decoder

    _, tok = load(tiny_dir / "causal_lm")
    text = " héllo wörld, 日本語 and 🙂 emoji"
    ids = tok(text, add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(make_decoder(tok), tok("Say:", add_special_tokens=False).input_ids)
    parts = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(parts) == text
    assert not any("\ufffd" in p for p in parts)


def test_incremental_detokenizer_flush_matches_a_whole_decode(tiny_dir):
    """A sequence cut inside a character: nothing is sent for the partial bytes while generating,
    and flush() gives what decoding the whole sequence gives (U+FFFD), so nothing is lost."""
    from graph.engine.detok import IncrementalDetokenizer, make_decoder

    _, tok = load(tiny_dir / "causal_lm")
    decode = make_decoder(tok)
    ids = tok(" 🙂", add_special_tokens=False).input_ids[:-1]  # the emoji's last byte never comes
    detok = IncrementalDetokenizer(decode, [])
    parts = [detok.add(i) for i in ids]
    assert "\ufffd" not in "".join(parts)
    tail = detok.flush()
    assert "".join(parts) + tail == decode(ids) and tail.endswith("\ufffd")
    assert detok.flush() == ""


def test_stop_matcher_holds_back_possible_starts():
    from graph.engine.detok import StopMatcher

    m = StopMatcher(["END", "xyz"])
    assert m.add("abc E") == ("abc ", False)
    assert m.add("N") == ("", False)
    assert m.add("D more") == ("", True)
    assert m.text == "abc "
    m = StopMatcher(["END"])
    assert m.add("EN") == ("", False)
    assert m.add("x") == ("ENx", False)
    assert m.rest() == ""


def test_sampler_matches_transformers_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from graph.engine.sampling import BatchSampler, RowSampling

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    seen = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    rows = [
        RowSampling(GP(repetition_penalty=1.7), None, seen[0]),
        RowSampling(GP(repetition_penalty=1.0), None, seen[1]),
        RowSampling(GP(repetition_penalty=0.5), None, seen[2]),
    ]
    s = BatchSampler(rows, 50)
    out = s.step(logits.clone())
    for i, (row, ids) in enumerate(zip(rows, seen)):
        ref = RepetitionPenaltyLogitsProcessor(row.params.repetition_penalty)(
            torch.tensor([ids]), logits[i : i + 1].clone()
        )
        assert out.tokens[i] == int(ref.argmax())

    # top-k / top-p keep exactly transformers' sets: sampling with a seed never leaves them.
    for params, warper in (
        (GP(do_sample=True, top_k=4), TopKLogitsWarper(4)),
        (GP(do_sample=True, top_p=0.6), TopPLogitsWarper(0.6)),
    ):
        kept = torch.isfinite(warper(None, logits.clone()))
        for seed in range(20):
            gens = [torch.Generator().manual_seed(seed + i) for i in range(3)]
            toks = BatchSampler([RowSampling(params, g) for g in gens], 50).step(logits.clone()).tokens
            assert all(kept[i, t] for i, t in enumerate(toks))


def test_kv_cache_rows_join_leave_and_grow():
    from graph.engine.runners.torch_cache import BatchKVCache

    # Each row's token at position j stores 100 * row_id + j; the cache must keep every row's
    # tokens in order, right-aligned, through joins, leaves and growth.
    def prefill(ids, lengths):
        p = max(lengths)
        c = BatchKVCache(1, len(ids), p)
        c.rows = len(ids)
        kv = torch.zeros(len(ids), 1, p, 1)
        for i, (rid, n) in enumerate(zip(ids, lengths)):
            c.mask[i, p - n :] = True
            kv[i, 0, p - n :, 0] = torch.arange(n) + 100 * rid
        c.layers[0].update(kv, kv)
        c.advance(p)
        return c

    def decode(cache, rows, lengths):
        cache.reserve(1, right_room=2)
        cache.mask[: cache.rows, cache.end] = True
        kv = torch.tensor([100.0 * r + lengths[r] for r in rows]).view(-1, 1, 1, 1)
        k, _ = cache.layers[0].update(kv, kv)
        cache.advance(1)
        for r in rows:
            lengths[r] += 1
        assert k.shape[2] == cache.length

    def check(cache, rows, lengths):
        mask = cache.live_mask()
        keys = cache.layers[0].kbuf[: cache.rows, 0, cache.start : cache.end, 0]
        assert mask.shape[1] == max(lengths[r] for r in rows)  # no column is padding for all rows
        for i, r in enumerate(rows):
            assert keys[i][mask[i]].tolist() == [100.0 * r + j for j in range(lengths[r])]
            assert mask[i, -lengths[r] :].all() and not mask[i, : -lengths[r]].any()
            assert (keys[i][~mask[i]] == 0).all()  # padding is finite (zero)

    cache = BatchKVCache(1, 4, 8, left_room=6)
    lengths = {0: 3, 1: 5, 2: 2, 3: 7}
    cache.add_rows(prefill([0, 1], [3, 5]), [0, 1], right_room=2)
    rows = [0, 1]
    for _ in range(4):
        decode(cache, rows, lengths)
    check(cache, rows, lengths)
    order = cache.remove_rows([1])  # the longest row leaves: leading columns get trimmed
    rows = [rows[i] for i in order]
    check(cache, rows, lengths)
    cache.add_rows(prefill([2, 3], [2, 7]), [0, 1], right_room=2)  # 7 > left_room: room is made
    rows += [2, 3]
    for _ in range(9):  # past the right end: the buffer grows
        decode(cache, rows, lengths)
    check(cache, rows, lengths)
    order = cache.remove_rows([0, 2])
    rows = [rows[i] for i in order]
    check(cache, rows, lengths)


def test_sampler_draws_follow_the_distribution():
    from graph.engine.sampling import BatchSampler, RowSampling

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    cases = [
        (GP(do_sample=True), torch.softmax(logits[0], 0)),
        (GP(do_sample=True, temperature=2.0), torch.softmax(logits[0] / 2, 0)),
        (GP(do_sample=True, top_k=2), torch.softmax(logits[0, :2], 0)),
        (GP(do_sample=True, top_p=0.8), torch.softmax(logits[0, :2], 0)),  # 0.665 + 0.245 >= 0.8
    ]
    n = 4000
    for params, expected in cases:
        gen = torch.Generator().manual_seed(0)
        counts = torch.zeros(5)
        for _ in range(n):
            counts[BatchSampler([RowSampling(params, gen)], 5).step(logits.clone()).tokens[0]] += 1
        freq = counts[: len(expected)] / n
        assert counts[len(expected) :].sum() == 0, params
        assert torch.allclose(freq, expected, atol=0.03), (params, freq, expected)


def test_chat_template_without_one_is_a_config_error(tiny_dir):
    from graph.engine import GenerationEngine
    from graph.errors import ConfigError

    model, tok = load(tiny_dir / "causal_lm")
    with pytest.raises(ConfigError) as err:
        GenerationEngine(model, tok, name="tiny_a", chat_template=True)
    assert err.value.field == "generators.tiny_a.chat_template"


def test_turnover_at_step_boundaries_is_not_overload(tiny_dir):
    # 20 clients against 8 rows + 16 queue places never exceed the node's capacity, even when a
    # whole batch finishes at once and its replacements arrive before the next step admits them.
    eng = make_engine(tiny_dir / "causal_lm", max_batch_size=8, max_queue=16)

    async def scenario():
        sem = asyncio.Semaphore(20)

        async def one():
            async with sem:
                return await eng.generate("The cat", GP(max_new_tokens=2))

        return await asyncio.gather(*[one() for _ in range(200)])

    try:
        assert len(run(scenario())) == 200
        assert eng.stats()["rejected_total"] == 0
    finally:
        eng.close()
