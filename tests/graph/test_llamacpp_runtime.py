"""The llamacpp backend (graph/engine/runners/llamacpp_runner.py) on a tiny llama GGUF: llama.cpp's tokens, features.

The GGUF file is the tiny llama of tests/tiny_models.py written at float32 by
tests/tiny_models.py:build_gguf (a second copy at float16 checks a quantized-storage path). The
reference is llama.cpp's own single-sequence decode of the same file through llama-cpp-python's
high-level `Llama` (one sequence, greedy argmax over its scores): the runner's greedy tokens must
equal it, alone and with the prompts decoded together in one batch (one `llama_decode` per step,
one sequence per row). Measured on this tiny model: batched equals solo exactly (no tolerance).

Every engine feature runs through the project's scheduler and sampler, so the torch backend's own
feature tests are run here again on the llamacpp engine (imported from test_engine.py).
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from graph.config import ModelRef, RuntimeConfig
from graph.params import GenerationParams as GP
from tests.graph import test_engine as te

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
PROMPTS = te.PROMPTS


@pytest.fixture(scope="session")
def gguf_source(tiny_dir):
    from tests.tiny_models import build_gguf_source

    return build_gguf_source(tiny_dir)


def llamacpp_runner(gguf_source, **kw):
    from graph.engine.runners.llamacpp_runner import LlamaCppRunner

    kw.setdefault("n_seq", 17)
    kw.setdefault("n_ctx_seq", 1536)
    return LlamaCppRunner(gguf_source / "model.gguf", threads=2, eos_ids=[2], **kw)


def llamacpp_engine(gguf_source, **kw):
    from transformers import AutoTokenizer

    from graph.engine import GenerationEngine

    tok = AutoTokenizer.from_pretrained(gguf_source)
    tok.padding_side = "left"
    kw.setdefault("max_batch_size", 16)
    engine = GenerationEngine(llamacpp_runner(gguf_source), tok, name="llamacpp", **kw)
    engine.start()
    return engine


@pytest.fixture(scope="module")
def llama(gguf_source):
    """The name test_engine's tests take: here the llamacpp engine."""
    eng = llamacpp_engine(gguf_source)
    yield eng
    eng.close()


def reference_greedy(gguf_source, prompt_ids: list[int], n: int) -> list[int]:
    """llama.cpp's own single-sequence greedy decode (llama-cpp-python's high-level Llama)."""
    import numpy as np
    from llama_cpp import Llama

    from graph.engine.runners.llamacpp_runner import load_backend

    load_backend()
    llm = Llama(str(gguf_source / "model.gguf"), n_ctx=256, n_threads=1, verbose=False, logits_all=True)
    llm.eval(prompt_ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if tok == 2:
            break
        llm.eval([tok])
    llm.close()
    return out


def test_greedy_tokens_equal_llamacpp_own_decode_alone_and_batched(llama, gguf_source):
    tok = llama.tokenizer
    params = GP(max_new_tokens=16)

    async def one(p):
        return (await llama.generate(p, params))[0].text

    async def together():
        return await asyncio.gather(*(one(p) for p in PROMPTS))

    solo = [asyncio.run(one(p)) for p in PROMPTS]
    batched = asyncio.run(together())
    assert batched == solo
    for prompt, text in zip(PROMPTS, solo):
        ids = tok(prompt)["input_ids"]
        ref = reference_greedy(gguf_source, ids, 16)
        assert tok.decode([t for t in ref if t != 2]) == text, prompt


def test_greedy_tokens_equal_the_torch_backend_at_float32(llama, tiny_dir):
    """The GGUF holds the tiny llama's float32 weights: ggml's float32 kernels give torch's tokens."""
    torch_llama = te.make_engine(tiny_dir / "causal_lm")
    try:
        params = GP(max_new_tokens=16)
        for p in PROMPTS:
            assert te.text_of(llama, p, params) == te.text_of(torch_llama, p, params), p
    finally:
        torch_llama.close()


def test_rows_joining_mid_batch_and_long_prompts(llama):
    """Rows of different lengths joining a running batch get the tokens they get alone."""
    long = " ".join(PROMPTS) * 4
    params = GP(max_new_tokens=40)

    async def staggered(engine):
        first = asyncio.create_task(engine.generate(PROMPTS[0], params))
        await asyncio.sleep(0.05)
        rest = await asyncio.gather(*(engine.generate(p, params) for p in (long, PROMPTS[1])))
        return [r[0].text for r in [await first, *rest]]

    alone = [te.text_of(llama, p, params) for p in (PROMPTS[0], long, PROMPTS[1])]
    assert asyncio.run(staggered(llama)) == alone


def test_cancelled_request_frees_its_sequence(llama):
    runner = llama._runner

    async def scenario():
        task = asyncio.create_task(llama.generate(PROMPTS[0], GP(max_new_tokens=900, do_sample=True), request_id="x"))
        while llama.stats()["active_rows"] == 0:
            await asyncio.sleep(0.001)
        assert runner.in_use() >= 1
        assert llama.cancel("x")
        return (await task)[0]

    r = asyncio.run(scenario())
    assert r.finish_reason == "cancelled" and r.completion_tokens < 900
    te._assert_idle(llama)
    assert llama.stats()["kv_mb"] == 0
    assert runner.in_use() == 0


def test_samples_of_one_prompt_copy_its_sequence_and_all_are_freed(llama):
    """num_return_sequences: one prefill, its sequence copied (llama_memory_seq_cp) per extra sample;
    greedy samples of one prompt are then identical, and every sequence is free afterwards."""
    params = GP(max_new_tokens=12, num_return_sequences=3, do_sample=True, top_k=1)
    rows = asyncio.run(llama.generate(PROMPTS[1], params))
    assert len({r.text for r in rows}) == 1 and rows[0].completion_tokens >= 1
    te._assert_idle(llama)
    assert llama._runner.in_use() == 0


def test_runner_frees_prefill_sequences_no_row_continues(gguf_source):
    """A prompt whose rows all finish at their first token is never added to the batch: its
    sequence comes back once the prefill is dropped; a dropped cache's rows come back too."""
    import torch

    runner = llamacpp_runner(gguf_source, n_seq=3, n_ctx_seq=256)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    for _ in range(5):  # more prefills than sequences: each must come back
        logits, pre = runner.prefill(ids, mask)
        del pre
        gc.collect()
    logits, pre = runner.prefill(ids, mask)
    cache = runner.new_cache(2, 64)
    cache.add_rows(pre, [0, 0], 8)
    assert runner.in_use() == 2
    runner.decode(logits.argmax(-1, keepdim=True).repeat(2, 1), torch.tensor([[4], [4]]), cache, 8)
    del cache, pre
    gc.collect()
    runner.prefill(ids, mask)  # reclaims the dropped cache's two sequences first
    assert runner.in_use() <= 1
    runner.close()


# The torch backend's feature tests, run on the llamacpp engine (fixture `llama` above).
test_seed_reproducible_alone_and_in_a_batch = te.test_seed_reproducible_alone_and_in_a_batch
test_num_return_sequences_use_seed_plus_index = te.test_num_return_sequences_use_seed_plus_index
test_stop_string_truncates_before_it = te.test_stop_string_truncates_before_it
test_top_k_1_and_tiny_top_p_equal_greedy = te.test_top_k_1_and_tiny_top_p_equal_greedy
test_repetition_penalty_reduces_repeats = te.test_repetition_penalty_reduces_repeats
test_logprobs = te.test_logprobs
test_max_new_tokens_gives_length = te.test_max_new_tokens_gives_length
test_cancel_by_request_id_frees_the_row = te.test_cancel_by_request_id_frees_the_row
test_closing_a_stream_stops_generation = te.test_closing_a_stream_stops_generation
test_cancelled_task_stops_generation = te.test_cancelled_task_stops_generation
test_stream_concatenates_to_the_result_and_matches_generate = (
    te.test_stream_concatenates_to_the_result_and_matches_generate
)
test_stream_never_sends_text_past_a_stop_string = te.test_stream_never_sends_text_past_a_stop_string


def test_per_row_params_in_one_batch(llama):
    """test_engine's test of the same name, with the tolerance ggml's batched kernels need: texts
    equal, log-probabilities within 1e-3 (measured: at most 1.2e-4 apart; torch's bound is 1e-4)."""
    cases = [
        (PROMPTS[0], GP(max_new_tokens=10)),
        (PROMPTS[1], GP(max_new_tokens=30, do_sample=True, seed=7, temperature=1.5)),
        (PROMPTS[2], GP(max_new_tokens=20, do_sample=True, seed=3, top_k=5, repetition_penalty=2.0)),
        (PROMPTS[3], GP(max_new_tokens=25, do_sample=True, seed=11, top_p=0.5, num_return_sequences=3)),
        (PROMPTS[0], GP(max_new_tokens=16, repetition_penalty=3.0, logprobs=True, top_logprobs=2)),
    ]
    alone = [asyncio.run(llama.generate(p, params)) for p, params in cases]

    async def together():
        return await asyncio.gather(*(llama.generate(p, params) for p, params in cases))

    batched = asyncio.run(together())
    for a, b in zip(alone, batched):
        assert [(r.text, r.finish_reason, r.completion_tokens) for r in a] == [
            (r.text, r.finish_reason, r.completion_tokens) for r in b
        ]
    lp_a, lp_b = alone[4][0].logprobs, batched[4][0].logprobs
    assert lp_a is not None and lp_b is not None
    assert [t.token for t in lp_a] == [t.token for t in lp_b]
    assert [t.logprob for t in lp_a] == pytest.approx([t.logprob for t in lp_b], abs=1e-3)
    assert len(batched[3]) == 3 and len({r.text for r in batched[3]}) > 1


# -- configuration ---------------------------------------------------------------------------------


def test_compile_is_a_torch_option():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="compile: true is a torch backend option"):
        RuntimeConfig(backend="llamacpp", compile=True)


def test_model_without_a_gguf_file_is_a_config_error_naming_the_backend(tiny_dir):
    from graph.errors import ConfigError
    from graph.models.gguf_model import load

    with pytest.raises(ConfigError, match="llamacpp") as err:
        load(ModelRef(path=str(tiny_dir / "causal_lm")), RuntimeConfig(backend="llamacpp"))
    assert err.value.field == "runtime.backend"


def test_node_on_llamacpp_names_its_runtime(gguf_source):
    from graph.config import GeneratorNode
    from graph.models.node_engine import engine_for_node

    node = GeneratorNode(model={"path": str(gguf_source)}, runtime={"backend": "llamacpp", "threads": 1})
    engine = engine_for_node("tiny", node)
    try:
        assert engine.runtime_name.startswith("llamacpp"), engine.runtime_name
        assert "ggml CPU variant" in engine.runtime_name
        r = asyncio.run(engine.generate("Hello", GP(max_new_tokens=3)))
        assert r[0].completion_tokens >= 1
    finally:
        engine.close()


def test_cpu_variant_is_one_this_cpu_runs():
    from graph.engine.runners.llamacpp_runner import cpu_variants, load_backend

    variants = cpu_variants()
    chosen = load_backend()
    if variants:
        assert chosen in {name for name, score, _ in variants if score > 0}


def test_warm_up_runs_without_a_failure(gguf_source, caplog):
    with caplog.at_level("ERROR", logger="graph"):
        eng = llamacpp_engine(gguf_source)
        try:
            assert eng.warmup(timeout=120)
        finally:
            eng.close()
    assert not [r for r in caplog.records if "warm-up failed" in r.getMessage()], caplog.text


def test_auto_picks_llamacpp_only_where_the_figures_say_and_only_for_gguf_models():
    from graph.models import runtimes
    from graph.models.loading import onnx_variants

    every = ("llamacpp", "onnx", "torch")
    zen4 = {"avx512f", "avx512_bf16"}
    assert runtimes.choose(zen4, "smollm2-135m-instruct", "latency", every)[1].backend == "llamacpp"
    assert runtimes.choose(zen4, "smollm2-135m-instruct", "throughput", every)[1].backend == "torch"
    assert runtimes.choose(zen4, "my-model", "latency", every)[1].backend == "torch"  # no GGUF file
    assert runtimes.choose(zen4, "smollm2-135m-instruct", "latency", ("torch",))[1].backend == "torch"
    amx = {"avx512f", "avx512_bf16", "amx_bf16"}
    # AMX, measured (scripts/bench_node.py, issue 31): onnx int8 beat llamacpp at one stream, torch bfloat16 at 64
    for model in ("smollm2-135m-instruct", "gemma-3-270m"):
        assert runtimes.choose(amx, model, "latency", every)[1].backend == "onnx"
        assert runtimes.choose(amx, model, "throughput", every)[1].backend == "torch"
    assert runtimes.choose(amx, "my-model", "latency", every)[1].backend == "torch"  # not measured on onnx
    # A Bento still carries the onnx int8 conversion AVX2-only hosts load.
    assert onnx_variants(RuntimeConfig(backend="auto"), ModelRef(embedded="smollm2-135m-instruct")) == [("int8", None)]
