"""Constrained decoding: each row with a `response_format` or `tools` holds an llguidance matcher; before a token
is chosen its logits are masked to what the grammar allows, after, the matcher takes the chosen token.

The sampler (graph/engine/sampling.py) calls `GrammarMask.apply` once per step; nothing else in the
engine knows about grammars, so any runtime that decodes through the sampler is constrained too.
End-of-sequence is allowed only where the grammar accepts (llguidance is given the engine's EOS ids),
and only it once the grammar is complete, so a finished row stops with finish_reason "stop".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

import torch

from graph.errors import InvalidRequest
from graph.params import GenerationParams

log = logging.getLogger("graph")
_BITS = torch.arange(32, dtype=torch.int32)


class Grammars:
    """One engine's grammar compiler: the llguidance view of its tokenizer (built on first use, ~1 s)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Collection[int]) -> None:
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._ll: Any = None
        self._lock = threading.Lock()

    def _lltokenizer(self) -> Any:
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                n_vocab = max(self.vocab_size, len(self.tokenizer))
                self._ll = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=n_vocab, eos_token=self.eos_ids)
            return self._ll

    def matchers(self, params: GenerationParams, count: int) -> list[RowGrammar | None]:
        """`count` fresh matchers of `params`' grammar (one per row of a request: response_format or
        tools); Nones when unconstrained."""
        grammar = params.grammar()
        if grammar is None:
            return [None] * count
        from llguidance import LLMatcher

        first = LLMatcher(self._lltokenizer(), grammar, log_level=0)
        if first.is_error():
            name = "tools" if params.tools is not None else "response_format"
            raise InvalidRequest(f"{name}: {first.get_error()}", field=name)
        return [RowGrammar(first if i == 0 else first.deep_copy()) for i in range(count)]


class RowGrammar:
    """One row's matcher."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def bitmask(self) -> torch.Tensor:
        """Allowed tokens as int32 words (bit j of word w: token 32 w + j)."""
        return torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            log.warning("grammar refused token %d: %s", token, self.matcher.get_error())


class GrammarMask:
    """The constrained rows of one batch: masks their logits, advances their matchers."""

    def __init__(self, rows: Sequence[RowGrammar | None]) -> None:
        self.rows = [(i, g) for i, g in enumerate(rows) if g is not None]

    @classmethod
    def of(cls, rows: Sequence[RowGrammar | None]) -> GrammarMask | None:
        return cls(rows) if any(g is not None for g in rows) else None

    def mask(self, logits: torch.Tensor) -> None:
        """Set to -inf, in place, every logit the row's grammar does not allow now."""
        idx = torch.tensor([i for i, _ in self.rows], dtype=torch.long)
        words = torch.stack([g.bitmask() for _, g in self.rows])
        allowed = ((words.unsqueeze(-1) >> _BITS) & 1).bool().flatten(1)
        vocab = logits.shape[-1]
        if allowed.shape[1] < vocab:  # tokens the tokenizer does not have: never allowed
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
        allowed = allowed[:, :vocab]
        logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))

    def advance(self, tokens: Sequence[int]) -> None:
        for i, g in self.rows:
            g.consume(tokens[i])
