"""best_of: k candidates over chosen nodes (distinct seeds), all scored in one classifier call; the best wins.
With tools and tool_choice required (or a named function), candidates that made a valid call come first:
the classifier ranks those, and the rest only when none did.

With `prune`, candidates are streamed and trailing ones are cancelled while they generate (candidates.py);
with an infinite margin nobody is cancelled and the answer equals exhaustive best_of's exactly."""

from __future__ import annotations

import asyncio

from graph.entry.policies.candidates import Streams
from graph.entry.policies.config import BestOf
from graph.entry.policies.run import Run, Spec
from graph.entry.policies.schemas import CandidateRef, CandidatesEvent, PolicyResponse, PolicyUsage, Trace
from graph.entry.schemas import ScoreEvent
from graph.results import GenerationResult
from graph.tools import call_required, made_call


def check(run: Run, g: BestOf) -> None:
    """Refuse a request this graph cannot serve before anything starts (a 4xx naming the field)."""
    for node, k in g.nodes.items():
        run.base_params(node, copies=k)


def plan(run: Run, g: BestOf) -> list[Spec]:
    """The candidates: per node its count, candidate i sampling with seed base + i, all under the time cap."""
    cap = run.deadline.generate_cap_ms() if run.deadline is not None else None
    specs: list[Spec] = []
    for node, k in g.nodes.items():
        params = run.base_params(node, copies=k)
        base = run.seed_base(params)
        for _ in range(k):
            i = len(specs)
            seed = (base + i) % 2**32 if params.do_sample else params.seed
            specs.append(run.spec(i, node, params, seed, cap))
    return specs


async def best_of(run: Run, g: BestOf) -> PolicyResponse:
    specs = plan(run, g)
    await run.send(CandidatesEvent(candidates=[CandidateRef(id=s.id, model=s.node, seed=s.params.seed) for s in specs]))
    streams = Streams(run, specs, g.prune)
    if g.prune is None and run.emit is None:
        results = await _whole(run, specs)
    else:
        results = await streams.run_all()
    if run.deadline is not None:
        run.deadline.generated()
    scores = await run.score([run.scored(r.text) for r in results])  # one call for every candidate
    cands = [run.candidate(s, r, c, streams.pruned.get(s.id)) for s, r, c in zip(specs, results, scores)]
    for s, c in zip(specs, scores):
        await run.send(ScoreEvent(model=s.node, index=s.index, **c.model_dump()))
    eligible = [c for c in cands if c.pruned_at_tokens is None] or cands
    calling = specs[0].params.tools
    if call_required(calling):  # a valid call of the tool(s) asked for beats text or a cut call
        eligible = [c for c in eligible if made_call(c.completion, c.finish_reason, calling)] or eligible
    answer = max(eligible, key=lambda c: c.score)  # the first of equals wins
    timed_out = run.deadline is not None and any(c.finish_reason == "time" for c in cands)
    trace = Trace(
        nodes_run=list(run.nodes_run),
        tokens_total=sum(c.completion_tokens for c in cands),
        prune_rounds=streams.rounds,
        elapsed_ms=run.elapsed_ms(),
        budget=run.deadline.budget(specs[0].params.max_time_ms or 0) if run.deadline is not None else None,
    )
    return PolicyResponse(
        graph=run.graph,
        policy="best_of",
        answer=answer,
        finish_reason="time" if timed_out else answer.finish_reason,
        candidates=cands if g.return_candidates else [],
        trace=trace,
        usage=PolicyUsage.of(cands, answer),
    )


async def _whole(run: Run, specs: list[Spec]) -> list[GenerationResult]:
    """Every candidate at once, no streams (exhaustive best_of): one request per node, its candidates as
    num_return_sequences (their seeds are consecutive, as the engine's sequences are), so they share the
    prompt's prefill. Nothing is cancelled alone here, so they need no request id of their own."""
    by_node: dict[str, list[Spec]] = {}
    for s in specs:
        by_node.setdefault(s.node, []).append(s)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run.generate_many(group_specs)) for group_specs in by_node.values()]
    by_id = {s.id: r for t, group_specs in zip(tasks, by_node.values()) for s, r in zip(group_specs, t.result())}
    return [by_id[s.id] for s in specs]
