"""A node's memory under continuous load: which allocator the process runs on, a bound on oneDNN's
primitive cache, and glibc's malloc_trim.

Measured in-process (SmolLM2 bfloat16, 16 closed-loop clients of random prompt and completion lengths,
batch never empty, 180 s; KV cache 50-80 MB throughout), RSS at the end of the load:
- glibc malloc, oneDNN's default cache (1024 primitives): 705 MB warm -> 1888 MB, still climbing ~4 MB/s;
- glibc, cache bounded to 16: -> 1606 MB (the climb is glibc keeping freed logits/KV buffers: a trim
  when idle gives it back, the batch under load is never idle);
- jemalloc (LD_PRELOAD), default cache: -> 1296 MB, climbing (each new batch/prompt shape adds primitives);
- jemalloc, cache bounded to 16: 876 MB after 15 s, 1000-1120 MB from then on, and 10% more requests
  served than with glibc (489 against 440-451 in 180 s).
So the node bounds the cache itself (before torch makes its first primitive) and `make serve` preloads
jemalloc where it is installed; on glibc the idle trim stays.

Top level: the node side's (engine/scheduler.py, services/generator.py); the memory issue arranges the
node side's folders."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# oneDNN (bfloat16 matmuls on CPU) keeps a compiled primitive per shape; a decode batch changes its row
# count at every join and leave, so the default 1024 grows RSS by hundreds of MB. One step needs one
# primitive per distinct Linear shape (~8); 64 keeps several batch sizes warm.
ONEDNN_CACHE_CAPACITY = 64


def bound_onednn_cache() -> None:
    """Set ONEDNN_PRIMITIVE_CACHE_CAPACITY unless the operator did: oneDNN reads it when it makes its first
    primitive, so this must run before the first bfloat16 matmul of the process."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def allocator() -> str:
    """`jemalloc` or `tcmalloc` when one is loaded into this process (LD_PRELOAD), else `glibc`."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return "glibc"
    return next((name for name in ("jemalloc", "tcmalloc") if f"lib{name}" in text), "glibc")


def describe() -> str:
    """One line for a node's start-up log."""
    cache = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024 (oneDNN default)")
    line = f"allocator {allocator()}, oneDNN primitive cache capacity {cache}"
    if allocator() == "glibc":
        line += (
            "; under continuous load glibc keeps freed buffers (RSS climbs until the batch is idle): "
            "`make serve` preloads jemalloc (Debian's libjemalloc2) where it is installed"
        )
    return line


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): return the free memory of every malloc arena to the OS. Freed KV
    buffers and logits otherwise stay in the process (glibc raises its mmap threshold after large
    frees, so later large tensors come from arenas that only shrink from the top). False where
    there is no glibc, or another allocator serves malloc (its own decay returns memory)."""
    if allocator() != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


# Share of the machine's memory (or of the cgroup's limit, when lower) a node's KV cache may take when
# its config sets no scheduler.max_kv_mb: the rest is the model, activations and the other nodes.
KV_MEMORY_SHARE = 0.25


def default_kv_budget() -> int:
    """KV cache bytes a node may use by default: KV_MEMORY_SHARE of the memory this process can have
    (physical memory, or the cgroup v2 limit when lower)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return int(total * KV_MEMORY_SHARE)
