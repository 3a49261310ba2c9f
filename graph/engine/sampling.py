"""Per-row ("heterogeneous") logits processing and token choice for one decode batch.

Every row of a batch may carry different parameters. A `BatchSampler` turns them into tensors
once per batch composition and applies, vectorised over rows, only what some row needs:
logit_bias, repetition penalty, frequency and presence penalties (OpenAI's: on the completion's
tokens, `count * frequency + (count > 0) * presence` subtracted from the logit), the grammar of
response_format or tools, then for sampling rows min_p, temperature, top-k and top-p, then greedy
argmax or a draw. Semantics follow transformers' processors (penalty, then temperature, top-k,
top-p on the renormalised top-k distribution; min_p as vLLM: tokens under min_p times the best
token's probability after temperature are dropped).

Speed: full sorts and `torch.multinomial` over a 49k-262k vocabulary cost 100-1500 ms per step for
64 rows on a 2-core CPU, more than the model. So top-k / top-p work on the `topk` candidates only
(top-p rows without top-k look at the best CANDIDATES tokens first and widen only when those do not
reach the requested mass, which keeps the result exact), and a draw is one uniform number per row
turned into a token through the cumulative distribution. Seeded rows take that number from their
own `torch.Generator`, so their text does not depend on what else shares the batch.

Robustness: every value GenerationParams admits is safe, extremes included (tests/unit/
test_sampling_properties.py checks this with Hypothesis over the schema's bounds). Penalties and
temperatures are clamped to float32's smallest normal number (1e-308 would round to 0 and divide
by zero), temperature scales logits after subtracting the row's maximum (so a tiny temperature
tends to greedy instead of overflowing to inf - inf), penalised logits are clamped to finite
values, and top-p always keeps the best token (transformers' min_tokens_to_keep=1). A row whose
scores are still no distribution (NaN or inf from the model itself) is reported in
`StepOutput.failed`, with a valid placeholder token, so the scheduler can fail that row alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from graph.engine.grammar import GrammarMask, RowGrammar
from graph.params import GenerationParams

CANDIDATES = 256  # first look for top-p's nucleus among this many best tokens
_F32 = torch.finfo(torch.float32)


@dataclass
class RowSampling:
    """What the sampler needs to know about one row."""

    params: GenerationParams
    generator: torch.Generator | None
    seen_ids: Sequence[int] = field(default_factory=list)  # prompt + completion so far (for the penalty)
    grammar: RowGrammar | None = None  # response_format's or tools' matcher (graph/engine/grammar.py)
    generated: Sequence[int] = ()  # the completion so far (for frequency and presence penalties)


@dataclass
class StepOutput:
    """The chosen token per row and, for rows that asked, log-probabilities."""

    tokens: list[int]
    # row -> (logprob of the chosen token, top ids, top logprobs)
    logprobs: dict[int, tuple[float, list[int], list[float]]]
    # rows whose scores were not a distribution (non-finite model output); their token is a placeholder
    failed: list[int] = field(default_factory=list)


class BatchSampler:
    """Processors for the rows of one batch, built only for the parameters some row uses."""

    def __init__(self, rows: Sequence[RowSampling], vocab_size: int) -> None:
        n = self.n_rows = len(rows)
        self.vocab_size = vocab_size
        params = [r.params for r in rows]
        self.grammar = GrammarMask.of([r.grammar for r in rows])  # structured output rows, if any

        # Repetition penalty (transformers' definition): the logits of tokens already in the prompt
        # or completion are divided by the penalty when positive, multiplied by it when negative.
        # Kept as a [rows, seen] id matrix (gather/scatter), not a dense [rows, vocab] mask.
        self.penalty: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        if any(p.repetition_penalty != 1.0 for p in params):
            penalty = torch.tensor([[p.repetition_penalty] for p in params], dtype=torch.float32)
            penalty.clamp_(min=_F32.tiny)  # 1e-308 rounds to 0 in float32: no division by zero
            # A row with nothing seen yet gets 1.0 for one step: its padding (id 0) is no seen token.
            empty = torch.tensor([[not len(r.seen_ids)] for r in rows])
            self.penalty = torch.where(empty, torch.ones_like(penalty), penalty)
            self._penalty_later = penalty if bool(empty.any()) else None
            self._empty = empty[:, 0]
            width = max(1, max(len(r.seen_ids) for r in rows))
            seen = torch.zeros(n, width, dtype=torch.long)
            for i, r in enumerate(rows):
                if r.params.repetition_penalty != 1.0 and len(r.seen_ids):
                    ids = torch.tensor(list(r.seen_ids), dtype=torch.long).clamp_(0, vocab_size - 1)
                    seen[i, : len(ids)] = ids
                    seen[i, len(ids) :] = ids[0]  # padding repeats a seen id: no effect
            self.seen = seen

        # logit_bias: (row, token, bias) triples added to the logits each step.
        self.bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if any(p.logit_bias for p in params):
            triples = [(i, t, b) for i, p in enumerate(params) for t, b in p.logit_bias.items() if t < vocab_size]
            if triples:
                r, t, b = zip(*triples)
                self.bias = (torch.tensor(r), torch.tensor(t), torch.tensor(b, dtype=torch.float32))

        # Frequency and presence penalties: the completion's ids per row [rows, width], with weights.
        self.freq: torch.Tensor | None = None
        if any(p.frequency_penalty or p.presence_penalty for p in params):
            self.freq = torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32)
            self.presence = torch.tensor([p.presence_penalty for p in params], dtype=torch.float32)
            self.any_presence = any(p.presence_penalty for p in params)
            width = max(1, max(len(r.generated) for r in rows))
            self.gen = torch.zeros(n, width, dtype=torch.long)
            self.gen_valid = torch.zeros(n, width, dtype=torch.bool)
            for i, r in enumerate(rows):
                if len(r.generated):
                    self.gen[i, : len(r.generated)] = torch.tensor(list(r.generated)).clamp_(0, vocab_size - 1)
                    self.gen_valid[i, : len(r.generated)] = True

        sample_rows = [i for i, p in enumerate(params) if p.do_sample]
        self.greedy = len(sample_rows) < n
        self.all_sample = len(sample_rows) == n
        self.sample_idx = torch.tensor(sample_rows, dtype=torch.long)
        sp = [params[i] for i in sample_rows]
        gens = [rows[i].generator for i in sample_rows]
        # Draws: unseeded rows share the global generator (one call), seeded rows use their own.
        self.unseeded = torch.tensor([j for j, g in enumerate(gens) if g is None], dtype=torch.long)
        self.seeded = [(j, g) for j, g in enumerate(gens) if g is not None]
        temps = torch.tensor([[p.temperature] for p in sp], dtype=torch.float32).clamp_(min=_F32.tiny)

        # Rows that sample from the whole distribution vs rows truncated by top-k and/or top-p.
        full = [j for j, p in enumerate(sp) if p.top_k == 0 and p.top_p >= 1.0]
        trunc = [j for j, p in enumerate(sp) if not (p.top_k == 0 and p.top_p >= 1.0)]
        # min_p (sampling rows that set it): drop logits below best + temperature * log(min_p).
        min_p = [(j, p.min_p, p.temperature) for j, p in enumerate(sp) if p.min_p > 0.0]
        self.min_p: tuple[torch.Tensor, torch.Tensor] | None = None
        if min_p:
            j, m, t = zip(*min_p)
            temps_mp = torch.tensor(t, dtype=torch.float64).clamp(min=_F32.tiny)
            floor = torch.tensor(m, dtype=torch.float64).log() * temps_mp
            self.min_p = (torch.tensor(j, dtype=torch.long), floor.clamp(min=-_F32.max).float())
        self.full = torch.tensor(full, dtype=torch.long)
        self.full_temp = temps[self.full] if any(sp[j].temperature != 1.0 for j in full) else None
        self.trunc = torch.tensor(trunc, dtype=torch.long)
        if trunc:
            tp = [sp[j] for j in trunc]
            self.trunc_temp = temps[self.trunc] if any(p.temperature != 1.0 for p in tp) else None
            self.top_k = torch.tensor([min(p.top_k, vocab_size) for p in tp], dtype=torch.long)
            # 1.0 = off: a mass the cumulative sum never exceeds, rounding included.
            self.top_p = torch.tensor([[p.top_p if p.top_p < 1.0 else 2.0] for p in tp])
            self.nucleus_only = self.top_k == 0  # top-p over the whole vocabulary
            k_max = max(p.top_k for p in tp)
            self.k = min(vocab_size, max(k_max, CANDIDATES if bool(self.nucleus_only.any()) else 0))

        # Rows that need nothing but the argmax of the model's scores (greedy; no logprobs, bias,
        # penalties or grammar): the scheduler takes their token from the runner's decode_split, and
        # samples the others (`rest_rows`) with a sampler of their own, made once (`rest`): with the
        # split step it alone keeps their state (seen tokens, penalties, grammar).
        self.rows = list(rows)
        self.plain_rows = [i for i, r in enumerate(rows) if _plain(r)]
        plain = set(self.plain_rows)
        self.rest_rows = [i for i in range(n) if i not in plain]
        self.rest: BatchSampler | None = None

        lp_rows = [i for i, p in enumerate(params) if p.logprobs]
        self.lp_idx = torch.tensor(lp_rows, dtype=torch.long) if lp_rows else None
        self.lp_rows = lp_rows
        self.top_n = {i: params[i].top_logprobs for i in lp_rows}
        self.top_n_max = min(vocab_size, max(self.top_n.values(), default=0))

    def step(self, logits: torch.Tensor) -> StepOutput:
        """Choose one token per row from `logits` [rows, vocab] (float32; modified in place)."""
        # OpenAI-style log-probabilities: the model's own distribution, i.e. the log-softmax of the
        # raw logits, before repetition penalty, temperature, top-k and top-p.
        lp = logits[self.lp_idx].log_softmax(dim=-1) if self.lp_idx is not None else None
        original = None
        added = self._additive()  # logit_bias, frequency and presence: undone if this step fails
        if added is not None:
            logits.index_put_(added[:2], added[2], accumulate=True)
        if self.penalty is not None and self.seen is not None:  # a penalty always comes with `seen`
            original = logits.gather(1, self.seen)
            scores = torch.where(original < 0, original * self.penalty, original / self.penalty)
            logits.scatter_(1, self.seen, scores.clamp_(min=-_F32.max, max=_F32.max))
        try:
            if self.grammar is None:
                return self._choose(logits, lp)
            self.grammar.mask(logits)  # only what each row's grammar allows now, EOS where it accepts
            out = self._choose(logits, lp)
            self.grammar.advance(out.tokens)
            return out
        except Exception:
            if (
                original is not None and self.seen is not None
            ):  # the caller may retry row by row on the model's own scores
                logits.scatter_(1, self.seen, original)
            if added is not None:
                logits.index_put_(added[:2], -added[2], accumulate=True)
            raise

    def _additive(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(rows, token ids, values) to add to the logits: logit_bias, then minus the frequency and
        presence penalties of each completion token (accumulated: a token seen 3 times, 3 times)."""
        parts = [self.bias] if self.bias is not None else []
        if self.freq is not None:
            rows = torch.arange(self.n_rows).unsqueeze(1).expand_as(self.gen)
            value = -self.freq.unsqueeze(1) * self.gen_valid
            if self.any_presence:  # presence: once per distinct token, at its first valid entry
                key = self.gen * 2 + (~self.gen_valid)  # valid entries sort first among equal ids
                key, order = key.sort(dim=1)
                ids = key // 2
                first = torch.ones_like(ids, dtype=torch.bool)
                first[:, 1:] = ids[:, 1:] != ids[:, :-1]
                first &= self.gen_valid.gather(1, order)
                presence = torch.zeros_like(value).scatter_(1, order, first.float())
                value = value - self.presence.unsqueeze(1) * presence
            parts.append((rows.flatten(), self.gen.flatten(), value.flatten()))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]))

    def _choose(self, logits: torch.Tensor, lp: torch.Tensor | None) -> StepOutput:
        bad = torch.zeros(self.n_rows, dtype=torch.bool)
        if self.greedy:
            best = logits.max(dim=-1)
            tokens, bad = best.indices, best.values.isnan()
        else:
            tokens = torch.empty(self.n_rows, dtype=torch.long)
        if self.sample_idx.numel():
            chosen, failed = self._sample(logits if self.all_sample else logits[self.sample_idx])
            if self.all_sample:
                tokens, bad = chosen, failed
            else:
                tokens[self.sample_idx] = chosen
                bad[self.sample_idx] = failed
        tokens.clamp_(0, self.vocab_size - 1)  # a failed row's placeholder must still be a valid id
        if self.freq is not None:
            self.gen = torch.cat([self.gen, tokens.unsqueeze(1)], dim=1)
            self.gen_valid = torch.cat([self.gen_valid, torch.ones(self.n_rows, 1, dtype=torch.bool)], dim=1)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, tokens.unsqueeze(1)], dim=1)
            if self._penalty_later is not None:  # the rows that had seen nothing: their padding
                self.seen[self._empty] = tokens[self._empty].unsqueeze(1)  # becomes their first token
                self.penalty, self._penalty_later = self._penalty_later, None
        failed_rows = bad.nonzero().squeeze(1).tolist() if bool(bad.any()) else []
        return StepOutput(tokens=tokens.tolist(), logprobs=self._logprobs(lp, tokens), failed=failed_rows)

    # -- sampling ------------------------------------------------------------------------------------
    def _uniforms(self) -> torch.Tensor:
        u = torch.empty(self.sample_idx.numel())
        if self.unseeded.numel():
            u[self.unseeded] = torch.rand(self.unseeded.numel())
        for j, gen in self.seeded:
            u[j] = torch.rand((), generator=gen)
        return u

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of the sampling rows and which of them had no usable distribution."""
        u = self._uniforms()
        if self.min_p is not None:
            idx, floor = self.min_p
            sub = logits[idx]
            low = sub < sub.max(dim=-1, keepdim=True).values + floor.unsqueeze(1)
            logits[idx] = sub.masked_fill(low, float("-inf"))
        out = torch.empty(logits.shape[0], dtype=torch.long)
        bad = torch.zeros(logits.shape[0], dtype=torch.bool)
        if self.full.numel():
            sub = logits if self.full.numel() == logits.shape[0] else logits[self.full]
            if self.full_temp is not None:
                sub = _scale(sub, self.full_temp)
            out[self.full], bad[self.full] = _draw(sub.softmax(dim=-1), u[self.full])
        if self.trunc.numel():
            sub = logits if self.trunc.numel() == logits.shape[0] else logits[self.trunc]
            out[self.trunc], bad[self.trunc] = self._sample_truncated(sub, u[self.trunc])
        return out, bad

    def _sample_truncated(self, logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.trunc_temp is not None:
            logits = _scale(logits, self.trunc_temp)
        k = self.k
        weights, ids, short = _truncate(logits, k, self.top_k, self.top_p, self.nucleus_only)
        pick, bad = _draw(weights, u)
        out = ids.gather(1, pick.unsqueeze(1)).squeeze(1)
        while bool(short.any()):
            # The nucleus of these rows is wider than their best k tokens: look wider, for them only.
            idx = short.nonzero().squeeze(1)
            k = min(self.vocab_size, k * 8)
            weights, ids, still = _truncate(logits[idx], k, self.top_k[idx], self.top_p[idx], self.nucleus_only[idx])
            pick, bad[idx] = _draw(weights, u[idx])
            out[idx] = ids.gather(1, pick.unsqueeze(1)).squeeze(1)
            short = torch.zeros_like(short)
            short[idx] = still
        return out, bad

    # -- log-probabilities ---------------------------------------------------------------------------
    def _logprobs(
        self, lp: torch.Tensor | None, tokens: torch.Tensor
    ) -> dict[int, tuple[float, list[int], list[float]]]:
        if lp is None or self.lp_idx is None:
            return {}
        chosen = lp.gather(1, tokens[self.lp_idx].unsqueeze(1)).squeeze(1).tolist()
        if self.top_n_max:
            top = lp.topk(self.top_n_max, dim=-1)
            top_vals, top_ids = top.values.tolist(), top.indices.tolist()
        out = {}
        for j, row in enumerate(self.lp_rows):
            n = self.top_n[row]
            out[row] = (chosen[j], top_ids[j][:n], top_vals[j][:n]) if n else (chosen[j], [], [])
        return out


def _plain(row: RowSampling) -> bool:
    """Greedy with nothing that changes or reports the scores: its token is the argmax of the model's."""
    p = row.params
    return (
        not p.do_sample
        and not p.logprobs
        and p.repetition_penalty == 1.0
        and not p.logit_bias
        and not p.frequency_penalty
        and not p.presence_penalty
        and row.grammar is None
    )


def _truncate(
    logits: torch.Tensor, k: int, top_k: torch.Tensor, top_p: torch.Tensor, nucleus_only: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights [rows, k] of the best k tokens (ids [rows, k]) after top-k and top-p, and which
    nucleus-only rows need more than k tokens to reach top_p."""
    values, ids = logits.topk(k, dim=-1)  # sorted, best first
    limit = torch.where(top_k > 0, top_k, torch.full_like(top_k, k))
    keep = torch.arange(k)[None, :] < limit[:, None]
    # Probabilities: renormalised over the top-k for top-k rows (as transformers' TopP after TopK);
    # over the whole vocabulary for nucleus-only rows (their candidates are its best tokens).
    norm = torch.where(keep, values, torch.full_like(values, float("-inf"))).logsumexp(dim=-1)
    if bool(nucleus_only.any()):
        if bool(nucleus_only.all()):
            norm = logits.logsumexp(dim=-1)
        else:
            idx = nucleus_only.nonzero().squeeze(1)
            norm[idx] = logits[idx].logsumexp(dim=-1)
    probs = (values - norm[:, None]).exp() * keep
    cum = probs.cumsum(dim=-1)
    # A token stays when the tokens ranked above it hold less than top_p of the mass; the best
    # token always stays (a top_p below its probability, even 1e-308, means greedy, not nothing).
    keep &= (cum - probs) < top_p
    keep[:, 0] = True
    short = nucleus_only & (cum[:, -1] < top_p[:, 0]) & (k < logits.shape[-1])
    return probs * keep, ids, short


def _scale(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits / temperature, shifted so each row's best logit is 0 first (softmax is unchanged):
    with a tiny temperature the others go to -inf and the best stays, instead of inf - inf = NaN."""
    return (logits - logits.max(dim=-1, keepdim=True).values) / temperature


def _draw(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index per row drawn with probability proportional to `weights` [rows, n] (>= 0), using the
    uniforms `u` [rows] in [0, 1): the inverse of the cumulative distribution. Also which rows had
    no distribution (total weight 0, NaN or inf); their index is 0, a valid placeholder."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Strictly below the total, so rounding can never select a zero-weight tail entry.
    target = torch.minimum(u.unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    index = torch.searchsorted(cdf, target, right=True).squeeze(1)
    bad = ~((total[:, 0] > 0) & total[:, 0].isfinite())
    if bool(bad.any()):
        index = torch.where(bad, torch.zeros_like(index), index)
    return index.clamp_(max=weights.shape[-1] - 1), bad
