"""The onnx backend (graph/engine/runners/onnx_runner.py) on a tiny llama: same tokens as torch, and the features.

The tiny llama here has 16-dim heads (tests/tiny_models.py:build_onnx_source; ONNX Runtime's
GroupQueryAttention needs head_size % 16 == 0). It is converted once at float32 by
graph/models/onnx_model.py into artifacts/onnx/ (about 20-60 s the first time, then found).
Tolerance: at float32, greedy tokens equal the torch backend's exactly (no tolerance needed on this
model). The int4 conversion of real models changes the logits (docs/runtimes.md prints perplexity and
greedy agreement); its batched greedy may differ from solo where two tokens nearly tie (MatMulNBits
picks a different kernel for one row than for many), so exact batch invariance is tested at float32.

Every engine feature runs through the project's scheduler and sampler, so the torch backend's own
tests of those features are run here again on the onnx engine (imported from test_engine.py).
"""

from __future__ import annotations

import asyncio

import pytest

from graph.config import ModelRef, RuntimeConfig
from graph.params import GenerationParams as GP
from tests.graph import test_engine as te

PROMPTS = te.PROMPTS


@pytest.fixture(scope="session")
def onnx_source(tiny_dir):
    from tests.tiny_models import build_onnx_source

    return build_onnx_source(tiny_dir)


@pytest.fixture(scope="session")
def onnx_dir(onnx_source):
    from graph.models.onnx_model import DEFAULT_ONNX_CACHE, prepare_local

    return prepare_local(onnx_source, DEFAULT_ONNX_CACHE, precision="fp32")


def onnx_engine(onnx_source, onnx_dir, **kw):
    from transformers import AutoTokenizer

    from graph.engine import GenerationEngine
    from graph.engine.runners.onnx_runner import OnnxRunner

    tok = AutoTokenizer.from_pretrained(onnx_source)
    tok.padding_side = "left"
    kw.setdefault("max_batch_size", 16)
    engine = GenerationEngine(OnnxRunner(onnx_dir, source_dir=onnx_source, precision="fp32"), tok, name="onnx", **kw)
    engine.start()
    return engine


@pytest.fixture(scope="module")
def llama(onnx_source, onnx_dir):
    """The name test_engine's tests take: here the onnx engine."""
    eng = onnx_engine(onnx_source, onnx_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def torch_llama(onnx_source):
    eng = te.make_engine(onnx_source)
    yield eng
    eng.close()


GREEDY = GP(max_new_tokens=16, logprobs=True)


def greedy(engine, params: GP = GREEDY) -> tuple[list[list[str]], list[list[str]]]:
    """(solo, batched) greedy tokens of PROMPTS."""

    async def one(p):
        return [lp.token for lp in (await engine.generate(p, params))[0].logprobs]

    async def together():
        return await asyncio.gather(*(one(p) for p in PROMPTS))

    return [asyncio.run(one(p)) for p in PROMPTS], asyncio.run(together())


def test_greedy_tokens_equal_the_torch_backend(llama, torch_llama):
    ours_solo, ours_batched = greedy(llama)
    theirs_solo, _ = greedy(torch_llama)
    assert ours_solo == theirs_solo
    assert ours_batched == ours_solo


def test_rows_joining_mid_batch_and_long_prompts(llama, torch_llama):
    """Rows of different lengths joining a running batch (the KV cache grows past its first size)."""
    long = " ".join(PROMPTS) * 4
    params = GP(max_new_tokens=40)

    async def staggered(engine):
        first = asyncio.create_task(engine.generate(PROMPTS[0], params))
        await asyncio.sleep(0.05)
        rest = await asyncio.gather(*(engine.generate(p, params) for p in (long, PROMPTS[1])))
        return [r[0].text for r in [await first, *rest]]

    assert asyncio.run(staggered(llama)) == asyncio.run(staggered(torch_llama))


def test_cancelled_request_frees_its_row(llama):
    async def scenario():
        task = asyncio.create_task(llama.generate(PROMPTS[0], GP(max_new_tokens=900, do_sample=True), request_id="x"))
        while llama.stats()["active_rows"] == 0:
            await asyncio.sleep(0.001)
        assert llama.cancel("x")
        return (await task)[0]

    r = asyncio.run(scenario())
    assert r.finish_reason == "cancelled" and r.completion_tokens < 900
    te._assert_idle(llama)
    assert llama.stats()["kv_mb"] == 0


def test_node_stats_count_onnx_work(llama):
    before = llama.stats()
    asyncio.run(llama.generate(PROMPTS[2], GP(max_new_tokens=5)))
    after = llama.stats()
    assert after["generated_tokens_total"] - before["generated_tokens_total"] >= 1
    assert after["prefill_steps_total"] > before["prefill_steps_total"]


# The torch backend's feature tests, run on the onnx engine (fixture `llama` above).
test_seed_reproducible_alone_and_in_a_batch = te.test_seed_reproducible_alone_and_in_a_batch
test_num_return_sequences_use_seed_plus_index = te.test_num_return_sequences_use_seed_plus_index
test_per_row_params_in_one_batch = te.test_per_row_params_in_one_batch
test_stop_string_truncates_before_it = te.test_stop_string_truncates_before_it
test_top_k_1_and_tiny_top_p_equal_greedy = te.test_top_k_1_and_tiny_top_p_equal_greedy
test_repetition_penalty_reduces_repeats = te.test_repetition_penalty_reduces_repeats
test_logprobs = te.test_logprobs
test_closing_a_stream_stops_generation = te.test_closing_a_stream_stops_generation
test_stream_concatenates_to_the_result_and_matches_generate = (
    te.test_stream_concatenates_to_the_result_and_matches_generate
)


# -- configuration ---------------------------------------------------------------------------------


def test_compile_is_a_torch_option():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="compile: true is a torch backend option"):
        RuntimeConfig(backend="onnx", compile=True)


def test_hub_model_on_onnx_is_a_config_error_naming_the_backend():
    from graph.errors import ConfigError
    from graph.models.onnx_model import load

    with pytest.raises(ConfigError) as err:
        load(ModelRef(hub="openai-community/gpt2"), RuntimeConfig(backend="onnx"))
    assert err.value.field == "runtime.backend"


def test_auto_backend_picks_onnx_on_avx2_for_measured_models_only():
    from graph.models import runtimes

    kind, choice = runtimes.choose({"avx2"}, "smollm2-135m-instruct", backends=("onnx", "torch"))
    assert kind == "avx2" and choice.backend == "onnx"
    _, other = runtimes.choose({"avx2"}, "my-model", backends=("onnx", "torch"))
    assert other.backend == "torch"  # never measured: the torch choice
    _, torch_only = runtimes.choose({"avx2"}, "smollm2-135m-instruct", backends=("torch",))
    assert torch_only.backend == "torch"  # quantize: auto on backend torch stays on torch
    amx = {"amx_bf16", "avx512f"}  # measured (issue 31): onnx int8 the fastest single stream, bfloat16 at 64
    for model in ("smollm2-135m-instruct", "gemma-3-270m"):
        _, one = runtimes.choose(amx, model, "latency", backends=("onnx", "torch"))
        assert (one.backend, one.onnx_precision) == ("onnx", "int8")
        _, busy = runtimes.choose(amx, model, "throughput", backends=("onnx", "torch"))
        assert (busy.backend, busy.dtype) == ("torch", "bfloat16")
    _, other = runtimes.choose(amx, "my-model", backends=("onnx", "torch"))
    assert other.backend == "torch"  # never measured on onnx there
    _, avx512 = runtimes.choose({"avx512f"}, "smollm2-135m-instruct", backends=("onnx", "torch"))
    assert avx512.backend == "torch"  # kinds not measured with onnx keep their torch choice


def test_node_on_onnx_names_its_runtime(onnx_source, onnx_dir):
    from graph.config import GeneratorNode
    from graph.models.node_engine import engine_for_node

    node = GeneratorNode(
        model={"path": str(onnx_source)}, runtime={"backend": "onnx", "onnx_precision": "fp32", "threads": 1}
    )
    engine = engine_for_node("tiny", node)
    try:
        assert engine.runtime_name.startswith("onnx fp32")
        r = asyncio.run(engine.generate("Hello", GP(max_new_tokens=3)))
        assert r[0].completion_tokens >= 1
    finally:
        engine.close()


def test_warm_up_runs_without_a_failure(onnx_source, onnx_dir, caplog):
    """The node's start-up warm-up (a prefill, decode steps, the runner's own warm_up) runs on onnx."""
    with caplog.at_level("ERROR", logger="graph"):
        eng = onnx_engine(onnx_source, onnx_dir)
        try:
            assert eng.warmup(timeout=120)
        finally:
            eng.close()
    assert not [r for r in caplog.records if "warm-up failed" in r.getMessage()], caplog.text
