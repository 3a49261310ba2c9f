"""Speculative decoding verified inside the batch: which rows draft, and how many of their drafts the model accepts.

One decode step feeds each drafting row its last token followed by its draft tokens (the runner's
`decode_drafts`: several positions of the row's sequence in the same forward as every other row's
one token), so the step yields logits at each of those positions. Position 0 is sampled with the
rest of the batch, as without speculation. Then, position by position, a row whose token so far
equals its next draft token samples its next position too: that token was computed on exactly the
tokens the row now has, so it is the token non-speculative decoding would choose there. The first
disagreement (or the row finishing: EOS, a stop string, max_new_tokens, its deadline) ends the row's
run; the row then holds 1 + (accepted drafts) new tokens, and the cache positions past them are
dropped (`RowCache.truncate_row`), so the next step's position is right.

Which rows draft: greedy rows (do_sample false). Each extra position is sampled by a sampler built
from the row's tokens so far (graph/engine/sampling.py), so logit_bias, repetition, frequency and
presence penalties, logprobs and grammars (structured output, tools) apply at every position as
they would one step at a time. Sampled rows do not draft: accepting a draft with probability p(d)
and resampling from the rest would keep their distribution but not their seeded text (a seed gives
the same text with speculation on or off only if every token still takes one draw of the row's
generator), so they decode one token per step, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from graph.engine.sampling import BatchSampler, StepOutput
from graph.engine.spec.ngram import NgramDrafter


class DraftRow(Protocol):
    """What speculation reads and keeps on a scheduler row (graph/engine/scheduler.py: Row)."""

    tokens: list[int]
    finished: bool
    drafter: NgramDrafter | None
    grammar: Any
    req: Any

    def sampling(self) -> Any: ...


@dataclass(frozen=True)
class Speculation:
    """Prompt-lookup speculation of a node: n-grams of `min_n`..`max_n` tokens, `draft_tokens` per
    row and step, only while the batch holds at most `max_rows` rows (a larger batch is compute
    bound: the extra positions cost about what they save); with `adaptive`, each row's draft length
    follows its acceptance (graph/engine/spec/ngram.py)."""

    max_n: int = 3
    min_n: int = 1
    draft_tokens: int = 8
    max_rows: int = 1
    adaptive: bool = True

    def drafts(self, rows: Sequence[DraftRow]) -> list[list[int]] | None:
        """Draft tokens per row (empty for rows that do not draft), or None when no row drafts."""
        if len(rows) > self.max_rows:
            return None
        out: list[list[int]] = []
        for row in rows:
            params = row.req.params
            k = min(self.draft_tokens, params.max_new_tokens - len(row.tokens) - 1)
            if params.do_sample or row.finished or k <= 0 or not row.tokens:
                out.append([])
                continue
            if row.drafter is None:
                row.drafter = NgramDrafter(self.max_n, self.draft_tokens, self.min_n, self.adaptive)
            out.append(row.drafter.propose([*row.req.prompt_ids, *row.tokens], k))
        return out if any(out) else None

    def verify(
        self,
        rows: Sequence[DraftRow],
        drafts: Sequence[Sequence[int]],
        logits: torch.Tensor,
        starts: Sequence[int],
        choose: Callable[[BatchSampler, list[Any], torch.Tensor], StepOutput],
        accept: Callable[[Any, int, Any], None],
    ) -> list[int]:
        """After position 0 of every row was sampled and accepted: the drafts each row's model agrees
        with, accepted in order (`accept(row, token, logprob)`: the scheduler's bookkeeping, stops
        included). `logits` [positions, vocab] hold row i's positions from `starts[i]`. Returns the
        number of accepted draft tokens per row."""
        accepted = [0] * len(rows)
        live = [i for i, d in enumerate(drafts) if d and not rows[i].finished and rows[i].tokens[-1] == d[0]]
        j = 1
        while live:
            chosen: dict[int, tuple[int, Any]] = {}
            # Rows with transforms, logprobs or a grammar: their sampler, built on their tokens so far.
            full = [i for i in live if not _plain(rows[i])]
            if full:
                batch = [rows[i] for i in full]
                index = torch.tensor([starts[i] + j for i in full], dtype=torch.long)
                step = choose(BatchSampler([r.sampling() for r in batch], logits.shape[-1]), batch, logits[index])
                for n, i in enumerate(full):
                    if not rows[i].finished:  # else its sampling failed: the scheduler failed it alone
                        chosen[i] = (step.tokens[n], step.logprobs.get(n))
            # Plain greedy rows: the sampler's own argmax, without building one per position.
            plain = [i for i in live if _plain(rows[i])]
            if plain:
                best = logits[torch.tensor([starts[i] + j for i in plain], dtype=torch.long)].max(dim=-1)
                nan = best.values.isnan().tolist()
                for n, i in enumerate(plain):
                    if not nan[n]:  # else the run ends here: the next step's sampler reports the row
                        chosen[i] = (int(best.indices[n]), None)
            nxt = []
            for i in live:
                if i not in chosen:
                    continue
                token, lp = chosen[i]
                row = rows[i]
                accept(row, token, lp)
                accepted[i] += 1
                if not row.finished and j < len(drafts[i]) and token == drafts[i][j]:
                    nxt.append(i)
            live, j = nxt, j + 1
        for row, d, n in zip(rows, drafts, accepted):
            if d and row.drafter is not None:
                row.drafter.update(len(d), n)
        return accepted


def _plain(row: DraftRow) -> bool:
    """A greedy row without logit transforms, logprobs or grammar: its token is the logits' argmax."""
    p = row.req.params
    return row.grammar is None and not (
        p.logprobs or p.logit_bias or p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
    )
