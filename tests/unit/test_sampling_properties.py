"""Property tests of the sampler: every GenerationParams the schema admits is safe in any batch.

Bounds are read from GenerationParams' fields (never copied here), so a widened bound is tested
at once. Extremes (1e-308, subnormals, the upper bounds) come first: Hypothesis tries them early.
"""

from __future__ import annotations

import math
import typing

import annotated_types as at
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from graph.engine.sampling import BatchSampler, RowSampling
from graph.params import GenerationParams

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
VOCABS = st.sampled_from([7, 64, 300])  # 300 > CANDIDATES: top-p rows may have to look wider


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: OpenMP's thread hand-off costs ms per op on a busy 2-core machine, 1 thread us."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bounds(name: str) -> tuple[float, float, bool]:
    """(low, high, low_excluded) of a numeric GenerationParams field, from its metadata."""
    lo, hi, excl = -math.inf, math.inf, False
    field = GenerationParams.model_fields[name]
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):  # Optional[Annotated[int, Field(ge=..., le=...)]]
        for extra in getattr(arg, "__metadata__", ()):
            metadata.extend(getattr(extra, "metadata", ()))
    for m in metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, excl = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi = m.lt
    assert math.isfinite(lo) and math.isfinite(hi), f"{name} has no bounds"
    return lo, hi, excl


def floats_of(name: str) -> st.SearchStrategy[float]:
    lo, hi, excl = bounds(name)
    extremes = [v for v in (lo, hi, 5e-324, 1e-308, 1e-45, 1e-30, 1.0) if (lo < v if excl else lo <= v) and v <= hi]
    return st.one_of(
        st.sampled_from(extremes),
        st.floats(min_value=lo, max_value=hi, exclude_min=excl, allow_nan=False, allow_subnormal=True),
    )


def ints_of(name: str) -> st.SearchStrategy[int]:
    lo, hi, _ = bounds(name)
    return st.one_of(st.sampled_from([int(lo), int(hi)]), st.integers(int(lo), int(hi)))


@st.composite
def params(draw: st.DrawFn) -> GenerationParams:
    data = dict(
        do_sample=draw(st.booleans()),
        temperature=draw(floats_of("temperature")),
        top_k=draw(ints_of("top_k")),
        top_p=draw(floats_of("top_p")),
        repetition_penalty=draw(floats_of("repetition_penalty")),
        seed=draw(st.none() | ints_of("seed")),
        logprobs=draw(st.booleans()),
        min_p=draw(floats_of("min_p")),
        frequency_penalty=draw(st.sampled_from([0.0, 0.0]) | floats_of("frequency_penalty")),
        presence_penalty=draw(st.sampled_from([0.0, 0.0]) | floats_of("presence_penalty")),
        logit_bias=draw(st.dictionaries(st.integers(0, 6), st.sampled_from([-100.0, 100.0, 0.5]), max_size=3)),
    )
    if data["logprobs"]:
        data["top_logprobs"] = draw(ints_of("top_logprobs"))
    try:
        return GenerationParams(**data)
    except ValidationError:  # a cross-field rule (e.g. temperature 0 with do_sample)
        assume(False)
        raise


@st.composite
def logits_rows(draw: st.DrawFn, vocab: int) -> torch.Tensor:
    """One row of model scores: ordinary, huge, flat, or with -inf entries (masked tokens)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1.0, 30.0, 1e4, 1e30, 0.0]))
    row = torch.randn(vocab, generator=gen) * scale
    if draw(st.booleans()):
        masked = torch.rand(vocab, generator=gen) < 0.5
        masked[int(row.argmax())] = False  # a model never masks every token
        row[masked] = float("-inf")
    return row


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[RowSampling], torch.Tensor]:
    vocab = draw(VOCABS)
    n = draw(st.integers(1, 5))
    rows, scores = [], []
    for _ in range(n):
        p = draw(params())
        gen = torch.Generator().manual_seed(p.seed) if p.do_sample and p.seed is not None else None
        seen = draw(st.lists(st.integers(0, vocab - 1), max_size=12))
        generated = seen[draw(st.integers(0, len(seen))) :]  # the completion: a tail of what was seen
        rows.append(RowSampling(p, gen, seen, generated=generated))
        scores.append(draw(logits_rows(vocab)))
    return rows, torch.stack(scores)


def penalised(
    row: RowSampling, logits: torch.Tensor, seen: list[int] | None = None, generated: list[int] | None = None
) -> torch.Tensor:
    """The row's scores after logit_bias, frequency and presence penalties and the repetition penalty
    (float64 reference, saturating like the sampler)."""
    out = logits.double().clone()
    p = row.params
    for token, bias in p.logit_bias.items():
        if token < out.shape[0]:
            out[token] += bias
    done = list(row.generated if generated is None else generated)
    for token in set(done):
        out[token] -= done.count(token) * p.frequency_penalty + p.presence_penalty
    ids = torch.tensor(sorted(set(row.seen_ids if seen is None else seen)), dtype=torch.long)
    if ids.numel():
        pen = max(row.params.repetition_penalty, torch.finfo(torch.float32).tiny)
        s = out[ids]
        out[ids] = torch.where(s < 0, s * pen, s / pen)
    return out.clamp(-torch.finfo(torch.float32).max, torch.finfo(torch.float32).max)


@SETTINGS
@given(batches(), st.integers(1, 3))
def test_any_admitted_params_give_valid_tokens(batch, steps) -> None:
    rows, logits = batch
    vocab = logits.shape[1]
    sampler = BatchSampler(rows, vocab)
    seen = [list(r.seen_ids) for r in rows]
    generated = [list(r.generated) for r in rows]
    for _ in range(steps):
        out = sampler.step(logits.clone())
        assert out.failed == []
        assert len(out.tokens) == len(rows)
        for i, (row, token) in enumerate(zip(rows, out.tokens)):
            assert 0 <= token < vocab
            scores = penalised(row, logits[i], seen[i], generated[i])
            seen[i].append(token)
            generated[i].append(token)
            # Never a token the model masked out (-inf), whatever the parameters.
            assert scores[token] > -math.inf or bool((scores == -math.inf).all())
            if not row.params.do_sample or row.params.top_k == 1:
                # the best score, up to float32 rounding (the sampler adds biases and penalties in float32:
                # a float64 -1e-268 is its -0.0, a tie with 0)
                best = scores.max()
                assert scores[token] >= best - 1e-6 * max(1.0, abs(float(best)))
            elif row.params.min_p > 0 and scores.max() < math.inf:  # tokens under min_p x the best are out
                t = max(row.params.temperature, torch.finfo(torch.float32).tiny)
                best = scores.max()
                assert scores[token] >= best + t * math.log(row.params.min_p) - 1e-3 * max(1.0, abs(float(best)))
            elif row.params.top_k:
                kth = scores.topk(min(row.params.top_k, vocab)).values[-1]
                assert scores[token] >= kth
            if row.params.logprobs:
                chosen, ids, vals = out.logprobs[i]
                assert not math.isnan(chosen) and len(ids) == len(vals) == min(vocab, row.params.top_logprobs)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.data(), st.sampled_from(["temperature", "top_p"]), st.sampled_from([5e-324, 1e-308, 1e-45]))
def test_tiny_temperature_or_top_p_is_greedy(data, field: str, value: float) -> None:
    lo, _, excl = bounds(field)
    assume(lo < value if excl else lo <= value)
    vocab = data.draw(VOCABS)
    logits = data.draw(logits_rows(vocab))
    p = GenerationParams(do_sample=True, top_k=data.draw(ints_of("top_k")), **{field: value})
    row = RowSampling(p, None, data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=5)))
    out = BatchSampler([row], vocab).step(logits[None].clone())
    scores = penalised(row, logits)
    assert scores[out.tokens[0]] == scores.max()


@pytest.mark.parametrize("field, value", [("top_p", 1e-308), ("repetition_penalty", 1e-308), ("temperature", 1e-308)])
def test_issue_13_poison_values(field: str, value: float) -> None:
    """The values from issue #13 that crashed the decode step, next to an ordinary row."""
    poison = GenerationParams(do_sample=True, **{field: value})
    rows = [RowSampling(poison, None, [1, 2, 3]), RowSampling(GenerationParams(), None, [4])]
    for vocab in (64, 300):
        out = BatchSampler(rows, vocab).step(torch.randn(2, vocab))
        assert out.failed == [] and all(0 <= t < vocab for t in out.tokens)


def test_non_finite_model_scores_fail_that_row_only() -> None:
    for p in (GenerationParams(), GenerationParams(do_sample=True), GenerationParams(do_sample=True, top_p=0.9)):
        rows = [RowSampling(p, None, [1]) for _ in range(3)]
        logits = torch.randn(3, 300)
        logits[1] = float("nan")
        out = BatchSampler(rows, 300).step(logits)
        assert out.failed == [1], p
        assert all(0 <= t < 300 for t in out.tokens)
