"""Runtime options on the tiny llama: quantized weights and the compiled decode step.

Tolerances (also in README "Configs"): weight-only int8 and int4 change the logits, so their
greedy tokens must agree with float32's on at least half the positions of short completions of
the tiny random model (its logits are nearly flat, the worst case for quantization; on SmolLM2 the
benchmark prints the agreement). Batched greedy equals solo greedy exactly under every option
except dynamic int8 (its activation scale is per batch), and the compiled step gives exactly the
eager step's tokens.
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


@pytest.mark.parametrize("quantize,dtype", [("int8_weight", "bfloat16"), ("int4_weight", "float32"),
                                            ("none", "bfloat16")])
def test_weight_only_batched_equals_solo_and_close_to_float32(tiny_dir, float32_texts, quantize, dtype):
    engine = engine_for(tiny_dir, RuntimeConfig(quantize=quantize, dtype=dtype))
    try:
        alone, batched = solo_and_batched(engine)
    finally:
        engine.close()
    assert batched == alone
    assert agreement(alone, float32_texts) >= 0.5


def test_dynamic_int8_still_works(tiny_dir, float32_texts):
    engine = engine_for(tiny_dir, RuntimeConfig(quantize="int8"))
    try:
        alone, _ = solo_and_batched(engine)
    finally:
        engine.close()
    assert all(alone) and agreement(alone, float32_texts) >= 0.5


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
    kind, choice = runtimes.choose()
    resolved = resolve_runtime(RuntimeConfig(quantize="auto"), name="m")
    assert (resolved.dtype, resolved.quantize, resolved.compile) == (choice.dtype, choice.quantize, choice.compile)
    assert resolve_runtime(RuntimeConfig(quantize="auto", compile=True)).compile is True
    with pytest.raises(ValueError, match="quantize: auto picks the dtype"):
        RuntimeConfig(quantize="auto", dtype="float32")
