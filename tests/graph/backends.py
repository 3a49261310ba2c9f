"""A started engine of each backend on its tiny model, for tests that every backend must pass (issue #32).

torch: the tiny llama and the tiny gpt2; onnx: the tiny llama with 16-dim heads, converted at float32
(tests/graph/test_onnx_runtime.py); llamacpp: the tiny llama's float32 GGUF (tests/graph/test_llamacpp_runtime.py).
"""

from __future__ import annotations

import pytest

from tests.graph.test_chat_prompt import TEMPLATE

BACKENDS = ["llama", "gpt2", "onnx", "llamacpp"]


def build(kind: str, tiny_dir, *, template: bool | str = False, **kw):
    """A started engine of backend `kind`; `template`: chat messages go through this chat template (True:
    test_chat_prompt's TEMPLATE).
    `kw`: GenerationEngine's options (max_batch_size 16 unless given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from graph.engine import GenerationEngine

    kw.setdefault("max_batch_size", 16)
    if kind in ("llama", "gpt2"):
        path = tiny_dir / ("causal_lm" if kind == "llama" else "causal_lm_b")
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    elif kind == "onnx":
        from graph.engine.runners.onnx_runner import OnnxRunner
        from graph.models.onnx_model import DEFAULT_ONNX_CACHE, prepare_local
        from tests.tiny_models import build_onnx_source

        path = build_onnx_source(tiny_dir)
        model = OnnxRunner(prepare_local(path, DEFAULT_ONNX_CACHE, precision="fp32"), source_dir=path, precision="fp32")
    elif kind == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
        from graph.engine.runners.llamacpp_runner import LlamaCppRunner
        from tests.tiny_models import build_gguf_source

        path = build_gguf_source(tiny_dir)
        model = LlamaCppRunner(path / "model.gguf", threads=2, eos_ids=[2], n_seq=17, n_ctx_seq=1024)
    else:
        raise ValueError(f"unknown backend {kind}")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if template:
        tok.chat_template = TEMPLATE if template is True else template
    engine = GenerationEngine(model, tok, name=kind, chat_template=bool(template), **kw)
    engine.start()
    return engine


# llama.cpp's flash attention (on by default: runtime.flash_attn auto) rounds a prompt prefilled in chunks apart from
# the same prompt prefilled at once: up to 7.1e-2 in log-probability on the tiny GGUF (measured on this Intel AMX VM,
# ggml's zen4 variant; tests/graph/test_llamacpp_flash_attn.py), so two greedy runs may part at a near tie. With it
# off, and on every other backend, they are equal bit for bit.
NEAR_TIE = 0.1


def exact_prefill(engine) -> bool:
    """Whether a chunked prefill gives the one-shot prefill's logits exactly on this engine."""
    return getattr(engine._runner, "flash_attn", "off") == "off"


def assert_same_greedy(engine, got, want) -> None:
    """Two greedy results of one prompt (GenerationResult, asked with logprobs and top_logprobs >= 2) are equal;
    on an engine without exact prefill (exact_prefill) they may part where `want`'s two likeliest tokens are
    within NEAR_TIE and `got` took the other one (everything after that follows from another context)."""
    assert got.prompt_tokens == want.prompt_tokens
    if exact_prefill(engine):
        assert (got.text, got.completion_tokens) == (want.text, want.completion_tokens)
        return
    assert got.logprobs is not None and want.logprobs is not None, "ask with logprobs=True, top_logprobs=2"
    for i, (g, w) in enumerate(zip(got.logprobs, want.logprobs)):
        if g.token == w.token:
            continue
        tops = {t.token: t.logprob for t in w.top_logprobs}
        assert g.token in tops and w.logprob - tops[g.token] <= NEAR_TIE, (
            f"token {i}: {g.token!r} against {w.token!r} ({w.logprob:.4f}), not a near tie: {tops}"
        )
        return
    assert (got.text, got.completion_tokens) == (want.text, want.completion_tokens)


def spec_counts(engine) -> tuple[int, int]:
    """Speculative decoding's counters of an engine: (drafts proposed, drafts accepted)."""
    s = engine.stats()
    return int(s["spec_draft_tokens_total"]), int(s["spec_accepted_tokens_total"])
