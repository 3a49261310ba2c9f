"""A prompt prefilled in chunks against the same prompt prefilled at once, on the llamacpp runner with llama.cpp's
flash attention on and off (runtime.flash_attn; graph/engine/runners/llamacpp_runner.py), on the tiny GGUF.

Measured on this file (a 450-token prompt, then 16 greedy steps; this Intel AMX VM, ggml's zen4 variant): with flash
attention off, the chunked prefill's log-probabilities (4-, 64- and 100-token chunks) equal the one-shot prefill's bit
for bit at every step; on (the default: auto), they differ by up to 7.1e-2 over the vocabulary and 3.3e-2 on the
greedy tokens (128-token chunks happened to be equal), with the same greedy tokens. The tolerance for "on" is
tests/graph/backends.py's NEAR_TIE (0.1), the one the cross-backend tests allow a near tie by.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from graph.config import GeneratorNode, RuntimeConfig
from tests.graph.backends import NEAR_TIE
from tests.graph.test_llamacpp_runtime import gguf_source, llamacpp_runner  # noqa: F401  gguf_source: a fixture

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")

PROMPT_TOKENS, STEPS = 450, 16


@pytest.fixture(scope="module", params=["off", "on"])
def runner(request):
    r = llamacpp_runner(request.getfixturevalue("gguf_source"), n_seq=4, n_ctx_seq=512, flash_attn=request.param)
    yield r
    r.close()


def greedy(runner, ids: torch.Tensor, chunk: int) -> tuple[list[int], torch.Tensor]:
    """Prefill `ids` [1, p] `chunk` tokens per call, then STEPS greedy decode steps: (tokens, log-probabilities
    [STEPS + 1, vocab] of the prefill's last position and of each step)."""
    cache, done, total = None, 0, ids.shape[1] + STEPS
    while done < ids.shape[1]:
        k = min(chunk, ids.shape[1] - done)
        logits, cache = runner.prefill_chunk(ids[:, done : done + k], cache, total)
        done += k
    assert cache is not None
    lps = [torch.log_softmax(logits[0], -1)]
    tokens: list[int] = []
    try:
        for _ in range(STEPS):
            tokens.append(int(lps[-1].argmax()))
            pos = torch.tensor([[int(cache.lens[0])]])
            logits = runner.decode(torch.tensor([[tokens[-1]]]), pos, cache, STEPS)
            lps.append(torch.log_softmax(logits[0], -1))
    finally:
        runner.free_seqs(cache.seqs)
        cache.seqs.clear()
    return tokens, torch.stack(lps)


def prompt(runner) -> torch.Tensor:
    return torch.randint(3, runner.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("chunk", [4, 64, 100])
def test_chunked_prefill_gives_the_greedy_tokens_of_one_prefill(runner, chunk):
    ids = prompt(runner)
    whole, whole_lp = greedy(runner, ids, PROMPT_TOKENS)
    chunked, chunked_lp = greedy(runner, ids, chunk)
    assert chunked == whole
    apart = float((chunked_lp - whole_lp).abs().max())
    if runner.flash_attn == "off":  # and the same log-probabilities, bit for bit
        assert torch.equal(chunked_lp, whole_lp), apart
    else:
        assert apart <= NEAR_TIE


def test_flash_attn_reaches_the_runner_and_its_name(request):
    from graph.models.node_engine import engine_for_node

    path = str(request.getfixturevalue("gguf_source"))
    node = GeneratorNode.model_validate(
        {"model": {"path": path}, "runtime": {"backend": "llamacpp", "threads": 1, "flash_attn": "off"}}
    )
    engine = engine_for_node("tiny", node)
    try:
        assert engine._runner.flash_attn == "off"  # pyright: ignore[reportAttributeAccessIssue]
        assert "flash attention off" in engine.runtime_name
    finally:
        engine.close()


def test_the_runner_default_is_the_config_default():
    from graph.engine.runners.llamacpp_runner import FLASH_ATTN_DEFAULT

    assert RuntimeConfig().flash_attn == FLASH_ATTN_DEFAULT


@pytest.mark.parametrize(
    "runtime, message",
    [
        ({"backend": "torch", "flash_attn": "off"}, "flash_attn: a backend llamacpp option; backend is torch"),
        ({"backend": "onnx", "flash_attn": "on"}, "flash_attn: a backend llamacpp option; backend is onnx"),
        (
            {
                "backend": "hybrid",
                "flash_attn": "off",
                "small": {"backend": "llamacpp"},
                "large": {"backend": "torch"},
            },
            "set it on the llamacpp side",
        ),
        ({"backend": "llamacpp", "flash_attn": "maybe"}, "Input should be 'auto', 'on' or 'off'"),
    ],
)
def test_flash_attn_is_checked(runtime, message):
    with pytest.raises(ValidationError, match=message) as err:
        GeneratorNode.model_validate({"model": {"embedded": "smollm2-135m-instruct"}, "runtime": runtime})
    assert "flash_attn" in str(err.value)


def test_flash_attn_on_a_hybrid_side():
    rt = RuntimeConfig.model_validate(
        {"backend": "hybrid", "small": {"backend": "llamacpp", "flash_attn": "off"}, "large": {"backend": "torch"}}
    )
    assert rt.small is not None and rt.small.flash_attn == "off"
