"""Builds tiny randomly initialised models and a byte-level tokenizer offline, for fast tests."""

from __future__ import annotations

import argparse
from pathlib import Path

CORPUS = [
    "I have an idea! The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny model for tests. Good happy bad sad.",
    "Once upon a time there was a small language model that liked numbers 0123456789.",
    "The cat sat on the mat. The dog ran in the park. Stop here. END",
] * 20

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer():
    """A small byte-level BPE tokenizer trained on CORPUS (so any text round-trips)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    return tok


def build_causal_lm(out: Path, *, arch: str = "llama", seed: int = 0, heads: int = 4, kv_heads: int = 2) -> Path:
    """A 2-layer, 32-dim causal LM (llama or gpt2 architecture) saved as safetensors."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            initializer_range=0.3,
            **common,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, initializer_range=0.3, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown arch {arch}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_encoder(out: Path, *, seed: int = 0) -> Path:
    """A 2-layer, 32-dim BERT encoder (no classification head) saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_all(root: Path) -> Path:
    """The tiny models configs/tiny.yaml points at; idempotent."""
    marker = root / ".complete"
    if marker.exists():
        return root
    build_causal_lm(root / "causal_lm", arch="llama", seed=0)
    build_causal_lm(root / "causal_lm_b", arch="gpt2", seed=1)
    build_encoder(root / "encoder", seed=2)
    marker.write_text("ok\n")
    return root


def build_onnx_source(root: Path) -> Path:
    """The tiny llama with 16-dim heads (ONNX Runtime's GroupQueryAttention needs head_size % 16 == 0),
    for the onnx backend's tests (graph/engine/runners/onnx_runner.py); idempotent."""
    out = root / "causal_lm_h16"
    if not (out / "config.json").is_file():
        build_causal_lm(out, arch="llama", seed=3, heads=2, kv_heads=1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="artifacts/tiny")
    print(build_all(Path(parser.parse_args().out)))
