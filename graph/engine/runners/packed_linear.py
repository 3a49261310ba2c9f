"""bfloat16 Linear layers on oneDNN with their weights packed once (the torch runner, CPUs with AMX).

Why: `F.linear` on a bfloat16 weight runs oneDNN's AMX matmul, but on the weight as stored (row-major),
so every call re-blocks the weight for the tiles. `torch.ops.mkldnn._reorder_linear_weight` packs it
once into the blocked layout the kernel reads and `torch.ops.mkldnn._linear_pointwise` multiplies with
it: the same kernel and accumulation, bitwise the same outputs (tests/unit/test_packed_linear.py).

The output projection is packed in chunks of the vocabulary (`PackedHead`): its logits for 64 rows
are 32 MB of bfloat16, and a chunk's 2 MB stay in cache, so a greedy step takes its argmax chunk by
chunk (`PackedHead.argmax`) without writing the full logits, their float32 copy (67 MB) or reading
them back. Gemma 3 at 64 rows, 2 threads, quiet (scripts/profile_decode.py, docs/performance.md):
layers 62.8 -> 56.2 ms per step, the greedy output side (projection, float32 copy, max) 81.7 -> 41.3 ms.

Only on CPUs with AMX: the one kind measured. Elsewhere the model keeps its Linear layers. A packed
model is for inference only (no autograd through the packed op).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

HEAD_CHUNK = 16384  # vocabulary ids per chunk of the output projection (64 rows x 16k bf16 = 2 MB)
PACK_ROWS = 64  # the batch the packed layout is tuned for (it works, and measured faster, at 1 to 2048)


def packing_available() -> bool:
    """oneDNN with bfloat16 matmul, on a CPU with AMX (the kind this was measured on)."""
    try:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False
    return bool(supported) and _has_amx()


@functools.cache
def _has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The CPU flags AMX bfloat16 tiles (graph/models/runtimes.py:cpu_kind "amx"; read here, as the
    node side's engine never imports graph.models)."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """A bfloat16 nn.Linear whose weight is packed for oneDNN's AMX matmul (same outputs)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.packed, self.bias)


class PackedHead(nn.Module):
    """The output projection, packed in vocabulary chunks of HEAD_CHUNK ids; `softcap`: Gemma 2/3's
    final_logit_softcapping (None: none), applied as transformers applies it, in the model's dtype."""

    def __init__(self, linear: nn.Linear, softcap: float | None, *, keep_weight: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight
        self.chunks = [_pack(w[s : s + HEAD_CHUNK]) for s in range(0, w.shape[0], HEAD_CHUNK)]
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.softcap = softcap
        # Kept only when shared with the input embeddings (no extra memory): callers read its shape.
        self.weight = w if keep_weight else None

    def _chunk(self, x: torch.Tensor, j: int) -> torch.Tensor:
        bias = None if self.bias is None else self.bias[j * HEAD_CHUNK : (j + 1) * HEAD_CHUNK]
        return _linear(x, self.chunks[j], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits as nn.Linear gives them (the model's forward softcaps them after this)."""
        return torch.cat([self._chunk(x, j) for j in range(len(self.chunks))], dim=-1)

    def capped(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` softcapped as Gemma3ForCausalLM.forward does it (divide, tanh, multiply, each in
        the model's dtype), elementwise: a chunk's values equal those of the whole tensor."""
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def argmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of `x` [rows, hidden]: the index of the first largest logit (as `max(dim=-1)` on
        the full logits) and whether the row's logits held a NaN (then its index is a placeholder)."""
        best_v: torch.Tensor | None = None
        best_i = bad = torch.empty(0)
        for j in range(len(self.chunks)):
            m = self.capped(self._chunk(x, j)).float().max(dim=-1)
            if best_v is None:
                best_v, best_i, bad = m.values, m.indices, m.values.isnan()
                continue
            better = m.values > best_v  # strictly: on a tie the earlier chunk's (lower) index stays
            best_v = torch.where(better, m.values, best_v)
            best_i = torch.where(better, m.indices + j * HEAD_CHUNK, best_i)
            bad |= m.values.isnan()
        return best_i, bad


# Causal LMs whose forward is `base model -> last hidden state -> lm_head -> final_logit_softcapping
# if set`, so ModelRunner.decode_split may run the base model and the head itself.
SPLIT_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "smollm3", "gpt2"}
)


def pack_model(model: Any) -> PackedHead | None:
    """On CPUs with packing_available(), replace a bfloat16 causal LM's nn.Linear layers with
    PackedLinear and its output projection with a PackedHead, in place; the head, or None when the
    model is left as it was (not bfloat16, another kind of CPU, a model type not in SPLIT_MODEL_TYPES
    or an output projection that is no plain nn.Linear)."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        config is None
        or getattr(model, "dtype", None) != torch.bfloat16
        or config.model_type not in SPLIT_MODEL_TYPES
        or type(head) is not nn.Linear
        or head.weight.dtype != torch.bfloat16
        or not packing_available()
    ):
        return None
    embed = model.get_input_embeddings()
    tied = embed is not None and embed.weight.data_ptr() == head.weight.data_ptr()
    softcap = getattr(config.get_text_config(decoder=True), "final_logit_softcapping", None)
    layers = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child is not head and child.weight.dtype == torch.bfloat16:
                setattr(module, name, PackedLinear(child))
                layers += 1
    packed = PackedHead(head, softcap, keep_weight=tied)
    model.set_output_embeddings(packed)
    log.info("packed %d bfloat16 Linear layers and the output projection for oneDNN (AMX)", layers)
    return packed
