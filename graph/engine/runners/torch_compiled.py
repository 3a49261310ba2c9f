"""A decode step compiled with torch.compile on fixed shape buckets (`runtime: {compile: true}`).

The batch changes every step (rows join and leave, the KV length grows), and a compiled graph is
specialised to its shapes. So each step is padded to a bucket: the row count up to the next of
ROW_BUCKETS, the KV length up to the next of LENGTH_BUCKETS. The step reads the past keys/values
as fixed-size views of the batch cache's buffers (graph/engine/runners/torch_cache.py: rows are right-aligned,
so the last L columns hold every row's last L tokens; nothing is copied), and returns the new
token's keys/values, which are written into the buffers here. Padding rows attend to their own
token only; padded columns are masked and zeroed (a masked column still meets a zero weight, and
0 * NaN would poison the row). A step that fits no bucket runs eagerly (counted).

Compiles are counted (`compiles`): after warm_up(), requests within the buckets compile nothing.
The compiled code is cached on disk (Inductor's FX graph cache, under COMPILE_CACHE_DIR or
$INFERENCE_GRAPH_COMPILE_CACHE), so a restart reuses it and pays only the tracing.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from transformers.cache_utils import Cache, DynamicLayer

from graph.engine.runners.torch_cache import BatchKVCache
from graph.engine.runners.torch_runner import ModelRunner
from graph.engine.scheduler import RIGHT_ROOM

log = logging.getLogger(__name__)

# No one-row bucket: Inductor specialises a size of 1, so a lone row is padded to two and every
# bucket shares one graph (a one-row step costs about the same as two: it reads the same weights).
ROW_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048)
# What compiles the traced graphs; tests set "eager" (Dynamo's tracing, guards and recompiles
# without Inductor's C++ build, which takes minutes on 2 shared cores).
BACKEND = "inductor"
COMPILE_CACHE_DIR = Path.home() / ".cache" / "inference-graph" / "torch-compile"


def configure_compile_cache(path: str | Path | None = None) -> Path:
    """Point Inductor's on-disk caches (FX graph cache, compiled C++ kernels) at one folder kept
    across restarts. Returns the folder."""
    folder = Path(path or os.environ.get("INFERENCE_GRAPH_COMPILE_CACHE") or COMPILE_CACHE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return folder


class _BucketLayer(DynamicLayer):
    """One layer's past (a fixed-size view) for one compiled step; keeps the new token's k/v."""

    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        # Typed as used: None only until the runner sets past_* before a step and the step sets new_*.
        self.past_k: torch.Tensor = None  # pyright: ignore[reportAttributeAccessIssue]  set before each step
        self.past_v: torch.Tensor = None  # pyright: ignore[reportAttributeAccessIssue]  set before each step
        self.new_k: torch.Tensor = None  # pyright: ignore[reportAttributeAccessIssue]  set by each step
        self.new_v: torch.Tensor = None  # pyright: ignore[reportAttributeAccessIssue]  set by each step
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.new_k, self.new_v = key_states, value_states
        return torch.cat([self.past_k, key_states], dim=-2), torch.cat([self.past_v, value_states], dim=-2)

    def get_seq_length(self) -> int:
        return self.past_k.shape[-2]


class _BucketCache(Cache):
    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[_BucketLayer() for _ in range(num_layers)])

    @property
    def buckets(self) -> list[_BucketLayer]:
        """The layers, as the bucket layers __init__ made them (Cache types them as its base layer)."""
        return cast("list[_BucketLayer]", self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # self.layers, not self.buckets: this runs inside the compiled step (no extra call to trace).
        return self.layers[0].get_seq_length()  # pyright: ignore[reportAttributeAccessIssue]  a _BucketLayer


def bucket(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= n, None if n is above them all."""
    i = bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


class CompiledRunner(ModelRunner):
    """ModelRunner whose decode step runs compiled on (row, length) buckets; prefill stays eager."""

    pack_weights = False  # inductor packs the weights it compiles

    def __init__(
        self, model, *, max_batch_size: int, max_length: int = 512, cache_dir: str | Path | None = None
    ) -> None:
        super().__init__(model)
        configure_compile_cache(cache_dir)
        self.row_buckets = tuple(b for b in ROW_BUCKETS if b < max_batch_size) + (max(2, max_batch_size),)
        self.length_buckets = LENGTH_BUCKETS
        self.warm_lengths = tuple(b for b in LENGTH_BUCKETS if b <= max(64, max_length)) or LENGTH_BUCKETS[:1]
        self.compiles = 0  # graphs handed to Inductor since start
        self.eager_steps = 0  # steps that fit no bucket
        self._cache = _BucketCache(self.num_layers)
        self._capacity = max_length + RIGHT_ROOM  # the scheduler's batch cache (same strides)
        # dynamic=True: one graph serves every bucket; the buckets bound the shapes a step takes.
        self._step = torch.compile(self._forward_bucket, backend=self._backend, dynamic=True)

    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.compiles += 1
        return compile_fx(gm, example_inputs) if BACKEND == "inductor" else gm.forward

    def _forward_bucket(self, ids, positions, mask, cache: _BucketCache):
        kwargs: dict[str, Any] = dict(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1, :]

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: BatchKVCache, right_room: int) -> torch.Tensor:
        rows = cache.rows
        b, length = bucket(rows, self.row_buckets), bucket(cache.length, self.length_buckets)
        cache.reserve(1, right_room)
        if length is not None and cache.end - length < 0 and cache.slabs[0].kbuf is not None:
            # Too little room on the left for this bucket's view: move the batch once, for good.
            cache.left_room = max(cache.left_room, length)
            cache._relocate(cache.left_room + cache.length + 1 + right_room)
        if b is None or length is None or b > cache.row_capacity or cache.slabs[0].kbuf is None:
            self.eager_steps += 1
            return super().decode(ids, positions, cache, right_room)
        cache.reserve_rows(b)  # the padding rows up to the bucket are read too
        end, start, lo = cache.end, cache.start, cache.end - length
        cache.mask[:rows, end] = True
        for layer in cache.slabs:  # finite numbers in every column the step reads
            for buf in (layer.kbuf, layer.vbuf):
                if lo < start:
                    buf[:rows, :, lo:start] = 0
                if b > rows:
                    buf[rows:b, :, lo:end] = 0
        mask = cache.mask[:b, lo : end + 1].clone()
        mask[:, : start - lo] = False
        mask[rows:] = False
        mask[rows:, -1] = True  # a padding row attends to its own token
        if b > rows:
            ids = torch.cat([ids, ids.new_zeros(b - rows, 1)])
            positions = torch.cat([positions, positions.new_zeros(b - rows, 1)])
        for mine, layer in zip(self._cache.buckets, cache.slabs):
            mine.past_k, mine.past_v = layer.kbuf[:b, :, lo:end], layer.vbuf[:b, :, lo:end]
        logits = self._step(ids, positions, self._bucket_mask(mask, length), self._cache)
        for mine, layer in zip(self._cache.buckets, cache.slabs):
            layer.kbuf[:rows, :, end] = mine.new_k[:rows, :, 0]
            layer.vbuf[:rows, :, end] = mine.new_v[:rows, :, 0]
            mine.past_k = mine.past_v = mine.new_k = mine.new_v = None  # pyright: ignore[reportAttributeAccessIssue]  released between steps
        cache.advance(1)
        return logits[:rows].float()

    def _bucket_mask(self, mask: torch.Tensor, length: int):
        full = mask[:, None, None, :]

        def windowed(window: int | None) -> torch.Tensor:
            lo = length + 1 - window if window is not None else 0
            if lo <= 0:
                return full
            m = full.clone()
            m[..., :lo] = False
            return m

        return self._for_model(windowed)

    # -- warm-up -------------------------------------------------------------------------------------
    def warm_up(self, pad_id: int = 0) -> None:
        """Compile every row bucket at the length buckets up to max_length (from the on-disk cache
        after the first start). Logs the time it took and the graphs compiled."""
        t0, before = time.perf_counter(), self.compiles
        for length in self.warm_lengths:
            for b in self.row_buckets:
                cache = BatchKVCache(self.num_layers, self.row_buckets[-1], self._capacity, left_room=length)
                _, pre = self.prefill(torch.full((b, 1), pad_id), torch.ones(b, 1, dtype=torch.bool))
                cache.add_rows(pre, list(range(b)), right_room=1)
                cache.start = cache.end - length  # a batch whose KV length is exactly this bucket
                for layer in cache.slabs:
                    layer.kbuf[:, :, cache.start : cache.end - 1] = 0
                    layer.vbuf[:, :, cache.start : cache.end - 1] = 0
                with torch.inference_mode():
                    self.decode(torch.full((b, 1), pad_id), torch.ones(b, 1, dtype=torch.long), cache, 1)
        log.warning(
            "compiled decode step: %d row buckets x %d length buckets warm in %.1f s (%d graphs compiled)",
            len(self.row_buckets),
            len(self.warm_lengths),
            time.perf_counter() - t0,
            self.compiles - before,
        )
