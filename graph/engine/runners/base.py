"""The runner protocol: what the scheduler asks of a backend (torch, onnx, llama.cpp), and nothing more.

A runner does forward passes of one model over a batch of rows; the scheduler (graph/engine/
scheduler.py) decides which rows run each step, the sampler picks their tokens, and the runner's
`RowCache` holds their keys and values in whatever layout its backend needs. One step of the engine:

    logits, pre = runner.prefill(ids, mask)          # new prompts, left-padded [rows, p]
    batch.add_rows(pre, src_rows, right_room)        # they join the running batch (a row may repeat)
    logits = runner.decode(ids, positions, batch, right_room)   # one token per running row
    order = batch.remove_rows(finished)              # finished rows leave; `order` maps the survivors

Every backend implements both classes in its own file (torch_runner.py with torch_cache.py,
onnx_runner.py, and so on); the engine tells them apart by `isinstance(x, Runner)` only, never by
probing attributes. Logits are float32 torch tensors [rows, vocab_size] whatever the backend computes
in, so sampling, grammars and logprobs are the same code on every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Generic, Self, TypeVar

import torch


class RowCache(ABC):
    """The running batch's KV memory: rows [0, rows) are live, each holding one sequence's cache."""

    rows: int  # live rows
    row_capacity: int  # the most rows the batch takes (the node's max_batch_size)
    capacity: int  # positions (columns) the buffers hold per row
    # The most bytes the buffers reserve unless the live rows need more (the scheduler sets its KV budget):
    # caches that size their buffers to the live rows cut their room (spare rows, planned columns) to it.
    # None: no bound.
    max_bytes: int | None = None

    @property
    def reserved_rows(self) -> int:
        """Rows the buffers hold now: reserved memory is reserved_rows x capacity positions. Caches that
        allocate every row slot up front (llama.cpp's context) hold row_capacity."""
        return self.row_capacity

    def reserved_positions(self) -> int:
        """reserved_rows x capacity, read from one buffer's shape (another thread, /node_stats, may read it while
        the decode thread moves the buffers: two separate reads could pair new rows with old columns)."""
        return self.reserved_rows * self.capacity

    @property
    @abstractmethod
    def length(self) -> int:
        """Positions in use by the longest live row (what the KV gauges report)."""

    @abstractmethod
    def add_rows(self, prefill: Self, src_rows: Sequence[int], right_room: int) -> None:
        """Append rows `src_rows` of a finished prefill cache at the bottom of this batch (an index
        may repeat: the samples of one prompt share its prefill); keep room for `right_room` more
        tokens per row."""

    @abstractmethod
    def remove_rows(self, rows: Sequence[int]) -> list[int]:
        """Drop `rows` and free what they held. Returns, for each remaining position, the old
        position of the row now there (the scheduler reorders its own rows the same way)."""

    def keep_row(self, row: int, n: int) -> KeptRow:
        """The first `n` tokens of row `row` (positions 0..n-1), copied out to be kept for reuse (the
        prefix cache, graph/engine/kv/prefix_cache.py): a prompt, or a finished row's prompt and reply.
        The copy no longer depends on this cache. Runners with chunked_prefill implement it."""
        raise NotImplementedError(f"{type(self).__name__} cannot copy rows out")

    def truncate_row(self, row: int, length: int) -> None:
        """Keep only the first `length` positions of row `row` (speculative decoding drops the
        positions of rejected draft tokens). Caches of runners with multi_token_decode implement it."""
        raise NotImplementedError(f"{type(self).__name__} cannot truncate rows")


class KeptRow(ABC):
    """One sequence's first tokens kept for reuse, in whatever form its backend restores fastest
    (torch and onnx: a one-row cache; llama.cpp: the sequence's state bytes in RAM)."""

    tokens: int  # positions kept
    nbytes: int  # memory it holds

    @abstractmethod
    def resume(self, n: int, capacity: int) -> RowCache:
        """A new one-row prefill cache holding the first `n` kept positions, with room for `capacity`,
        for `Runner.prefill_chunk` to continue from (the kept copy is left as it is)."""


class CopiedRow(KeptRow):
    """A kept row that is a one-row, unpadded cache of its backend (columns [0, tokens)), resumed by
    copying its first columns into a new cache (`copy`)."""

    def __init__(self, cache: RowCache, tokens: int, nbytes: int, copy: Callable[[int, int], RowCache]) -> None:
        self.cache, self.tokens, self.nbytes, self._copy = cache, tokens, nbytes, copy

    def resume(self, n: int, capacity: int) -> RowCache:
        return self._copy(min(n, self.tokens), capacity)


C = TypeVar("C", bound=RowCache)


class Runner(ABC, Generic[C]):
    """Forward passes of one model on one backend, over its own cache layout `C`."""

    runtime_name: str  # what the node's start-up line and /node_stats say, e.g. "onnx int8 (onnxruntime 1.32)"
    num_layers: int
    max_positions: int | None  # the model's context in tokens; None when the model has no limit
    vocab_size: int  # width of the logits

    @abstractmethod
    def new_cache(self, row_capacity: int, capacity: int, left_room: int = 0) -> C:
        """An empty batch cache of `row_capacity` rows and `capacity` positions (`left_room`: room
        for prompts longer than the batch's rows, for layouts that right-align rows)."""

    @abstractmethod
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, C]:
        """Left-padded prompts `ids` [rows, p] with `mask` (True = real token) -> last-position
        logits [rows, vocab] (float32) and a cache holding exactly these rows, to `add_rows` from."""

    @abstractmethod
    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: C, right_room: int) -> torch.Tensor:
        """One token per live row of `cache` (`ids`, `positions`: [rows, 1]) -> logits [rows, vocab]
        (float32); the cache keeps room for `right_room` more tokens per row."""

    def decode_split(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: C, right_room: int, full_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A decode step (as `decode`) for a batch whose rows other than `full_rows` (row indices,
        ascending) are plain greedy -> (the index of each row's first largest logit [rows], whether
        that logit is NaN [rows], float32 logits [len(full_rows), vocab] of the rows `full_rows`).
        Entries of the first two at `full_rows` are unspecified. This default takes both from
        `decode`; a runner may compute the greedy rows' argmax without their full float32 logits."""
        logits = self.decode(ids, positions, cache, right_room)
        best = logits.max(dim=-1)
        return best.indices, best.values.isnan(), logits.index_select(0, full_rows)

    # Whether `prefill_chunk` works: the scheduler then prefills long prompts a chunk per step.
    chunked_prefill: bool = False

    def prefill_chunk(self, ids: torch.Tensor, cache: C | None, total: int) -> tuple[torch.Tensor, C]:
        """The next tokens `ids` [1, k] of one prompt of `total` tokens, on top of `cache` (what its
        earlier chunks left; None for the first chunk) -> logits at the chunk's last position [1, vocab]
        (float32) and the cache, a one-row prefill cache to `add_rows` from once the prompt is done.
        Backends that cannot set `chunked_prefill` False: their prompts are prefilled in one go."""
        raise NotImplementedError(f"{type(self).__name__} prefills prompts in one go")

    # Whether `prefill_chunk_beside` works: the scheduler then prefills a long prompt's chunks on a second
    # thread while the running rows' decode steps go on (its prefill lane, graph/engine/scheduler.py).
    concurrent_chunks: bool = False

    def prefill_chunk_beside(self, ids: torch.Tensor, cache: C | None, total: int) -> tuple[torch.Tensor, C]:
        """`prefill_chunk`, called on another thread than the decode steps and running at the same time as
        them: the runner splits the cores between the two (while it runs, `decode` uses fewer threads).
        Backends that cannot set `concurrent_chunks` False: their chunks run between decode steps."""
        raise NotImplementedError(f"{type(self).__name__} cannot prefill beside its decode steps")

    # Whether `decode_drafts` works: the scheduler then verifies speculative drafts in the batch.
    multi_token_decode: bool = False
    max_draft_rows: int | None = None  # the most rows `decode_drafts` takes at once (None: any)

    def decode_drafts(self, ids: Sequence[Sequence[int]], cache: C, right_room: int) -> torch.Tensor:
        """Row i of `cache` is fed the tokens `ids[i]` (its last token, then its draft tokens, at its
        next positions), all rows in one forward -> logits [sum of len(ids[i]), vocab] (float32), row
        0's positions first. Each row's cache grows by len(ids[i]) (`RowCache.truncate_row` drops the
        rejected ones). Backends that cannot set `multi_token_decode` False: they never get drafts."""
        raise NotImplementedError(f"{type(self).__name__} decodes one token per row")

    @abstractmethod
    def kv_bytes_per_token(self) -> int:
        """KV memory of one row at one position, keys and values of every layer, in bytes."""

    @abstractmethod
    def eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids from the model's own generation config (the engine adds the tokenizer's)."""

    def warm_up(self, pad_id: int = 0) -> None:
        """Prepare what the scheduler's warm-up steps do not (the compiled runner compiles its shape
        buckets here). Nothing by default."""


def as_id_set(value: int | Collection[int] | None) -> frozenset[int]:
    """A generation config's `eos_token_id` (an int, a list of ints or None) as a set of ids."""
    if value is None:
        return frozenset()
    if isinstance(value, int):
        return frozenset({value})
    return frozenset(int(v) for v in value)


def swap_remove(count: int, rows: Sequence[int], move: Callable[[int, int], None]) -> list[int]:
    """Drop `rows` out of `count` batch rows, each replaced by the current last row (`move(dst, src)`
    copies a row's state). Returns, for each remaining position, the old position of the row now there.
    Cache layouts that keep rows contiguous (torch's slabs, the ONNX runner's buffers) remove rows this way."""
    order = list(range(count))
    for i in sorted(set(rows), reverse=True):
        last = len(order) - 1
        if i != last:
            move(i, last)
            order[i] = order[last]
        order.pop()
    return order
