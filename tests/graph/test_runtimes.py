"""Runtime options on the tiny llama: quantized weights and the compiled decode step.

Tolerances (also in docs/configuration.md): weight-only int8 and bfloat16 change the logits, so their
greedy text must agree with float32's on at least half the characters of short completions of the
tiny random model (its logits are nearly flat, the worst case for rounding; on SmolLM2 the
benchmark prints the agreement and perplexity). int4 is held to the same bound against float32
running on its dequantized weights (4 bits on random weights change the model itself). Batched greedy
equals solo greedy exactly under every option except dynamic int8 (its activation scale is per batch),
and the compiled step gives exactly the eager step's tokens.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from graph.config import ModelRef, RuntimeConfig
from graph.params import GenerationParams as GP

PROMPTS = ["I have an idea!", "The cat", "Once upon a time there was a small language model", "Hello world"]
PARAMS = GP(max_new_tokens=12)


def engine_for(tiny_dir, runtime: RuntimeConfig, **kw):
    from graph.engine import GenerationEngine
    from graph.models.loading import load_causal_lm

    model, tok = load_causal_lm(ModelRef(path=str(tiny_dir / "causal_lm")), runtime)
    engine = GenerationEngine(model, tok, name="rt", max_batch_size=8, compile=runtime.compile, **kw)
    engine.start()
    return engine


def solo_and_batched(engine) -> tuple[list[list[int]], list[list[int]]]:
    async def one(p):
        return (await engine.generate(p, PARAMS))[0]

    async def together():
        return await asyncio.gather(*(one(p) for p in PROMPTS))

    alone = [asyncio.run(one(p)) for p in PROMPTS]
    batched = asyncio.run(together())
    return [r.text for r in alone], [r.text for r in batched]


@pytest.fixture(scope="module")
def float32_texts(tiny_dir):
    engine = engine_for(tiny_dir, RuntimeConfig())
    try:
        return solo_and_batched(engine)[0]
    finally:
        engine.close()


def agreement(a: list[str], b: list[str]) -> float:
    same = total = 0
    for x, y in zip(a, b):
        total += max(len(x), len(y))
        same += next((i for i, (c, d) in enumerate(zip(x, y)) if c != d), min(len(x), len(y)))
    return same / max(total, 1)


@pytest.mark.parametrize(
    "quantize,dtype", [("int8_weight", "bfloat16"), ("int4_weight", "float32"), ("none", "bfloat16")]
)
def test_weight_only_batched_equals_solo_and_close_to_float32(tiny_dir, float32_texts, quantize, dtype):
    engine = engine_for(tiny_dir, RuntimeConfig(quantize=quantize, dtype=dtype))
    try:
        alone, batched = solo_and_batched(engine)
    finally:
        engine.close()
    assert batched == alone
    reference = float32_texts if quantize != "int4_weight" else dequantized_texts(tiny_dir)
    assert agreement(alone, reference) >= 0.5


def dequantized_texts(tiny_dir) -> list[str]:
    """float32 greedy texts of the tiny llama whose Linear weights are int4_weight's dequantized ones."""
    from graph.engine import GenerationEngine
    from graph.models.loading import load_causal_lm
    from graph.models.quantize import WeightOnlyLinear

    model, tok = load_causal_lm(ModelRef(path=str(tiny_dir / "causal_lm")), RuntimeConfig())
    quantized, _ = load_causal_lm(ModelRef(path=str(tiny_dir / "causal_lm")), RuntimeConfig(quantize="int4_weight"))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    mine = dict(model.named_modules())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, WeightOnlyLinear):
                mine[name].weight.copy_(module.dequantized())
    engine = GenerationEngine(model, tok, name="ref", max_batch_size=8)
    engine.start()
    try:
        return solo_and_batched(engine)[0]
    finally:
        engine.close()


def test_dynamic_int8_still_works(tiny_dir):
    engine = engine_for(tiny_dir, RuntimeConfig(quantize="int8"))
    try:
        alone, _ = solo_and_batched(engine)
    finally:
        engine.close()
    assert all(alone)  # no bound on the tiny model: its quality is the benchmark's perplexity column


def test_weight_only_linear_matches_its_dequantized_weights():
    from graph.models.quantize import WeightOnlyLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(5, 64)
    for bits, tol in (("int8", 0.05), ("int4", 0.3)):
        q = WeightOnlyLinear(lin, bits, group_size=32)
        assert q(x).dtype == torch.float32
        assert torch.allclose(q(x), lin(x), atol=tol), bits
        # row independence: a row's output does not depend on the other rows
        assert torch.equal(q(x)[2:3], q(x[2:3]))


def test_tied_head_is_untied_and_quantized(tiny_dir):
    from graph.models.loading import load_causal_lm
    from graph.models.quantize import WeightOnlyLinear

    model, _ = load_causal_lm(ModelRef(path=str(tiny_dir / "causal_lm")), RuntimeConfig(quantize="int4_weight"))
    head = model.get_output_embeddings()
    assert isinstance(head, WeightOnlyLinear) and head.bits == "int8"  # the head stays at 8 bits
    assert model.model.layers[0].mlp.up_proj.bits == "int4"
    assert model.get_input_embeddings().weight.dtype == torch.float32


def test_auto_picks_from_the_table_by_cpu_kind(tmp_path, caplog):
    from graph.models import runtimes
    from graph.models.loading import resolve_runtime

    assert runtimes.cpu_kind({"avx2", "fma"}) == "avx2"
    assert runtimes.cpu_kind({"avx2", "avx512f"}) == "avx512"
    assert runtimes.cpu_kind({"avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert runtimes.cpu_kind({"avx512f", "avx512_bf16", "amx_bf16"}) == "amx"
    assert runtimes.choose({"avx512_bf16"}, "smollm2-135m-instruct")[1].quantize == "int4_weight"
    assert runtimes.choose({"avx512_bf16"}, "gemma-3-270m")[1].quantize == "int8_weight"  # its int4 failed
    # a busy node: plain bfloat16 beats the weight-only kernels with 16-64 rows in the batch
    busy = runtimes.choose({"avx512_bf16"}, "smollm2-135m-instruct", goal="throughput")[1]
    assert (busy.dtype, busy.quantize) == ("bfloat16", "none")
    # AMX (issue 31's bench_node run): quantize auto on torch gives bfloat16 for both goals
    amx = {"avx512f", "avx512_bf16", "amx_bf16"}
    for goal in ("latency", "throughput"):
        picked = runtimes.choose(amx, "smollm2-135m-instruct", goal=goal)[1]
        assert (picked.backend, picked.dtype, picked.quantize) == ("torch", "bfloat16", "none")
    for kind_flags in ({"avx2"}, {"avx512f"}, amx):  # every kind has both goals
        for goal in ("latency", "throughput"):
            assert runtimes.choose(kind_flags, "any-model", goal=goal)[1].why
    kind, busy = runtimes.choose(goal="throughput")
    resolved = resolve_runtime(RuntimeConfig(quantize="auto", optimize="throughput"), name="m")
    assert (resolved.dtype, resolved.quantize) == (busy.dtype, busy.quantize)
    kind, choice = runtimes.choose()
    resolved = resolve_runtime(RuntimeConfig(quantize="auto"), name="m")
    assert (resolved.dtype, resolved.quantize, resolved.compile) == (choice.dtype, choice.quantize, choice.compile)
    assert resolve_runtime(RuntimeConfig(quantize="auto", compile=True)).compile is True
    assert resolve_runtime(RuntimeConfig(quantize="auto", dtype="float32")).dtype == choice.dtype  # auto picks it


def test_onnx_variants_are_what_any_cpu_kind_loads():
    """What a Bento packs for a node (services/store.py's packed_onnx_tags): the conversions `auto` picks on
    any CPU kind (onnx int8 on AVX2 for the measured models), the configured one on backend onnx, none on torch."""
    from graph.models.loading import onnx_variants

    smol, gemma = ModelRef(embedded="smollm2-135m-instruct"), ModelRef(embedded="gemma-3-270m")
    assert onnx_variants(RuntimeConfig(backend="auto"), smol) == [("int8", None)]
    assert onnx_variants(RuntimeConfig(backend="auto", optimize="throughput"), gemma) == [("int8", None)]
    assert onnx_variants(RuntimeConfig(backend="auto"), ModelRef(path="artifacts/some-model")) == []  # not measured
    assert onnx_variants(RuntimeConfig(backend="onnx", onnx_precision="int4", onnx_accuracy_level=1), smol) == [
        ("int4", 1)
    ]
    assert onnx_variants(RuntimeConfig(backend="torch"), smol) == []
    assert onnx_variants(None, smol) == onnx_variants(RuntimeConfig(), smol)


def test_compiled_step_equals_eager_and_recompiles_nothing_after_warm_up(tiny_dir, float32_texts, monkeypatch):
    import graph.engine.runners.torch_compiled as compiled

    monkeypatch.setattr(compiled, "BACKEND", "eager")  # Dynamo's graphs and guards, no C++ build
    engine = engine_for(tiny_dir, RuntimeConfig(compile=True), max_prompt_tokens=32)
    try:
        assert engine.warmup(timeout=600)
        runner = engine._runner
        warm = runner.compiles
        assert warm >= 1
        alone, batched = solo_and_batched(engine)
        assert runner.compiles == warm  # rows 1..4 and KV lengths < 64 stay within the warm buckets
        assert runner.eager_steps == 2  # only the scheduler's own warm-up steps (too short a buffer)
    finally:
        engine.close()
    assert alone == float32_texts and batched == alone


AMX_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"}


def test_auto_resolves_to_the_hybrid_where_the_table_says_it_wins_at_both_loads(monkeypatch, caplog):
    """On Intel with AMX the table's latency entry for the default models is a hybrid (onnx int8 below 12 node
    rows, torch bfloat16 from 12, measured by the graph benchmark): `backend: auto` resolves to it, both sides
    named, the crossover set; the torch backend's `quantize: auto`, `optimize: throughput`, unmeasured models and
    other kinds keep one runtime. The kind is injected as the flags /proc/cpuinfo would give."""
    from graph.models import runtimes
    from graph.models.loading import onnx_variants, resolve_runtime

    smol = ModelRef(embedded="smollm2-135m-instruct")
    picked = runtimes.choose(AMX_FLAGS, "smollm2-135m-instruct", backends=runtimes.AUTO_BACKENDS)[1]
    assert picked.backend == "hybrid" and picked.crossover_rows == 12 and picked.small and picked.large
    assert (picked.small.backend, picked.small.onnx_precision) == ("onnx", "int8")
    assert (picked.large.backend, picked.large.dtype, picked.large.quantize) == ("torch", "bfloat16", "none")
    assert "bench_graph.py --baseline llama-server" in picked.why and "12" in picked.why

    monkeypatch.setattr(runtimes, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": set(AMX_FLAGS))
    with caplog.at_level("WARNING", logger="graph.models.loading"):
        resolved = resolve_runtime(RuntimeConfig(backend="auto", quantize="auto", threads=1), name="g", model=smol)
    assert resolved.backend == "hybrid" and resolved.crossover_rows == 12 and resolved.threads == 1
    assert resolved.small == RuntimeConfig(backend="onnx", onnx_precision="int8")
    assert resolved.large == RuntimeConfig(backend="torch", dtype="bfloat16", quantize="none")
    RuntimeConfig.model_validate(resolved.model_dump())  # a valid hybrid runtime, as if configured
    assert "backend hybrid (small: backend onnx, precision int8" in caplog.text and "crossover 12 rows" in caplog.text
    # a Bento carries the onnx side's conversion
    assert onnx_variants(RuntimeConfig(backend="auto"), smol) == [("int8", None)]

    gemma = ModelRef(embedded="gemma-3-270m")
    assert resolve_runtime(RuntimeConfig(backend="auto"), model=gemma).backend == "hybrid"
    busy = resolve_runtime(RuntimeConfig(backend="auto", optimize="throughput"), model=smol)
    assert (busy.backend, busy.dtype) == ("torch", "bfloat16")
    torch_auto = resolve_runtime(RuntimeConfig(quantize="auto"), model=smol)  # the torch backend: no hybrid
    assert (torch_auto.backend, torch_auto.dtype) == ("torch", "bfloat16")
    other = resolve_runtime(RuntimeConfig(backend="auto"), model=ModelRef(path="artifacts/some-model"))
    assert other.backend == "torch"  # not measured on this kind: as before

    monkeypatch.setattr(runtimes, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2", "fma"})
    kept = resolve_runtime(RuntimeConfig(backend="auto"), model=smol)  # no hybrid measured on AVX2: as before
    assert (kept.backend, kept.onnx_precision) == ("onnx", "int8")
