"""Prompts kept for reuse: a request whose prompt starts with a kept prompt prefills only the rest.

Each kept prompt is a one-row, unpadded KV cache of its tokens (a runner's `RowCache`), indexed by the
hashes of its token blocks: block i's hash covers the scope, every token of blocks 0..i (a chain, as
vLLM's automatic prefix caching hashes blocks), so a lookup walks the new prompt's blocks and stops at
the first one no kept prompt shares. The scope is the caller's API key: a prompt kept for one key is
never found for another, so one key's prompts cannot speed up (and so reveal themselves to) another's
(the timing side channel vLLM closes with a per-request cache salt). Kept prompts are evicted least
recently used first when the byte budget is full; a hit holds its entry, so an eviction never takes
memory from a request that already matched it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from graph.engine.runners.base import RowCache

BLOCK_TOKENS = 16  # prompts are matched in whole blocks of this many tokens


@dataclass(eq=False)
class Kept:
    """One kept prompt: its scope, its tokens, their cache (one row, columns [0, len(ids)))."""

    scope: str
    ids: tuple[int, ...]
    cache: RowCache
    nbytes: int
    hashes: list[int] = field(default_factory=list)


@dataclass
class Hit:
    """A kept prompt whose first `tokens` tokens begin a new prompt."""

    kept: Kept
    tokens: int


def block_hashes(scope: str, ids: Sequence[int], blocks: int) -> list[int]:
    """The chained hashes of the first `blocks` whole blocks of `ids` under `scope`."""
    out, h = [], hash(("prefix", scope))
    for b in range(blocks):
        h = hash((h, tuple(ids[b * BLOCK_TOKENS : (b + 1) * BLOCK_TOKENS])))
        out.append(h)
    return out


class PrefixCache:
    """Kept prompts within `budget` bytes (0: nothing is kept), least recently used evicted first."""

    def __init__(self, budget: int, bytes_per_token: int) -> None:
        self.budget = budget
        self.bytes_per_token = bytes_per_token
        self.used = 0
        self._kept: OrderedDict[int, Kept] = OrderedDict()  # id(kept) -> kept, least recently used first
        self._index: dict[int, Kept] = {}  # block hash -> the kept prompt it came from (the latest)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._kept)

    def lookup(self, scope: str, ids: Sequence[int]) -> Hit | None:
        """The longest kept prefix of `ids` in `scope`, in whole blocks, leaving at least one token
        to prefill (its logits choose the first new token); None when no block matches."""
        usable = (len(ids) - 1) // BLOCK_TOKENS
        best: Hit | None = None
        for b, h in enumerate(block_hashes(scope, ids, usable)):
            kept = self._index.get(h)
            if kept is None:
                break
            n = (b + 1) * BLOCK_TOKENS
            if kept.scope != scope or kept.ids[:n] != tuple(ids[:n]):  # a hash collision: no match
                break
            best = Hit(kept, n)
        if best is not None:
            self._kept.move_to_end(id(best.kept))
        return best

    def keep(self, scope: str, ids: Sequence[int], cache: RowCache) -> bool:
        """Keep `cache` (one row holding exactly `ids`) for later prompts; False if it is too short
        or too large for the budget. Older kept prompts are evicted to make room."""
        blocks = len(ids) // BLOCK_TOKENS
        nbytes = len(ids) * self.bytes_per_token
        if blocks == 0 or nbytes > self.budget:
            return False
        hashes = block_hashes(scope, ids, blocks)
        same = self._index.get(hashes[-1])
        if same is not None and len(same.ids) >= len(ids) and same.ids[: len(ids)] == tuple(ids):
            self._kept.move_to_end(id(same))  # already kept (as this prompt or a longer one)
            return False
        while self._kept and self.used + nbytes > self.budget:
            self._evict()
        kept = Kept(scope, tuple(ids), cache, nbytes, hashes)
        self._kept[id(kept)] = kept
        self.used += nbytes
        for h in hashes:
            self._index[h] = kept
        return True

    def _evict(self) -> None:
        _, kept = self._kept.popitem(last=False)
        self.used -= kept.nbytes
        self.evictions += 1
        for h in kept.hashes:
            if self._index.get(h) is kept:
                del self._index[h]
