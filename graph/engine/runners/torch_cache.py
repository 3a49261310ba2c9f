"""The torch runner's KV cache (a RowCache): preallocated per-layer buffers that rows join and leave in place.

Layout: each layer holds keys/values of shape [reserved_rows, kv_heads, capacity, head_dim] (`mask`:
[row_capacity, capacity]). Rows [0, rows) are live; columns [start, end) are in use, and every row's tokens
are right-aligned so that its last token sits at column end - 1 (shorter rows are left-padded). `mask`
marks the real tokens. Columns left of `start` are spare room for longer prompts that join later; a fresh
buffer, and every move past the right end, puts `start` at `left_room` (the scheduler's planned prompt) so
such prompts fit without moving the batch; a longer prompt moves it once, with the room on the left it needs.

Costs, which is the point of this class (transformers' DynamicCache concatenates the whole cache on
every step, and index_selects all of it whenever a row leaves):
- a decode step writes one column in place;
- a joining row copies its own prefill cache (and zeroes its own padding);
- a leaving row is replaced by the last row (one row copied), and leading columns that are padding
  for every row are dropped by moving `start`;
- only reaching the right end of the buffer moves the batch (to a larger buffer);
- the buffers hold the live rows rounded up to a power of two, not every row slot (`row_capacity`): a row
  joining past them moves the batch into twice the rows, and any move sizes the rows anew for the live
  ones (within `max_bytes`, the scheduler's KV budget, where the room allows), so what is reserved
  follows what is used (moves are geometric: a decode step copies nothing while it fits).
Buffers are allocated with `torch.empty`, so untouched columns cost no physical memory (but count as
reserved: `kv_buffer_mb`, and commit on hosts with strict overcommit).

It plugs into transformers 5 models as a `Cache` whose layers are `DynamicLayer` subclasses:
models only call `update(key, value, layer_idx)`, because the engine passes explicit position ids
and a ready 4-D attention mask (so the cache is never asked for mask sizes or offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from transformers.cache_utils import Cache, DynamicLayer

from graph.engine.runners.base import CopiedRow, KeptRow, RowCache, swap_remove


class _SlabLayer(DynamicLayer):
    """One layer's keys and values in buffers owned by a `BatchKVCache`."""

    is_sliding = False

    def __init__(self, owner: BatchKVCache) -> None:
        super().__init__()
        self._owner = owner
        # Typed as made: None only until the first update (lazy_initialization) makes them.
        self.kbuf: torch.Tensor = None  # pyright: ignore[reportAttributeAccessIssue]  None until the first update
        self.vbuf: torch.Tensor = None  # pyright: ignore[reportAttributeAccessIssue]  None until the first update

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        o = self._owner
        self.kbuf = key_states.new_empty(o.row_capacity, key_states.shape[1], o.capacity, key_states.shape[-1])
        self.vbuf = value_states.new_empty(o.row_capacity, value_states.shape[1], o.capacity, value_states.shape[-1])
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.kbuf is None:
            self.lazy_initialization(key_states, value_states)
        o = self._owner
        b, end = o.rows, o.end + key_states.shape[-2]
        self.kbuf[:b, :, o.end : end] = key_states
        self.vbuf[:b, :, o.end : end] = value_states
        self.keys = self.kbuf[:b, :, o.start : end]
        self.values = self.vbuf[:b, :, o.start : end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._owner.end - self._owner.start


class BatchKVCache(Cache, RowCache):
    """KV cache of a batch of right-aligned rows; the engine advances `end` after each forward."""

    def __init__(self, num_layers: int, row_capacity: int, capacity: int, left_room: int = 0) -> None:
        super().__init__(layers=[_SlabLayer(self) for _ in range(num_layers)])
        self.row_capacity = row_capacity
        self.capacity = capacity
        self.left_room = left_room
        self.rows = 0
        self.start = self.end = left_room
        self.mask = torch.zeros(row_capacity, capacity, dtype=torch.bool)

    @property
    def slabs(self) -> list[_SlabLayer]:
        """The layers, as the slab layers __init__ made them (Cache types them as its base layer)."""
        return cast("list[_SlabLayer]", self.layers)

    @property
    def length(self) -> int:
        """Columns in use (what attention reads)."""
        return self.end - self.start

    @property
    def reserved_rows(self) -> int:
        """Rows the buffers hold now (0 before the first rows join)."""
        kbuf = self.slabs[0].kbuf if self.slabs else None
        return 0 if kbuf is None else kbuf.shape[0]

    def reserved_positions(self) -> int:
        kbuf = self.slabs[0].kbuf if self.slabs else None
        return 0 if kbuf is None else kbuf.shape[0] * kbuf.shape[2]  # one tensor: rows and columns together

    def _room(self, rows: int, capacity: int, per_token: int) -> int:
        """Buffer rows for `rows` live rows of `capacity` columns: a power of two, at most row_capacity,
        cut to what fits `max_bytes` (never below `rows`)."""
        room = min(self.row_capacity, 1 << (max(rows, 1) - 1).bit_length())
        if self.max_bytes:
            room = min(room, max(rows, self.max_bytes // max(1, capacity * per_token)))
        return room

    def _token_bytes(self) -> int:
        return sum(2 * layer.kbuf[0, :, 0].numel() * layer.kbuf.element_size() for layer in self.slabs)

    def reserve_rows(self, rows: int) -> None:
        """Make the buffers hold at least `rows` rows (a compiled step pads the batch to its row bucket)."""
        if self.reserved_rows and rows > self.reserved_rows:
            self._relocate(self.capacity, max(rows, self._room(rows, self.capacity, self._token_bytes())), self.start)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def live_mask(self, extra: int = 0) -> torch.Tensor:
        """[rows, length + extra] bool view: which columns hold real tokens."""
        return self.mask[: self.rows, self.start : self.end + extra]

    # -- growing along the sequence ---------------------------------------------------------------
    def reserve(self, n: int, right_room: int) -> None:
        """Make sure `n` more columns fit; otherwise move the batch into a larger buffer."""
        if self.end + n <= self.capacity:
            return
        self._relocate(self.left_room + self.length + n + right_room)

    def advance(self, n: int) -> None:
        """The last forward wrote `n` columns (their mask must already be set)."""
        self.end += n

    def _relocate(self, capacity: int, rows: int | None = None, new_start: int | None = None) -> None:
        """Move the batch into buffers of `capacity` columns and `rows` rows (None: sized for the live rows),
        its columns from `new_start` (None: left_room)."""
        start, end, b = self.start, self.end, self.rows
        new_start = self.left_room if new_start is None else new_start
        new_end = new_start + (end - start)
        if rows is None and self.reserved_rows:
            rows = self._room(b, capacity, self._token_bytes())
        for layer in self.slabs:
            if layer.kbuf is None:
                continue
            k = layer.kbuf.new_empty(rows or self.row_capacity, layer.kbuf.shape[1], capacity, layer.kbuf.shape[-1])
            v = layer.vbuf.new_empty(rows or self.row_capacity, layer.vbuf.shape[1], capacity, layer.vbuf.shape[-1])
            k[:b, :, new_start:new_end] = layer.kbuf[:b, :, start:end]
            v[:b, :, new_start:new_end] = layer.vbuf[:b, :, start:end]
            layer.kbuf, layer.vbuf = k, v
        mask = torch.zeros(self.row_capacity, capacity, dtype=torch.bool)
        mask[:b, new_start:new_end] = self.mask[:b, start:end]
        self.mask, self.capacity = mask, capacity
        self.start, self.end = new_start, new_end

    # -- rows joining and leaving -----------------------------------------------------------------
    def add_rows(self, prefill: BatchKVCache, src_rows: Sequence[int], right_room: int) -> None:
        """Append rows `src_rows` of a finished prefill cache (an index may repeat: the samples of
        one prompt share its prefill) at the bottom of this batch, right-aligned."""
        n, p = len(src_rows), prefill.length
        if self.rows + n > self.row_capacity:
            raise ValueError("batch is full")
        if self.rows == 0:
            self.start = self.end = self.left_room
        if self.end - p < 0 or self.end + 1 > self.capacity:
            # a prompt longer than the room on the left (it gets what it needs, once: later moves put the
            # batch at the planned left_room again), or the right end reached
            left = max(self.left_room, p - self.length)
            capacity = left + self.length + 1 + right_room
            rows = self._room(self.rows + n, capacity, self._token_bytes()) if self.reserved_rows else None
            self._relocate(capacity, rows, left)
        elif self.reserved_rows and self.rows + n > self.reserved_rows:  # past the reserved rows: x2, same columns
            self._relocate(self.capacity, self._room(self.rows + n, self.capacity, self._token_bytes()), self.start)
        room = self._room(self.rows + n, self.capacity, prefill._token_bytes())  # for buffers made below
        b, start, end = self.rows, self.start, self.end
        new_start = min(start, end - p)
        idx = torch.tensor(list(src_rows), dtype=torch.long)
        same = list(src_rows) == list(range(prefill.rows))
        for dst, src in zip(self.slabs, prefill.slabs):
            if dst.kbuf is None:
                dst.kbuf = src.kbuf.new_empty(room, src.kbuf.shape[1], self.capacity, src.kbuf.shape[-1])
                dst.vbuf = src.vbuf.new_empty(room, src.vbuf.shape[1], self.capacity, src.vbuf.shape[-1])
                dst.dtype, dst.device, dst.is_initialized = src.dtype, src.device, True
            ks = src.kbuf[: prefill.rows, :, prefill.start : prefill.end]
            vs = src.vbuf[: prefill.rows, :, prefill.start : prefill.end]
            dst.kbuf[b : b + n, :, end - p : end] = ks if same else ks.index_select(0, idx)
            dst.vbuf[b : b + n, :, end - p : end] = vs if same else vs.index_select(0, idx)
            # Padding must hold finite numbers: masked columns still meet a zero attention weight.
            dst.kbuf[b : b + n, :, new_start : end - p] = 0
            dst.vbuf[b : b + n, :, new_start : end - p] = 0
            if new_start < start and b:
                dst.kbuf[:b, :, new_start:start] = 0
                dst.vbuf[:b, :, new_start:start] = 0
        pm = prefill.mask[: prefill.rows, prefill.start : prefill.end]
        self.mask[b : b + n, new_start:end] = False
        self.mask[b : b + n, end - p : end] = pm if same else pm[idx]
        if new_start < start and b:
            self.mask[:b, new_start:start] = False
        self.rows += n
        self.start = new_start

    def copy_row(self, row: int, first: int, n: int, capacity: int) -> BatchKVCache:
        """Columns [start + first, start + first + n) of `row` as a new unpadded one-row cache."""
        out = BatchKVCache(len(self.layers), 1, max(capacity, n))
        lo = self.start + first
        for dst, src in zip(out.slabs, self.slabs):
            shape = (1, src.kbuf.shape[1], out.capacity, src.kbuf.shape[-1])
            dst.kbuf, dst.vbuf = src.kbuf.new_empty(shape), src.vbuf.new_empty(shape)
            dst.kbuf[0, :, :n] = src.kbuf[row, :, lo : lo + n]
            dst.vbuf[0, :, :n] = src.vbuf[row, :, lo : lo + n]
            dst.dtype, dst.device, dst.is_initialized = src.dtype, src.device, True
        out.rows = 1
        out.mask[0, :n] = True
        out.end = n
        return out

    def keep_row(self, row: int, n: int) -> KeptRow:
        """Row `row`'s first `n` tokens as a kept one-row cache (a row's tokens are contiguous and
        right-aligned: they start at its first masked-in column). An unpadded one-row cache (a prefill's)
        is kept as it is, not copied: the engine never writes to a prefill's cache once its rows joined."""
        first = int(self.live_mask()[row].int().argmax())
        per_token = sum(2 * layer.kbuf[0, :, 0].numel() * layer.kbuf.element_size() for layer in self.slabs)
        if self.row_capacity == 1 and self.start == 0 and first == 0 and self.length >= n:
            kept, nbytes = self, per_token * self.capacity
        else:
            kept, nbytes = self.copy_row(row, first, n, n), per_token * n
        return CopiedRow(kept, n, nbytes, lambda m, capacity: kept.copy_row(0, 0, m, capacity))

    def remove_rows(self, rows: Sequence[int]) -> list[int]:
        """Drop `rows`; each is replaced by the current last row. Returns, for each remaining
        position, the old position of the row now there."""
        cols = slice(self.start, self.end)

        def move(dst: int, src: int) -> None:
            for layer in self.slabs:
                layer.kbuf[dst, :, cols] = layer.kbuf[src, :, cols]
                layer.vbuf[dst, :, cols] = layer.vbuf[src, :, cols]
            self.mask[dst, cols] = self.mask[src, cols]

        order = swap_remove(self.rows, rows, move)
        self.rows = len(order)
        self._trim()
        return order

    def _trim(self) -> None:
        if self.rows == 0:
            self.start = self.end = self.left_room
            return
        used = self.live_mask().any(dim=0)
        if bool(used.any()):
            self.start += int(used.int().argmax())


def kv_bytes_per_token(model) -> int:
    """KV cache bytes of one row at one position, keys and values of every layer."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_attention_heads", 1) or 1
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    size = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * size
