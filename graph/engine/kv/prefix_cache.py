"""Prompts kept for reuse: a request whose prompt starts with a kept prompt prefills only the rest.

Kept are prompts once prefilled, and the whole sequence of a finished row (its prompt and its reply's
tokens), so a chat's next turn (history, reply, new message) prefills only the new message. Each is
kept in whole blocks, as its runner's `KeptRow` (a one-row cache, or llama.cpp's sequence state in
RAM), indexed by the hashes of its token blocks: block i's hash covers the scope, every token of
blocks 0..i (a chain, as vLLM's automatic prefix caching hashes blocks), so a lookup walks the new
prompt's blocks and stops at the first one no kept sequence shares. The scope is the caller's API
key: a prompt kept for one key is never found for another, so one key's prompts cannot speed up (and
so reveal themselves to) another's (the timing side channel vLLM closes with a per-request cache
salt). Kept sequences are evicted least recently used first when the byte budget is full; a hit holds
its entry, so an eviction never takes memory from a request that already matched it. A kept sequence
that a newer one continues (a chat's last prompt, once its reply is kept) is dropped: the newer one
serves every prompt the older one did.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from graph.engine.runners.base import KeptRow

BLOCK_TOKENS = 16  # prompts are matched in whole blocks of this many tokens


@dataclass(eq=False)
class Kept:
    """One kept sequence: its scope, its tokens (whole blocks), their cache."""

    scope: str
    ids: tuple[int, ...]
    cache: KeptRow
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

    def wants(self, scope: str, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` (whole blocks) are worth keeping: 0 when that is no block,
        above the budget, or already kept in `scope` (as these tokens or the start of a longer sequence)."""
        blocks = len(ids) // BLOCK_TOKENS
        n = blocks * BLOCK_TOKENS
        if blocks == 0 or n * self.bytes_per_token > self.budget:
            return 0
        same = self._index.get(block_hashes(scope, ids, blocks)[-1])
        if same is not None and same.scope == scope and same.ids[:n] == tuple(ids[:n]):
            self._kept.move_to_end(id(same))
            return 0
        return n

    def keep(self, scope: str, ids: Sequence[int], cache: KeptRow) -> bool:
        """Keep `cache` (a kept row holding exactly `ids`, whole blocks: `wants`) for later prompts; False
        if it does not fit the budget. Kept sequences it continues are dropped; the least recently
        used others are evicted to make room."""
        blocks = len(ids) // BLOCK_TOKENS
        if blocks == 0 or len(ids) % BLOCK_TOKENS or cache.nbytes > self.budget:
            return False
        hashes = block_hashes(scope, ids, blocks)
        seen: set[int] = set()
        for h in hashes:  # older sequences this one continues: every prompt they serve, it serves
            older = self._index.get(h)
            if older is None or id(older) in seen:
                continue
            seen.add(id(older))
            if older.scope == scope and tuple(ids[: len(older.ids)]) == older.ids:
                self._drop(older)
        while self._kept and self.used + cache.nbytes > self.budget:
            self._evict()
        kept = Kept(scope, tuple(ids), cache, cache.nbytes, hashes)
        self._kept[id(kept)] = kept
        self.used += kept.nbytes
        for h in hashes:
            self._index[h] = kept
        return True

    def _evict(self) -> None:
        _, kept = next(iter(self._kept.items()))
        self._drop(kept)
        self.evictions += 1

    def _drop(self, kept: Kept) -> None:
        del self._kept[id(kept)]
        self.used -= kept.nbytes
        for h in kept.hashes:
            if self._index.get(h) is kept:
                del self._index[h]
