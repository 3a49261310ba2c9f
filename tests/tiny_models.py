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


def build_gguf(hf_dir: Path, out: Path, *, ftype: str = "f32") -> Path:
    """The tiny llama at `hf_dir` as a GGUF file (for the llamacpp backend's tests), written with the
    `gguf` package: llama.cpp's LLM_ARCH_LLAMA tensor names, q/k rows permuted to its rotary layout
    (as llama.cpp's convert_hf_to_gguf.py does), the byte-level BPE vocabulary as a gpt2 tokenizer.
    `ftype`: f32 or f16 weights (matrices; norms stay f32). Idempotent."""
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    if out.is_file():
        return out
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg["model_type"] != "llama":
        raise ValueError(f"{hf_dir}: only the tiny llama has a GGUF writer here")
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    heads, kv_heads, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // heads

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(hf_dir.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [specials.get(i, text) for i, (text, _) in enumerate(vocab)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_token_merges(merges)
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_pad_token_id(cfg["pad_token_id"])
    writer.add_add_bos_token(False)

    def add(name: str, w: np.ndarray) -> None:
        w = w.astype(np.float16 if ftype == "f16" and w.ndim == 2 else np.float32)
        writer.add_tensor(name, w)

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    add("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights and not cfg.get("tie_word_embeddings"):
        add("output.weight", weights["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", weights[p + "input_layernorm.weight"])
        add(f"blk.{i}.attn_q.weight", permute(weights[p + "self_attn.q_proj.weight"], heads))
        add(f"blk.{i}.attn_k.weight", permute(weights[p + "self_attn.k_proj.weight"], kv_heads))
        add(f"blk.{i}.attn_v.weight", weights[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", weights[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", weights[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate.weight", weights[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", weights[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", weights[p + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out)
    return out


def build_gguf_source(root: Path) -> Path:
    """A copy of the tiny llama's folder with its GGUF file beside it (model.path for backend llamacpp)."""
    import shutil

    src = root / "causal_lm"
    out = root / "causal_lm_gguf"
    if not (out / "model.gguf").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        build_gguf(src, out / "model.gguf")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="artifacts/tiny")
    print(build_all(Path(parser.parse_args().out)))
