"""Packed bfloat16 Linear layers (graph/engine/runners/packed_linear.py): the same outputs as nn.Linear,
bit for bit, and a chunked output projection whose argmax is the full logits' argmax (ties, NaN, softcap)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graph.engine.runners.packed_linear import HEAD_CHUNK, PackedHead, PackedLinear, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="packing runs on CPUs with AMX only")


def _linear(out_f: int, in_f: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
        if bias:
            lin.bias.normal_(0, 0.1)
    return lin.to(torch.bfloat16)


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_is_bitwise_nn_linear(rows, bias):
    lin = _linear(96, 80, bias)
    x = torch.randn(rows, 1, 80).bfloat16()
    with torch.inference_mode():
        assert torch.equal(PackedLinear(lin)(x), lin(x))
        assert torch.equal(PackedLinear(lin)(x[:, 0]), lin(x[:, 0]))


def test_head_forward_and_argmax_match_the_full_logits_across_chunks():
    vocab = 2 * HEAD_CHUNK + 123  # three chunks, the last one short
    lin = _linear(vocab, 64, seed=1)
    with torch.no_grad():  # a tie across chunks: the first index must win, as max(dim=-1) picks it
        lin.weight[HEAD_CHUNK + 5] = lin.weight[3]
        lin.weight[2 * HEAD_CHUNK + 7] = lin.weight[3]
    x = torch.randn(9, 64).bfloat16()
    x[4] = lin.weight[3].float().bfloat16() * 40  # row 4's best token is 3 (tied with two later ids)
    head = PackedHead(lin, None, keep_weight=False)
    with torch.inference_mode():
        full = lin(x)
        assert torch.equal(head(x), full)
        ref = full.float().max(dim=-1)
        idx, bad = head.argmax(x)
    assert idx.tolist() == ref.indices.tolist()
    assert idx[4].item() == 3
    assert not bad.any()


def test_head_argmax_with_softcap_and_nan():
    vocab = HEAD_CHUNK + 500
    lin = _linear(vocab, 32, seed=2)
    head = PackedHead(lin, 30.0, keep_weight=True)
    assert head.weight is lin.weight
    x = torch.randn(5, 32).bfloat16() * 50  # large logits: the softcap saturates, ties in bfloat16 appear
    x[2, 0] = float("nan")
    with torch.inference_mode():
        full = lin(x)
        capped = (torch.tanh(full / 30.0) * 30.0).float()
        ref = capped.max(dim=-1)
        idx, bad = head.argmax(x)
    assert bad.tolist() == [False, False, True, False, False]
    keep = [0, 1, 3, 4]
    assert idx[keep].tolist() == ref.indices[keep].tolist()


def test_packed_runner_decodes_the_same_logits(tiny_dir, monkeypatch):
    """ModelRunner on a bfloat16 tiny llama, packed and not: prefill and decode logits bit for bit, and
    decode_split's argmax equals the argmax of decode's logits."""
    from transformers import AutoModelForCausalLM

    from graph.engine.runners.torch_runner import PACK_ENV, ModelRunner

    def runner(pack: bool) -> ModelRunner:
        monkeypatch.setenv(PACK_ENV, "1" if pack else "0")
        model = AutoModelForCausalLM.from_pretrained(tiny_dir / "causal_lm", dtype=torch.bfloat16).eval()
        return ModelRunner(model)

    ids = torch.randint(3, 300, (6, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 10, dtype=torch.bool)
    outs = []
    for pack in (False, True):
        r = runner(pack)
        assert (r.head is not None) == pack
        with torch.inference_mode():
            logits, pre = r.prefill(ids, mask)
            cache = r.new_cache(6, 24)
            cache.add_rows(pre, list(range(6)), 8)
            nxt = logits.argmax(-1, keepdim=True)
            pos = torch.full((6, 1), 10)
            dec = r.decode(nxt, pos, cache, 8)
            tok, bad, sub = r.decode_split(dec.argmax(-1, keepdim=True), pos + 1, cache, 8, torch.tensor([2]))
        outs.append((logits, dec, tok, bad, sub))
    (l0, d0, t0, _, s0), (l1, d1, t1, b1, s1) = outs
    assert torch.equal(l0, l1) and torch.equal(d0, d1)
    plain = [0, 1, 3, 4, 5]
    assert t1[plain].tolist() == t0[plain].tolist()
    assert torch.equal(s0, s1) and s1.shape == (1, l1.shape[-1]) and s1.dtype == torch.float32
    assert not b1.any()
