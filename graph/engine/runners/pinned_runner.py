"""A runner whose forward passes run on one shared compute thread: two engines of a hybrid node, one OpenMP pool.

Why: torch and ggml (llama.cpp) share one libgomp in this process (torch's copy: same soname), and libgomp
keeps a pool of worker threads per thread that starts parallel work. Two decode threads, each with its own
pool, put more OpenMP threads than cores in the process; libgomp then stops spinning between parallel
regions and every region and barrier pays a futex wake-up (measured on SmolLM2, 2 cores: a torch decode
step 32 -> 55 ms, graph/engine/runners/torch_runner.py:release_openmp_pool), and a pool's workers still
spinning after one engine's step take a core from the other's. Running every forward of both engines on
one `ComputeThread` keeps one pool whose threads go straight from one engine's kernels to the other's.

The engine's own work (sampling, the KV cache's row moves, detokenizing) stays on each engine's decode
thread, with torch on one thread there (graph/models/node_engine.py), so only the compute thread starts
parallel regions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, TypeVar

import torch

from graph.engine.runners.base import RowCache, Runner

T = TypeVar("T")


class ComputeThread:
    """One daemon thread running submitted calls in order (torch inference mode, `threads` torch threads)."""

    def __init__(self, threads: int | None, name: str = "compute") -> None:
        self.threads = threads
        self._calls: SimpleQueue[tuple[Callable[[], Any], Future] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """fn() on the compute thread; its result or its exception here."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future = Future()
        self._calls.put((fn, done))
        return done.result()

    def close(self) -> None:
        self._calls.put(None)

    def _run(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while (item := self._calls.get()) is not None:
                fn, done = item
                try:
                    done.set_result(fn())
                except BaseException as exc:  # handed to the caller, whatever it is
                    done.set_exception(exc)


class PinnedRunner(Runner[RowCache]):
    """`inner`'s forward passes (prefill, decode, prefill_chunk, warm_up) on `compute`; the rest as it is."""

    def __init__(self, inner: Runner, compute: ComputeThread) -> None:
        self.inner = inner
        self.compute = compute
        self.runtime_name = inner.runtime_name
        self.num_layers = inner.num_layers
        self.max_positions = inner.max_positions
        self.vocab_size = inner.vocab_size
        self.chunked_prefill = inner.chunked_prefill
        self.multi_token_decode = inner.multi_token_decode  # speculative decoding on a llamacpp side
        self.max_draft_rows = inner.max_draft_rows
        self.concurrent_chunks = inner.concurrent_chunks  # the prefill lane: not on the compute thread

    def new_cache(self, row_capacity: int, capacity: int, left_room: int = 0) -> RowCache:
        return self.inner.new_cache(row_capacity, capacity, left_room)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, RowCache]:
        return self.compute.call(lambda: self.inner.prefill(ids, mask))

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: RowCache, right_room: int) -> torch.Tensor:
        return self.compute.call(lambda: self.inner.decode(ids, positions, cache, right_room))

    def decode_split(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: RowCache, right_room: int, full_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.compute.call(lambda: self.inner.decode_split(ids, positions, cache, right_room, full_rows))

    def decode_drafts(self, ids: Sequence[Sequence[int]], cache: RowCache, right_room: int) -> torch.Tensor:
        return self.compute.call(lambda: self.inner.decode_drafts(ids, cache, right_room))

    def prefill_chunk(self, ids: torch.Tensor, cache: RowCache | None, total: int) -> tuple[torch.Tensor, RowCache]:
        return self.compute.call(lambda: self.inner.prefill_chunk(ids, cache, total))

    def prefill_chunk_beside(
        self, ids: torch.Tensor, cache: RowCache | None, total: int
    ) -> tuple[torch.Tensor, RowCache]:
        # On the caller's thread (the scheduler's prefill lane), not queued behind the decode steps.
        return self.inner.prefill_chunk_beside(ids, cache, total)

    def kv_bytes_per_token(self) -> int:
        return self.inner.kv_bytes_per_token()

    def eos_ids(self) -> frozenset[int]:
        return self.inner.eos_ids()

    def warm_up(self, pad_id: int = 0) -> None:
        self.compute.call(lambda: self.inner.warm_up(pad_id))
