"""Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of a row's last n tokens.

Text that quotes, summarizes or edits its prompt repeats runs of it; so do lists, code and JSON. For
each decoding row, the longest suffix of its tokens so far (prompt + completion; `max_n` down to
`min_n` tokens) that occurred earlier in them is looked up, and the (up to) `k` tokens that followed
that occurrence are proposed as the row's next tokens (vLLM's `NgramProposer`, transformers'
`prompt_lookup_num_tokens`, llama.cpp's `lookup` example). The model then verifies them in one
forward (graph/engine/spec/verify.py): a wrong draft costs a few extra positions in one step, never
a wrong token.

The index is incremental: each n-gram is recorded once, with where its latest occurrence ended,
so a step costs O(max_n) dictionary lookups whatever the row's length.

With `adaptive`, the draft length follows the row's luck (transformers' "heuristic" schedule for
assistant tokens): two more after a step that accepted every draft, one fewer (at least one) after a
step that rejected one, so text that does not repeat costs few extra positions.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramDrafter:
    """One row's n-gram index and draft proposals."""

    __slots__ = ("max_n", "min_n", "k", "adaptive", "budget", "_ends", "_indexed")

    def __init__(self, max_n: int, k: int, min_n: int = 1, adaptive: bool = False) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n, self.k = max_n, min_n, k
        self.adaptive = adaptive
        self.budget = k  # draft tokens the next proposal may hold (adaptive)
        # n -> {n-gram: index just past its latest occurrence that is not the current suffix}
        self._ends: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        self._indexed = 0  # n-grams ending at or before this index are recorded

    def propose(self, tokens: Sequence[int], k: int | None = None) -> list[int]:
        """Up to `k` (default self.k) draft tokens to follow `tokens` (the row's prompt and completion
        so far; a later call must pass the same list grown at its end). Empty when no suffix of
        `min_n` tokens or more occurred earlier."""
        k = self.k if k is None else k
        if self.adaptive:
            k = min(k, self.budget)
        size = len(tokens)
        # Record the n-grams ending before the last token (the suffix itself must not match itself).
        for end in range(max(self._indexed + 1, self.min_n), size):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._ends[n][tuple(tokens[end - n : end])] = end
        self._indexed = max(self._indexed, size - 1)
        if k <= 0:
            return []
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            end = self._ends[n].get(tuple(tokens[size - n :]))
            if end is not None:
                return list(tokens[end : min(end + k, size)])
        return []

    def update(self, proposed: int, accepted: int) -> None:
        """After a step that verified `proposed` drafts and accepted `accepted` of them (adaptive only)."""
        if self.adaptive and proposed:
            self.budget = min(self.k, self.budget + 2) if accepted == proposed else max(1, self.budget - 1)
