"""Real embedded SmolLM2: GGUF -> float32 safetensors conversion (~40 s) matches the GGUF model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from graph.config import ModelRef
from graph.models import embedded
from graph.models.loading import load_causal_lm

SMOL = "smollm2-135m-instruct"


# --- embedded GGUF conversion (real SmolLM2, ~40 s) ----------------------------------------------


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("embedded")
    return embedded.prepare_local(SMOL, cache, progress=print)


def _greedy_ids(model, tokenizer, prompts: list[str], n: int = 6) -> list[list[int]]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return out[:, enc["input_ids"].shape[1] :].tolist()


def test_smollm2_converts_to_float32_safetensors_matching_gguf(smol_dir):
    from transformers import AutoModelForCausalLM

    assert (smol_dir / "model.safetensors").is_file()
    assert embedded.read_fingerprint(smol_dir) == embedded.fingerprint(SMOL)
    model, tok = load_causal_lm(ModelRef(path=str(smol_dir)))
    assert {p.dtype for p in model.parameters()} == {torch.float32} and not model.training
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert "quantization_config" not in model.config.to_dict()

    src = embedded._package_dir(embedded.get_embedded(SMOL))
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=embedded.get_embedded(SMOL).gguf_file).eval()
    prompts = ["The capital of France is", "Hello"]
    ids = _greedy_ids(model, tok, prompts)
    assert ids == _greedy_ids(gguf, tok, prompts)
    assert "Paris" in tok.decode(ids[0])


def test_prepare_local_is_idempotent(smol_dir, monkeypatch):
    monkeypatch.setattr(embedded, "convert_embedded", lambda *a, **k: pytest.fail("converted again"))
    start = time.perf_counter()
    assert embedded.prepare_local(SMOL, smol_dir.parent) == smol_dir
    assert time.perf_counter() - start < 2
