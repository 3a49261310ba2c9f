"""cascade: nodes in order, cheapest first; the first completion whose gate passes is the answer, else the
best of every stage. The trace says which nodes ran, their gate values and the tokens spent."""

from __future__ import annotations

import time

from graph.entry.policies.candidates import Streams
from graph.entry.policies.config import Cascade
from graph.entry.policies.run import Run, Spec
from graph.entry.policies.schemas import (
    Candidate,
    CandidateRef,
    CandidatesEvent,
    GateEvent,
    PolicyResponse,
    PolicyUsage,
    Stage,
    Trace,
)
from graph.entry.schemas import ScoreEvent
from graph.errors import ConfigError
from graph.results import Classification, GenerationResult
from graph.tools import ToolCalling, made_call

MIN_STAGE_MS = 100.0  # a later stage starts only if it gets at least this long to generate


def check(run: Run, g: Cascade) -> None:
    for node in g.order:
        run.base_params(node, copies=1, logprobs=g.gate.min_mean_logprob is not None)


async def cascade(run: Run, g: Cascade) -> PolicyResponse:
    logprobs = g.gate.min_mean_logprob is not None
    stages: list[Stage] = []
    cands: list[Candidate] = []
    answer: Candidate | None = None
    cut_short = False
    first_cap = 0
    for i, node in enumerate(g.order):
        d = run.deadline
        if d is not None and cands and d.left_ms() < d.reserve_ms() + MIN_STAGE_MS:
            cut_short = True  # no time for another stage: answer with what we have
            break
        params = run.base_params(node, copies=1, logprobs=logprobs)
        spec = run.spec(i, node, params, params.seed, d.generate_cap_ms() if d is not None else None)
        first_cap = first_cap or (spec.params.max_time_ms or 0)
        await run.send(CandidatesEvent(candidates=[CandidateRef(id=spec.id, model=node, seed=spec.params.seed)]))
        t0 = time.monotonic()
        result = await _one(run, spec)
        if d is not None:
            d.generated()
        (c,) = await run.score([run.scored(result.text)])
        await run.send(ScoreEvent(model=node, index=i, **c.model_dump()))
        cand = run.candidate(spec, result, c)
        stage = _gate(g, cand, c, result, (time.monotonic() - t0) * 1000.0, spec.params.tools)
        stages.append(stage)
        cands.append(cand)
        await run.send(GateEvent(**stage.model_dump()))
        if stage.passed:
            answer = cand
            break
    if answer is None:  # no gate passed: the best of what ran
        answer = max(cands, key=lambda c: c.score)
    timed_out = cut_short or (run.deadline is not None and any(c.finish_reason == "time" for c in cands))
    trace = Trace(
        nodes_run=list(run.nodes_run),
        tokens_total=sum(c.completion_tokens for c in cands),
        stages=stages,
        elapsed_ms=run.elapsed_ms(),
        budget=run.deadline.budget(first_cap) if run.deadline is not None else None,
    )
    return PolicyResponse(
        graph=run.graph,
        policy="cascade",
        answer=answer,
        finish_reason="time" if timed_out else answer.finish_reason,
        candidates=cands,
        trace=trace,
        usage=PolicyUsage.of(cands, answer),
    )


async def _one(run: Run, spec: Spec) -> GenerationResult:
    if run.emit is None:
        return await run.generate(spec)
    (result,) = await Streams(run, [spec]).run_all()
    return result


def _gate(
    g: Cascade, cand: Candidate, c: Classification, result: GenerationResult, ms: float, calling: ToolCalling | None
) -> Stage:
    gate = g.gate
    label_score: float | None = None
    passed = True
    if gate.label is not None and gate.min_score is not None:
        if gate.label not in c.labels:
            raise ConfigError(f"gate.label: {gate.label!r} is not a label of the classifier {sorted(c.labels)}")
        label_score = c.labels[gate.label]
        passed = label_score >= gate.min_score
    if gate.min_mean_logprob is not None:
        passed = passed and cand.mean_logprob is not None and cand.mean_logprob >= gate.min_mean_logprob
    if gate.tool_call and calling is not None:  # "made a valid call"
        passed = passed and made_call(result.text, result.finish_reason, calling)
    return Stage(
        model=cand.model,
        candidate=cand.id,
        score=cand.score,
        gate_label_score=label_score,
        mean_logprob=cand.mean_logprob,
        passed=passed,
        completion_tokens=result.completion_tokens,
        ms=ms,
    )
