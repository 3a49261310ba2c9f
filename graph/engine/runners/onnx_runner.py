"""Runs an ONNX Runtime GenAI builder model as the engine's model runner: prefill and decode steps.

Design B of docs/runtimes.md: the project's scheduler, sampler and KV management stay in charge;
only the forward pass moves to ONNX Runtime. The builder's decoder (graph/models/onnx_model.py
converts it) uses GroupQueryAttention, which takes each row's length from the attention mask
(seqlens = sum(mask) - 1) and writes a row's new key/value at that column. So its KV cache layout is
not BatchKVCache's right-aligned one: here every row starts at column 0 and has its own length
(`OnnxKVCache`). Both classes implement the runner protocol (graph/engine/runners/base.py), so
everything else (rows joining and leaving, cancel, fair share) works unchanged.

Decode steps run in place: each layer's past and present are the same buffer (GroupQueryAttention's
shared-buffer mode, as ORT GenAI itself runs it), bound by pointer with an IOBinding, so a step
writes one column per row and copies nothing. The converted graph computes logits only at one
position per row (`logits_index`, added at conversion), so a prefill does not pay the vocabulary
projection for every prompt token (Gemma's 262k-entry vocabulary costs more than its layers).

The prefill lane (`prefill_chunk_beside`, issue #32): a long prompt's chunks can run on another thread while
the running rows decode. The chunk runs on a one-thread session and the decode steps meanwhile on a session
with the node's threads less one when the node has every core (on 2 cores both are the same one-thread
session: ONNX Runtime runs two calls of one session on two threads at once), so the two share the cores instead
of oversubscribing them; a node with fewer threads than cores (the served default splits the cores over its
generators) keeps its threads and the lane takes one more core. Small
chunks between the decode steps cannot do this: on 2 AMX cores a forward's fixed cost alone is about a
decode step of 8 rows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from graph.engine.runners.base import CopiedRow, KeptRow, RowCache, Runner, as_id_set, swap_remove

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

LOGITS_INDEX = "logits_index"  # the input graph/models/onnx_model.py adds: flat row*seq index per row
LANE_THREADS = 1  # threads of a long prompt's chunks beside the decode steps (prefill_chunk_beside)


class OnnxKVCache(RowCache):
    """KV cache of a batch of left-aligned rows: row i holds its `lens[i]` tokens in columns [0, lens[i]).

    Per layer, keys and values are numpy buffers of shape [reserved_rows, kv_heads, capacity,
    head_dim]; rows [0, rows) are live. The first `rows` rows of a buffer are contiguous, which is
    what lets one buffer be bound as both a layer's past and present.

    The buffers hold the live rows plus room, not `row_capacity` (the most rows the batch takes): rows
    are reserved by powers of two, and whenever the buffers move (a row joins past the reserved rows,
    or a row outgrows the columns) they are sized anew for the live rows, so a batch reserves about
    what it uses (rows x columns) however long a row that has left was. Moving copies the live rows,
    which happens after a geometric growth only: a decode step copies nothing while it fits. With
    `max_bytes` set (the scheduler's KV budget), the room beyond the live rows and columns is cut to
    fit it.
    """

    def __init__(
        self, num_layers: int, row_capacity: int, capacity: int, left_room: int = 0, *, min_capacity: int = 0
    ) -> None:
        self.num_layers = num_layers
        self.row_capacity = row_capacity
        self.capacity = max(capacity, min_capacity)
        self.planned = self.capacity  # columns a fresh batch buffer starts with (the scheduler's planned prompt)
        self.min_capacity = min_capacity  # never fewer columns (sliding-window layers need the window)
        self.max_bytes: int | None = None  # the most the buffers reserve unless the live rows need more
        self.rows = 0
        self.lens = np.zeros(row_capacity, dtype=np.int64)
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []

    @property
    def length(self) -> int:
        """Columns in use by the longest row (what the KV gauges report)."""
        return int(self.lens[: self.rows].max()) if self.rows else 0

    @property
    def reserved_rows(self) -> int:
        """Rows the buffers hold now (0 before the first rows join)."""
        return self.keys[0].shape[0] if self.keys else 0

    def reserved_positions(self) -> int:
        keys = self.keys
        if not keys:
            return 0
        shape = keys[0].shape  # one array: its rows and columns belong together
        return shape[0] * shape[2]

    def _allocate(self, kv_heads: int, head_dim: int, dtype, rows: int | None = None) -> None:
        shape = (self.row_capacity if rows is None else rows, kv_heads, self.capacity, head_dim)
        self.keys = [np.empty(shape, dtype=dtype) for _ in range(self.num_layers)]
        self.values = [np.empty(shape, dtype=dtype) for _ in range(self.num_layers)]

    def _token_bytes(self) -> int:
        k = self.keys[0]
        return 2 * self.num_layers * k.shape[1] * k.shape[3] * k.itemsize

    def _fit(self, rows: int, columns: int, right_room: int, per_token: int) -> tuple[int, int]:
        """Buffer rows and columns for `rows` live rows of up to `columns` positions (`per_token` bytes each):
        the columns with `right_room` to grow (at least the planned ones while `max_bytes` allows), the rows
        rounded up to a power of two (at most row_capacity, and within `max_bytes` where the room allows it)."""
        cols = max(columns + right_room, self.min_capacity)
        if self.planned > cols:
            fit = self.max_bytes // (rows * per_token) if self.max_bytes else self.planned
            cols = max(cols, min(self.planned, fit))
        room = min(self.row_capacity, 1 << (max(rows, 1) - 1).bit_length())
        if self.max_bytes:
            room = min(room, max(rows, self.max_bytes // (cols * per_token)))
        return room, cols

    def reserve(self, n: int, right_room: int) -> None:
        """Make sure every row can take `n` more columns; otherwise move into larger buffers."""
        if self.length + n > self.capacity:
            self._move(*self._fit(self.rows, self.length + n, right_room, self._token_bytes()))

    def add_rows(self, prefill: OnnxKVCache, src_rows: Sequence[int], right_room: int) -> None:
        """Append rows `src_rows` of a finished prefill cache (an index may repeat: the samples of
        one prompt share its prefill) at the bottom of this batch."""
        n = len(src_rows)
        if self.rows + n > self.row_capacity:
            raise ValueError("batch is full")
        p = int(prefill.lens[list(src_rows)].max())
        if not self.keys:
            k = prefill.keys[0]
            rows, self.capacity = self._fit(n, p + 1, right_room, prefill._token_bytes())
            self._allocate(k.shape[1], k.shape[3], k.dtype, rows=rows)
        elif p + 1 > self.capacity or self.rows + n > self.reserved_rows:
            self._move(*self._fit(self.rows + n, max(p, self.length) + 1, right_room, self._token_bytes()))
        b = self.rows
        idx = np.asarray(src_rows, dtype=np.int64)
        for dst, src in ((self.keys, prefill.keys), (self.values, prefill.values)):
            for d, s in zip(dst, src):
                d[b : b + n, :, :p] = s[idx, :, :p]
        self.lens[b : b + n] = prefill.lens[idx]
        self.rows += n

    def _move(self, rows: int, capacity: int) -> None:
        """Move into buffers of `rows` rows and `capacity` columns (keeps the live rows)."""
        used, b = self.length, self.rows
        for bufs in (self.keys, self.values):
            for i, old in enumerate(bufs):
                new = np.empty((rows, old.shape[1], capacity, old.shape[3]), dtype=old.dtype)
                new[:b, :, :used] = old[:b, :, :used]
                bufs[i] = new
        self.capacity = capacity

    def _grow(self, capacity: int) -> None:
        """Move into buffers of `capacity` columns, as many rows as now (a prefill's one-row cache)."""
        self._move(self.reserved_rows, capacity)

    def copy_row(self, row: int, n: int, capacity: int) -> OnnxKVCache:
        """Row `row`'s first `n` columns as a new one-row cache with room for `capacity` columns."""
        out = OnnxKVCache(self.num_layers, 1, max(capacity, n))
        k = self.keys[0]
        out._allocate(k.shape[1], k.shape[3], k.dtype)
        for dst, src in ((out.keys, self.keys), (out.values, self.values)):
            for d, s in zip(dst, src):
                d[0, :, :n] = s[row, :, :n]
        out.lens[0] = n
        out.rows = 1
        return out

    def keep_row(self, row: int, n: int) -> KeptRow:
        """Row `row`'s first `n` tokens as a kept one-row cache. A one-row cache (a prefill's) is kept
        as it is, not copied: the engine never writes to a prefill's cache once its rows joined."""
        per_token = self._token_bytes()
        if self.row_capacity == 1 and int(self.lens[0]) >= n:
            kept, nbytes = self, per_token * self.capacity
        else:
            kept, nbytes = self.copy_row(row, n, n), per_token * n
        return CopiedRow(kept, n, nbytes, lambda m, capacity: kept.copy_row(0, m, capacity))

    def truncate_row(self, row: int, length: int) -> None:
        """Keep row `row`'s first `length` columns (rejected drafts' columns are written over later)."""
        self.lens[row] = min(int(self.lens[row]), length)

    def remove_rows(self, rows: Sequence[int]) -> list[int]:
        """Drop `rows`; each is replaced by the current last row. Returns, for each remaining
        position, the old position of the row now there."""

        def move(dst: int, src: int) -> None:
            n = int(self.lens[src])
            for bufs in (self.keys, self.values):
                for buf in bufs:
                    buf[dst, :, :n] = buf[src, :, :n]
            self.lens[dst] = self.lens[src]

        order = swap_remove(self.rows, rows, move)
        self.rows = len(order)
        return order


class OnnxRunner(Runner[OnnxKVCache]):
    """Forward passes of one converted model on an ONNX Runtime InferenceSession."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int | None = None,
        source_dir: str | Path | None = None,
        precision: str = "int4",
        accuracy_level: int | None = None,
    ) -> None:
        """`model_dir`: a conversion by graph/models/onnx_model.py; `source_dir`: the transformers
        folder it came from (its generation_config.json gives the eos ids); `threads`: ONNX
        Runtime's intra-op threads (None = all cores)."""
        import json
        from types import SimpleNamespace

        import onnxruntime as ort

        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        self.num_layers: int = dec["num_hidden_layers"]
        self.max_positions: int | None = cfg.get("context_length")
        eos = cfg.get("eos_token_id")
        if source_dir is not None and (Path(source_dir) / "generation_config.json").is_file():
            eos = json.loads((Path(source_dir) / "generation_config.json").read_text()).get("eos_token_id", eos)
        self.generation_config = SimpleNamespace(eos_token_id=eos)
        level = f", accuracy_level {accuracy_level}" if accuracy_level else ""
        self.runtime_name = f"onnx {precision}{level} (onnxruntime {ort.__version__})"
        self.kv_heads: int = dec["num_key_value_heads"]
        self.head_dim: int = dec["head_size"]
        self.vocab_size: int = cfg["vocab_size"]
        # Sliding-window layers (Gemma 3) need KV buffers of at least the window, prefill included.
        self.min_capacity: int = int((dec.get("sliding_window") or {}).get("window_size") or 0)
        self._model_file = str(model_dir / dec["filename"])
        self.session = self._session(threads)
        # The prefill lane (prefill_chunk_beside): a long prompt's chunk on one core while the running rows decode
        # on the others, each on a session of its own thread count (made at the first such chunk: each is another
        # copy of the weights in memory). Needs two cores at least.
        cores = len(os.sched_getaffinity(0))
        self.threads = threads or cores
        self.concurrent_chunks = cores >= 2
        self._narrow_threads = self.threads if self.threads < cores else max(1, self.threads - LANE_THREADS)
        self._lane: InferenceSession | None = None
        self._narrow: InferenceSession | None = None
        self._lane_lock = threading.Lock()
        self._beside = 0  # lane chunks running now: decode steps meanwhile run on the narrow session
        names = {i.name for i in self.session.get_inputs()}
        if LOGITS_INDEX not in names:
            raise ValueError(f"{model_dir}: not converted by graph/models/onnx_model.py (no {LOGITS_INDEX} input)")
        inputs = dec["inputs"]
        outputs = dec["outputs"]
        self._past = [(inputs["past_key_names"] % i, inputs["past_value_names"] % i) for i in range(self.num_layers)]
        self._present = [
            (outputs["present_key_names"] % i, outputs["present_value_names"] % i) for i in range(self.num_layers)
        ]
        kv_type = next(i.type for i in self.session.get_inputs() if i.name == self._past[0][0])
        self.kv_dtype = np.float16 if "float16" in kv_type else np.float32
        self._has_positions = "position_ids" in names

    def _session(self, threads: int | None) -> InferenceSession:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(self._model_file, opts, providers=["CPUExecutionProvider"])

    def new_cache(self, row_capacity: int, capacity: int, left_room: int = 0) -> OnnxKVCache:
        return OnnxKVCache(self.num_layers, row_capacity, capacity, left_room, min_capacity=self.min_capacity)

    def eos_ids(self) -> frozenset[int]:
        return as_id_set(self.generation_config.eos_token_id)

    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * np.dtype(self.kv_dtype).itemsize

    def warm_up(self, pad_id: int = 0) -> None:
        """Nothing more to prepare: the scheduler's warm-up prefill and decode steps already ran the session."""

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, OnnxKVCache]:
        """Left-padded prompts `ids` [rows, p] with `mask` (True = real token) -> last-position
        logits [rows, vocab] (float32) and a cache holding exactly these rows."""
        rows, p = ids.shape
        lens = mask.sum(-1).numpy().astype(np.int64)
        # GroupQueryAttention wants each row's tokens first: move the left padding to the right.
        order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)
        right = torch.gather(ids, 1, order).numpy().astype(np.int64)
        cache = OnnxKVCache(self.num_layers, rows, max(p, self.min_capacity))
        cache._allocate(self.kv_heads, self.head_dim, self.kv_dtype)
        cache.lens[:] = lens
        cache.rows = rows
        if not self.min_capacity or len(set(lens.tolist())) == 1:
            return self._prefill_rows(right, lens, cache), cache
        # Sliding-window layers refuse right padding in a prompt (seqlens_k must cover the whole
        # sequence): prompts of each length run together, then their rows are put in place.
        logits = torch.empty(rows, self.vocab_size)
        for n in sorted(set(lens.tolist())):
            idx = np.flatnonzero(lens == n)
            part = OnnxKVCache(self.num_layers, len(idx), max(n, self.min_capacity))
            part._allocate(self.kv_heads, self.head_dim, self.kv_dtype)
            part.lens[:] = n
            part.rows = len(idx)
            logits[torch.from_numpy(idx)] = self._prefill_rows(right[idx, :n], part.lens, part)
            for dst, src in ((cache.keys, part.keys), (cache.values, part.values)):
                for d, s in zip(dst, src):
                    d[idx, :, :n] = s[:, :, :n]
        return logits, cache

    chunked_prefill = True

    def prefill_chunk(
        self, ids: torch.Tensor, cache: OnnxKVCache | None, total: int
    ) -> tuple[torch.Tensor, OnnxKVCache]:
        """The next `k` tokens of one prompt on top of what its earlier chunks (or a kept prefix) cached:
        GroupQueryAttention reads the row's past from the mask's length and writes the new columns after it."""
        return self._prefill_chunk(ids, cache, total, self._decode_session())

    def prefill_chunk_beside(
        self, ids: torch.Tensor, cache: OnnxKVCache | None, total: int
    ) -> tuple[torch.Tensor, OnnxKVCache]:
        """A chunk on the lane's one-thread session, while decode steps run on the narrow session (the node's
        threads less the lane's), so the two together use the node's cores and neither waits for the other.
        ONNX Runtime runs two sessions (or two calls of one) on two threads at once."""
        with self._lane_lock:
            if self._lane is None:
                self._lane = self._session(LANE_THREADS)
                same = self._narrow_threads == LANE_THREADS
                self._narrow = self._lane if same else self._session(self._narrow_threads)
                log.info("onnx: prefill lane sessions made (%d + %d threads)", LANE_THREADS, self._narrow_threads)
            self._beside += 1
        try:
            return self._prefill_chunk(ids, cache, total, self._lane)
        finally:
            with self._lane_lock:
                self._beside -= 1

    def _decode_session(self) -> InferenceSession:
        """The session of the forwards on the decode thread (decode steps, whole prompts, chunks between steps):
        the narrow one while a lane chunk runs, so a node that has every core never runs more threads than cores
        (a node with fewer threads than cores, as each of the served default's two generators on 2 cores, keeps
        its threads: the lane takes a core it was not using)."""
        return self._narrow if self._beside and self._narrow is not None else self.session

    def _prefill_chunk(
        self, ids: torch.Tensor, cache: OnnxKVCache | None, total: int, session: InferenceSession
    ) -> tuple[torch.Tensor, OnnxKVCache]:
        k = ids.shape[1]
        if cache is None:
            cache = OnnxKVCache(self.num_layers, 1, max(total, self.min_capacity))
            cache._allocate(self.kv_heads, self.head_dim, self.kv_dtype)
            cache.rows = 1
        past = int(cache.lens[0])
        if past + k > cache.capacity or cache.capacity < self.min_capacity:
            cache._grow(max(past + k, total, self.min_capacity))
        feed: dict[str, np.ndarray] = {
            "input_ids": ids.numpy().astype(np.int64).reshape(1, k),
            "attention_mask": np.ones((1, past + k), dtype=np.int64),
            LOGITS_INDEX: np.array([k - 1], dtype=np.int64),
        }
        if self._has_positions:
            feed["position_ids"] = np.arange(past, past + k, dtype=np.int64)[None]
        logits = self._run(feed, cache, 1, session=session)
        cache.lens[0] += k
        return logits, cache

    def _prefill_rows(self, right: np.ndarray, lens: np.ndarray, cache: OnnxKVCache) -> torch.Tensor:
        rows, p = right.shape
        feed: dict[str, np.ndarray] = {
            "input_ids": right,
            "attention_mask": (np.arange(p)[None, :] < lens[:rows, None]).astype(np.int64),
            LOGITS_INDEX: np.arange(rows, dtype=np.int64) * p + lens[:rows] - 1,
        }
        if self._has_positions:
            feed["position_ids"] = np.broadcast_to(np.arange(p, dtype=np.int64), (rows, p)).copy()
        return self._run(feed, cache, rows, session=self._decode_session())

    def sequence_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [p, vocab] at every position of one sequence `ids` [1, p] (for perplexity)."""
        p = ids.shape[1]
        feed: dict[str, np.ndarray] = {
            "input_ids": ids.numpy().astype(np.int64),
            "attention_mask": np.ones((1, p), dtype=np.int64),
            LOGITS_INDEX: np.arange(p, dtype=np.int64),
        }
        if self._has_positions:
            feed["position_ids"] = np.arange(p, dtype=np.int64)[None]
        cache = OnnxKVCache(self.num_layers, 1, max(p, self.min_capacity))
        cache._allocate(self.kv_heads, self.head_dim, self.kv_dtype)
        return self._run(feed, cache, 1, logits_rows=p)

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: OnnxKVCache, right_room: int) -> torch.Tensor:
        """One token per row (`ids`: [rows, 1]) -> logits [rows, vocab] (float32). Positions come
        from the rows' lengths (GroupQueryAttention's rotary embedding), which equal `positions`."""

        cache.reserve(1, right_room)
        b = cache.rows
        lens = cache.lens[:b]
        total = int(lens.max()) + 1
        feed = {
            "input_ids": ids.numpy().astype(np.int64).reshape(b, 1),
            "attention_mask": (np.arange(total)[None, :] <= lens[:, None]).astype(np.int64),
            LOGITS_INDEX: np.arange(b, dtype=np.int64),
        }
        if self._has_positions:
            feed["position_ids"] = lens.reshape(b, 1).copy()
        logits = self._run(feed, cache, b, session=self._decode_session())
        cache.lens[:b] += 1
        return logits

    multi_token_decode = True
    # GroupQueryAttention takes several new tokens on top of a past for one row only ("batch_size must be 1
    # when sequence_length > 1 and past context is given"): drafts are verified while the node runs one row
    # (speculation's own default, scheduler.speculative.max_rows, is 1 as well).
    max_draft_rows = 1

    def decode_drafts(self, ids: Sequence[Sequence[int]], cache: OnnxKVCache, right_room: int) -> torch.Tensor:
        """Row i's tokens `ids[i]` (its last token, then its drafts) at its next positions, in one forward ->
        logits [sum of len(ids[i]), vocab] (float32), row 0's positions first (one row: `max_draft_rows`).
        Written for rows of different counts (padded on the right with their last token: a padding position
        only writes a column past the row's length, written over later), should ONNX Runtime lift its limit."""
        b, k = len(ids), max(len(t) for t in ids)
        cache.reserve(k, right_room)
        lens = cache.lens[:b].copy()
        counts = np.array([len(t) for t in ids], dtype=np.int64)
        tokens = np.array([[*t, *([t[-1]] * (k - len(t)))] for t in ids], dtype=np.int64)
        total = int(lens.max()) + k
        feed: dict[str, np.ndarray] = {
            "input_ids": tokens,
            "attention_mask": (np.arange(total)[None, :] < (lens + k)[:, None]).astype(np.int64),
            LOGITS_INDEX: np.concatenate([i * k + np.arange(n, dtype=np.int64) for i, n in enumerate(counts)]),
        }
        if self._has_positions:
            feed["position_ids"] = lens[:, None] + np.arange(k, dtype=np.int64)[None, :]
        logits = self._run(feed, cache, b, logits_rows=int(counts.sum()), session=self._decode_session())
        cache.lens[:b] = lens + counts
        return logits

    def _run(
        self,
        feed: dict[str, np.ndarray],
        cache: OnnxKVCache,
        b: int,
        logits_rows: int | None = None,
        session: InferenceSession | None = None,
    ) -> torch.Tensor:
        """One forward with each layer's past and present bound to the same rows [0, b) of the
        cache's buffers (GroupQueryAttention's shared-buffer mode: it writes the new columns in
        place). Returns logits [logits_rows or b, vocab] (float32)."""
        import onnxruntime as ort

        session = session or self.session
        io = session.io_binding()
        for name, value in feed.items():
            io.bind_cpu_input(name, value)
        shape = [b, self.kv_heads, cache.capacity, self.head_dim]
        for (pk, pv), (ok, ov), kbuf, vbuf in zip(self._past, self._present, cache.keys, cache.values):
            for buf, name_in, name_out in ((kbuf, pk, ok), (vbuf, pv, ov)):
                ptr = buf.ctypes.data
                io.bind_input(name_in, "cpu", 0, self.kv_dtype, shape, ptr)
                io.bind_output(name_out, "cpu", 0, self.kv_dtype, shape, ptr)
        n = logits_rows or b
        logits = np.empty((n, 1, self.vocab_size), dtype=np.float32)
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        session.run_with_iobinding(io, ort.RunOptions())
        return torch.from_numpy(logits.reshape(n, -1))
