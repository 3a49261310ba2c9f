"""The torch runner: a transformers causal LM over the batch layout of torch_cache.py (prefill and decode steps).

The runner passes explicit position ids and ready 4-D attention masks, so transformers' own mask
construction and cache bookkeeping are skipped (cheaper per step, and exact for rows that joined the
batch at different times). Sliding-window layers (Gemma 3: five sliding layers per full one, window
512) get their own windowed mask, so prompts and completions may be longer than the window.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from graph.engine.runners.base import Runner, as_id_set
from graph.engine.runners.packed_linear import PackedHead, pack_model
from graph.engine.runners.torch_cache import BatchKVCache, kv_bytes_per_token

Mask = Any  # a 4-D tensor, or a dict of them keyed by layer type
PACK_ENV = "INFERENCE_GRAPH_PACKED_LINEAR"  # "0": keep the model's nn.Linear layers (A/B measurements)

log = logging.getLogger(__name__)


def release_openmp_pool() -> bool:
    """Dismiss the calling thread's OpenMP worker threads (libgomp's omp_pause_resource_all).

    Why: torch on Linux runs its CPU kernels on libgomp, which keeps one worker pool per thread
    that has used it. Once the process manages more OpenMP threads than it has CPUs, libgomp stops
    spinning between parallel regions and every region pays a futex wake-up: measured on SmolLM2
    (2 cores), a decode step goes from 32 ms to 55 ms when the main thread (model loading,
    quantization, a warm-up) has a pool besides the decode thread's. The engine calls this on the
    thread that starts it. Returns False where there is no libgomp (other platforms): nothing to do.
    """
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line), None)
        if path is None:
            return False
        return ctypes.CDLL(path).omp_pause_resource_all(2) == 0  # 2 = omp_pause_hard
    except (OSError, AttributeError):
        return False


class ModelRunner(Runner[BatchKVCache]):
    """Forward passes of one model; knows its layer count, attention kind and sliding windows."""

    def __init__(self, model) -> None:
        self.model = model.eval()
        self.runtime_name = f"torch {str(model.dtype).replace('torch.', '')}"
        self.vocab_size = _vocab_size(model)
        cfg = model.config.get_text_config(decoder=True)
        self.num_layers: int = cfg.num_hidden_layers
        self.max_positions: int | None = getattr(cfg, "max_position_embeddings", None)
        if model.config._attn_implementation not in ("sdpa", "eager"):
            model.set_attn_implementation("sdpa")
        self._eager = model.config._attn_implementation == "eager"
        self._windows = _attention_windows(cfg)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        # bfloat16 on AMX: Linear weights packed once for oneDNN, the output projection in vocabulary
        # chunks whose argmax serves greedy rows (graph/engine/runners/packed_linear.py).
        self.head: PackedHead | None = None
        if self.pack_weights and os.environ.get(PACK_ENV, "1") != "0":
            self.head = pack_model(model)

    pack_weights = True  # CompiledRunner: False (inductor packs its own)

    def new_cache(self, row_capacity: int, capacity: int, left_room: int = 0) -> BatchKVCache:
        return BatchKVCache(self.num_layers, row_capacity, capacity, left_room)

    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.model)

    def eos_ids(self) -> frozenset[int]:
        return as_id_set(getattr(self.model.generation_config, "eos_token_id", None))

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, BatchKVCache]:
        """Left-padded prompts `ids` [rows, p] with `mask` (True = real token) -> last-position
        logits [rows, vocab] (float32) and a cache holding exactly these rows."""
        rows, p = ids.shape
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        cache = BatchKVCache(self.num_layers, rows, p)
        cache.rows = rows
        cache.mask[:, :p] = mask
        logits = self._forward(ids, self._prefill_mask(mask), positions, cache)
        cache.advance(p)
        return logits, cache

    chunked_prefill = True

    def prefill_chunk(
        self, ids: torch.Tensor, cache: BatchKVCache | None, total: int
    ) -> tuple[torch.Tensor, BatchKVCache]:
        """The next `k` tokens of one prompt on top of what its earlier chunks cached (one row, no padding)."""
        k = ids.shape[1]
        if cache is None:
            cache = BatchKVCache(self.num_layers, 1, total)
            cache.rows = 1
        past = cache.length
        cache.reserve(k, 0)
        cache.mask[0, cache.end : cache.end + k] = True
        positions = torch.arange(past, past + k, dtype=torch.long)[None]
        logits = self._forward(ids, self._chunk_mask(past, k), positions, cache)
        cache.advance(k)
        return logits, cache

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: BatchKVCache, right_room: int) -> torch.Tensor:
        """One token per row (`ids`, `positions`: [rows, 1]) -> logits [rows, vocab] (float32)."""
        cache.reserve(1, right_room)
        cache.mask[: cache.rows, cache.end] = True
        logits = self._forward(ids, self._decode_mask(cache), positions, cache)
        cache.advance(1)
        return logits

    def decode_split(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: BatchKVCache, right_room: int, full_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As Runner.decode_split; with a packed head, the greedy rows' argmax is taken chunk by chunk
        of the vocabulary (PackedHead.argmax) and only `full_rows` get float32 logits."""
        if self.head is None:
            return super().decode_split(ids, positions, cache, right_room, full_rows)
        cache.reserve(1, right_room)
        cache.mask[: cache.rows, cache.end] = True
        body = getattr(self.model, self.model.base_model_prefix)
        hidden = body(
            input_ids=ids,
            attention_mask=self._decode_mask(cache),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state[:, -1, :]
        cache.advance(1)
        rows = hidden.shape[0]
        tokens = torch.zeros(rows, dtype=torch.long)
        bad = torch.zeros(rows, dtype=torch.bool)
        greedy = torch.ones(rows, dtype=torch.bool)
        greedy[full_rows] = False
        if bool(greedy.all()):
            tokens, bad = self.head.argmax(hidden)
        elif bool(greedy.any()):
            idx = greedy.nonzero().squeeze(1)
            tokens[idx], bad[idx] = self.head.argmax(hidden.index_select(0, idx))
        if not full_rows.numel():
            return tokens, bad, torch.empty(0, self.vocab_size)
        logits = self.head.capped(self.head(hidden.index_select(0, full_rows))).float()
        return tokens, bad, logits

    def _forward(self, ids, mask: Mask, positions, cache: BatchKVCache) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1, :].float()

    # -- masks -------------------------------------------------------------------------------------
    def _prefill_mask(self, mask: torch.Tensor) -> Mask:
        p = mask.shape[1]
        causal = torch.ones(p, p, dtype=torch.bool).tril_()
        # A padding query attends to itself only, so padded positions stay finite.
        keys = mask[:, None, :] | torch.eye(p, dtype=torch.bool)[None]
        full = (causal[None] & keys)[:, None]

        def windowed(window: int | None) -> torch.Tensor:
            if window is None or window >= p:
                return full
            return full & ~torch.ones(p, p, dtype=torch.bool).tril_(-window)

        return self._for_model(windowed)

    def _chunk_mask(self, past: int, k: int) -> Mask:
        """Queries at columns past..past+k-1 of one unpadded row: each sees every column up to its own."""
        full = torch.ones(k, past + k, dtype=torch.bool).tril_(past)[None, None]

        def windowed(window: int | None) -> torch.Tensor:
            if window is None or window > past + k:
                return full
            return full & ~torch.ones(k, past + k, dtype=torch.bool).tril_(past - window)[None, None]

        return self._for_model(windowed)

    def _decode_mask(self, cache: BatchKVCache) -> Mask:
        full = cache.live_mask(extra=1)[:, None, None, :]

        def windowed(window: int | None) -> torch.Tensor:
            # The new token sits at column `end`; with a window it sees columns > end - window
            # (a row's tokens are contiguous, so column distance is position distance).
            lo = cache.end - window + 1 - cache.start if window is not None else 0
            if lo <= 0:
                return full
            m = full.clone()
            m[..., :lo] = False
            return m

        return self._for_model(windowed)

    def _for_model(self, windowed: Callable[[int | None], torch.Tensor]) -> Mask:
        if self._windows is None:
            return self._format(windowed(None))
        if "" in self._windows:
            return self._format(windowed(self._windows[""]))
        return {kind: self._format(windowed(w)) for kind, w in self._windows.items()}

    def _format(self, m: torch.Tensor) -> torch.Tensor:
        if not self._eager:
            return m  # sdpa takes a boolean mask (True = attend)
        return torch.zeros(m.shape, dtype=self.model.dtype).masked_fill_(~m, torch.finfo(self.model.dtype).min)


def _attention_windows(cfg) -> dict[str, int | None] | None:
    """None: one full causal mask for all layers. Else mask kind -> sliding window (None = full).

    Models with per-layer types (Gemma 3) take a dict of masks keyed by layer type; a model whose
    every layer slides (Mistral-style, no layer_types) takes one windowed mask.
    """
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if layer_types:
        kinds = set(layer_types)
        unknown = kinds - {"full_attention", "sliding_attention"}
        if unknown:
            raise ValueError(f"unsupported attention layer types {sorted(unknown)}")
        if "sliding_attention" not in kinds:
            return None
        return {k: (window if k == "sliding_attention" else None) for k in kinds}
    if window and getattr(cfg, "use_sliding_window", True):
        return {"": window}
    return None


def _vocab_size(model) -> int:
    """Width of the model's logits: its output embedding's rows, else the config's vocab_size."""
    out = model.get_output_embeddings()
    weight = getattr(out, "weight", None)
    if callable(weight):  # a dynamically quantized Linear: its weight is a method
        weight = weight()
    shape = getattr(weight, "shape", None)
    if shape is not None:
        return int(shape[0])
    return int(model.config.get_text_config(decoder=True).vocab_size)
