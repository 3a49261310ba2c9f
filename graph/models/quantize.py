"""Weight-only quantized Linear layers (int8 per channel, int4 group-wise) on torch's own CPU kernels.

    model = quantize_weights(model, "int4", group_size=32)   # or "int8"

The matrix products run in ATen's weight-only kernels, the ones torchao's CPU layouts dispatch to
(`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`), called directly from a small
module: no tensor subclass, so no per-call Python dispatch on the decode path. Activations go in and
out as bfloat16 (the kernels' fast path: their float32-activation path measured 10x to 300x slower
than float32 F.linear on an AVX-512 EPYC); a float32 model is cast around each layer.

- int8: symmetric, one scale per output channel. About float32 quality.
- int4: asymmetric, one scale and one minimum per `group_size` weights along the input (the scheme
  of llama.cpp's Q4_1 with groups of 32). The model's perplexity rises a few percent.

A model with tied input/output embeddings (Gemma 3's 262k x 640 matrix) keeps its input embedding
in the model's dtype and gets a separate quantized LM head: for a small model with a big vocabulary
the head is the largest matrix of every step.

Each layer's output is computed row by row in the kernels, so a row's result does not depend on
the other rows in its batch (unlike dynamic int8, whose activation scale is per call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

WeightBits = Literal["int8", "int4"]


class WeightOnlyLinear(nn.Module):
    """y = x @ dequant(W).T + b, with W stored as int8 or packed int4 and the product in ATen."""

    qweight: torch.Tensor  # buffers (register_buffer): declared for the type checker
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, bits: WeightBits, group_size: int = 32) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.bits, self.group_size = bits, group_size
        self.out_dtype = linear.weight.dtype
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16).clone())
        if bits == "int8":
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale.to(torch.bfloat16))
        elif bits == "int4":
            if self.in_features % group_size:
                raise ValueError(f"int4: in_features {self.in_features} is not a multiple of group_size {group_size}")
            groups = w.reshape(self.out_features, -1, group_size)
            lo, hi = groups.amin(-1), groups.amax(-1)
            scale = ((hi - lo) / 15.0).clamp(min=1e-8)
            q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
            q = q.reshape(self.out_features, self.in_features)
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
            # The kernel computes (q - 8) * scale + zero: zero = min + 8 * scale. Shape [K/g, N, 2].
            sz = torch.stack([scale.t(), (lo + 8 * scale).t()], dim=-1).contiguous()
            self.register_buffer("scales", sz.to(torch.bfloat16))
        else:
            raise ValueError(f"unknown weight quantization {bits!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if self.bits == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer multiplies by (a reference for tests)."""
        if self.bits == "int8":
            return self.qweight.float() * self.scales.float()[:, None]
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group_size, self.scales)
        return w.float().t().contiguous()

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == "int4" else ""
        return f"{self.in_features}, {self.out_features}, bits={self.bits}{g}"


def quantize_weights(
    model: PreTrainedModel, bits: WeightBits, group_size: int = 32, head_bits: WeightBits = "int8"
) -> PreTrainedModel:
    """Replace every nn.Linear of `model` by a WeightOnlyLinear, in place; returns the model. The
    LM head (untied from the input embedding) gets `head_bits`, at most `bits`: int4 on the head
    cost SmolLM2 +7% perplexity against +0.2% for int8 (llama.cpp's Q4 files keep the output
    matrix at 6 bits for the same reason). Layers whose input size does not divide into groups
    (int4) stay as they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and isinstance(head, nn.Linear):
        inp = model.get_input_embeddings()
        if inp is not None and inp.weight is head.weight:  # tied: the head gets its own copy
            head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
            if hasattr(model.config, "get_text_config"):
                model.config.get_text_config(decoder=True).tie_word_embeddings = False
    head_bits = "int8" if "int8" in (bits, head_bits) else "int4"
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            b = head_bits if child is head else bits
            if isinstance(child, nn.Linear) and not (b == "int4" and child.in_features % group_size):
                setattr(parent, name, WeightOnlyLinear(child, b, group_size))
    return model
