"""The decode step's attention on CPU: one query token per row as two batched matrix products.

Registered with transformers' AttentionInterface as "graph_decode"; graph.models.loading sets it
on a model loaded with `runtime: {optimize: throughput}` (the engine's runner keeps it). A forward
with more than one query token (prefill, the perplexity of the benchmark) goes to transformers'
own SDPA function unchanged.

Why: torch's CPU flash-attention kernel (what SDPA picks) is built for blocks of queries; with one
query per row it spends most of its time on per-row set-up. Measured on the AVX-512 EPYC, 2
threads, SmolLM2's shapes (3 key/value heads of 3 query heads each, head size 64), bfloat16, one
layer: 64 rows x 100 keys 1045 us with SDPA against 444 us as matrix products; 64 x 300 keys 3338
against 947 us. Attention was a fifth of a 64-row decode step (26 of 112 ms); with this function
the step took 98 ms and the engine's 64-stream bfloat16 throughput rose 11%. With one row it is the
other way round (22-33 us against 89 us a layer; SmolLM2 int4 weights, one stream: 17 -> 20
ms/token), hence opt-in by goal rather than always on; switching by batch size would make a row's
text depend on how many neighbours it had, which the engine promises it does not.

The numbers are those of transformers' "eager" attention (scores in the model's dtype, scaled,
masked, a float32 softmax cast back, then the weighted sum), without its repeat_kv copy: query
heads are grouped under their key/value head (grouped-query attention, the head order repeat_kv
assumes). Each row's result depends on its own row only, so batched decoding still equals solo.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "graph_decode"


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """query [rows, heads, q, d], key/value [rows, kv_heads, keys, d], attention_mask bool
    [rows, 1, q, keys] (True = attend) -> ([rows, q, heads, d], None), as transformers expects."""
    rows, heads, q_len, d = query.shape
    if (q_len != 1 or attention_mask is None or attention_mask.dtype != torch.bool or dropout
            or kwargs.get("softcap") is not None or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kv_heads = key.shape[1]
    q = query.reshape(rows, kv_heads, heads // kv_heads, d)
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [rows, kv_heads, group, d]
    return out.reshape(rows, 1, heads, d), None


AttentionInterface.register(NAME, decode_attention)
