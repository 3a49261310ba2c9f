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
