"""The composite step kinds of a named graph (switch, split, fallback, sequence, guard) and the one dispatcher that
runs any named graph or node branch, nested to any depth.

Each step names its choice in the answer's `path`, sends it as a step event, opens a tracing span and counts it
per graph and branch (graph/entry/policies/metrics.py).

Every branch runs as a child of the request's `Run`: the same context (its account is charged every token each
step generates), the same list of started candidates (a failure or a client gone stops them all), and the
request's deadline (a sequence gives each step its share of what is left)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

from pydantic import BaseModel

from graph.chat_format import prompt_chars
from graph.entry import tracing
from graph.entry.policies import best_of as best_of_policy
from graph.entry.policies import cascade as cascade_policy
from graph.entry.policies import labels, metrics
from graph.entry.policies.config import BestOf, Cascade, Fallback, Guard, NamedGraph, Sequence, Split, Switch
from graph.entry.policies.deadline import Deadline
from graph.entry.policies.run import Emit, PolicyEvent, Run
from graph.entry.policies.schemas import Kind, PathStep, PolicyResponse, PolicyUsage, StepEvent, Trace
from graph.entry.schemas import FinalEvent, TokenEvent
from graph.entry.tasks import background
from graph.errors import NodeFailure, Overloaded, Refused, first_error
from graph.params import GenerationOverrides
from graph.results import Classification
from graph.tools import call_required, made_call

SEED_STRIDE = 1000  # a guard's attempt a samples with the request's seed + a * this (distinct from best_of's +i)


def resolve(run: Run, name: str) -> tuple[NamedGraph, Kind]:
    """A branch by name: a named graph, or a generator node (run as one candidate of best_of, kind `node`)."""
    g = run.host.config.policies.graphs.get(name)
    if g is None:
        return BestOf(policy="best_of", nodes={name: 1}, return_candidates=True), "node"
    return g, g.policy


def check(run: Run, g: NamedGraph) -> None:
    """Refuse a request the graph cannot serve before anything starts (a 4xx naming the field): every node
    any branch may run gets the request's parameters checked (the config has no cycles: start-up checks it)."""
    graphs = run.host.config.policies.graphs
    if isinstance(g, BestOf) and any(n in graphs for n in g.nodes):
        for name in g.nodes:
            check(run.child(name, ""), resolve(run, name)[0])
    elif isinstance(g, BestOf):
        best_of_policy.check(run, g)
    elif isinstance(g, Cascade):
        cascade_policy.check(run, g)
    else:
        for name in dict.fromkeys(g.branches().values()):
            check(run.child(name, ""), resolve(run, name)[0])


async def run_graph(run: Run, g: NamedGraph, kind: Kind | None = None) -> PolicyResponse:
    """Run graph `g` as `run.graph` (any kind, any depth): its answer with the path it took."""
    kind = kind or g.policy
    t0 = time.monotonic()
    with tracing.step_span(run.graph, kind, run.depth) as span:
        if isinstance(g, BestOf) and any(n in run.host.config.policies.graphs for n in g.nodes):
            out = await best_of_graphs(run, g)
        elif isinstance(g, BestOf):
            out = await best_of_policy.best_of(run, g)
        elif isinstance(g, Cascade):
            out = await cascade_policy.cascade(run, g)
        elif isinstance(g, Switch):
            out = await switch(run, g)
        elif isinstance(g, Split):
            out = await split(run, g)
        elif isinstance(g, Fallback):
            out = await fallback(run, g)
        elif isinstance(g, Sequence):
            out = await sequence(run, g)
        else:
            out = await guard(run, g)
        if isinstance(g, BestOf | Cascade) and not out.path:
            ms = (time.monotonic() - t0) * 1000.0
            out = out.model_copy(
                update={
                    "policy": kind,
                    "path": [PathStep(graph=run.graph, kind=kind, branch=out.answer.model, depth=run.depth, ms=ms)],
                }
            )
            metrics.count(run.graph, kind, out.answer.model, "served")
        tracing.step_done(span, out)
    return out


async def branch(
    run: Run,
    name: str,
    scope: str,
    *,
    prompt: str | None = None,
    overrides: BaseModel | None = None,
    deadline: Deadline | None = None,
    emit: Emit | None = None,
    own_clock: bool = False,
) -> PolicyResponse:
    """Branch `name` as a child of `run`; the request's deadline and stream unless given (`own_clock`: the
    deadline given, even None)."""
    g, kind = resolve(run, name)
    keep = ("emit",) if emit is None else ()
    if not own_clock:
        keep = (*keep, "deadline")
    child = run.child(name, scope, prompt=prompt, overrides=overrides, deadline=deadline, emit=emit, keep=keep)
    return await run_graph(child, g, kind)


def combine(
    run: Run, kind: Kind, served: PolicyResponse, parts: list[PolicyResponse], path: list[PathStep]
) -> PolicyResponse:
    """A composite's answer: `served`'s answer; every part's candidates, tokens and stages; the path so far."""
    prompt = sum(p.usage.prompt_tokens for p in parts)
    completion = sum(p.usage.completion_tokens for p in parts)
    usage = PolicyUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        candidates=sum(p.usage.candidates for p in parts),
        winner=served.answer.id,
    )
    trace = Trace(
        nodes_run=list(run.nodes_run),
        tokens_total=sum(p.trace.tokens_total for p in parts),
        stages=[s for p in parts for s in p.trace.stages],
        prune_rounds=[r for p in parts for r in p.trace.prune_rounds],
        budget=served.trace.budget,
        elapsed_ms=run.elapsed_ms(),
    )
    return PolicyResponse(
        graph=run.graph,
        policy=kind,
        answer=served.answer,
        finish_reason=served.finish_reason,
        candidates=[c for p in parts for c in p.candidates],
        trace=trace,
        usage=usage,
        path=path,
    )


async def mark(run: Run, step: PathStep, t0: float) -> PathStep:
    """Record a step: its time, its event on the stream and the trace, its count."""
    step.ms = (time.monotonic() - t0) * 1000.0
    await run.send(StepEvent(**step.model_dump()))
    metrics.count(step.graph, step.kind, step.branch or "", step.outcome)
    return step


def prompt_text(run: Run) -> str:
    return run.prompt if isinstance(run.prompt, str) else run.prompt.last_user_text()


# ---- best_of over graphs -------------------------------------------------------------------------------


async def best_of_graphs(run: Run, g: BestOf) -> PolicyResponse:
    """best_of whose entries include graphs: every run of every entry at once (an entry with k > 1 runs k
    times with distinct seeds), their answers scored against the request's prompt in one classifier call."""
    t0 = time.monotonic()
    entries = [(name, j) for name, k in g.nodes.items() for j in range(k)]
    quiet = _quiet if run.emit is not None else None  # the branches' texts are not final: step events only
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(
                branch(run, name, f"b{i}.", overrides=reseeded(run, j) if g.nodes[name] > 1 else None, emit=quiet)
            )
            for i, (name, j) in enumerate(entries)
        ]
    outs = [t.result() for t in tasks]
    scores = await run.score([run.scored(o.answer.completion) for o in outs])
    answers = [
        o.answer.model_copy(update={"score": c.score, "label": c.label, "labels": c.labels, "generated": text})
        for o, c, text in zip(outs, scores, [run.scored(o.answer.completion) for o in outs])
    ]
    win = max(range(len(answers)), key=lambda i: answers[i].score)  # the first of equals wins
    name = entries[win][0]
    why = f"score {answers[win].score:.2f}, best of {len(answers)}"
    step = await mark(run, PathStep(graph=run.graph, kind="best_of", branch=name, why=why, depth=run.depth), t0)
    served = outs[win].model_copy(update={"answer": answers[win]})
    out = combine(run, "best_of", served, outs, [step, *[p for o in outs for p in o.path]])
    return out.model_copy(update={"candidates": answers if g.return_candidates else []})


# ---- switch ---------------------------------------------------------------------------------------------


async def switch(run: Run, g: Switch) -> PolicyResponse:
    t0 = time.monotonic()
    target, why = await route(run, g)
    step = await mark(run, PathStep(graph=run.graph, kind="switch", branch=target, why=why, depth=run.depth), t0)
    out = await branch(run, target, f"{target}.")
    return combine(run, "switch", out, [out], [step, *out.path])


async def route(run: Run, g: Switch) -> tuple[str, str]:
    """The branch a switch takes and why."""
    if g.by == "label":
        assert g.zero_shot is not None  # the config requires it for by: label
        (c,) = await labels.classify(run.host, run.ctx, g.zero_shot, [prompt_text(run)])
        why = f"label {c.label} {c.score:.2f}"
        if c.label in g.cases and c.score >= g.min_score:
            return g.cases[c.label], why
        return g.default, why + (" < min_score" if c.label in g.cases else ": no case")
    if g.by == "prompt_chars":
        n = prompt_chars(run.prompt)
        for limit in sorted(g.cases, key=int):
            if n <= int(limit):
                return g.cases[limit], f"prompt_chars {n} <= {limit}"
        return g.default, f"prompt_chars {n}: above every case"
    if g.by == "json_schema":
        asked = run.overrides.model_dump().get("response_format") if run.overrides is not None else None
        value = "yes" if isinstance(asked, dict) and asked.get("type") != "text" else "no"
    elif g.by == "key":
        value = run.ctx.key_id
    elif g.by == "user":
        value = run.ctx.user
    else:
        value = run.ctx.meta(g.field or "")
    if value is not None and value in g.cases:
        return g.cases[value], f"{g.by} {value}"
    return g.default, f"{g.by} {value}: no case" if value is not None else f"{g.by}: not given"


# ---- split ----------------------------------------------------------------------------------------------


def pick(g: Split, who: str | None) -> tuple[str, float]:
    """The branch of caller `who` (None: drawn afresh) and the point in [0, 1) that chose it: a hash of
    (salt, who), so one caller always lands on the same branch while the weights stay the same."""
    if g.sticky and who is not None:
        digest = hashlib.sha256(f"{g.salt}\0{who}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
    else:
        u = random.random()
    total = sum(g.weights.values())
    acc = 0.0
    for name, w in g.weights.items():
        acc += w / total
        if u < acc:
            return name, u
    return next(reversed(g.weights)), u


async def split(run: Run, g: Split) -> PolicyResponse:
    t0 = time.monotonic()
    who, by = (run.ctx.user, "user") if run.ctx.user is not None else (run.ctx.key_id, "key")
    target, _ = pick(g, who)
    share = g.weights[target] / sum(g.weights.values())
    why = f"weight {share:.2f}, " + (f"sticky on {by}" if g.sticky and who is not None else "drawn")
    step = await mark(run, PathStep(graph=run.graph, kind="split", branch=target, why=why, depth=run.depth), t0)
    out = await branch(run, target, f"{target}.")
    return combine(run, "split", out, [out], [step, *out.path])


# ---- fallback -------------------------------------------------------------------------------------------


async def fallback(run: Run, g: Fallback) -> PolicyResponse:
    path: list[PathStep] = []
    for i, name in enumerate(g.order):
        last = i == len(g.order) - 1
        t0 = time.monotonic()
        since = len(run.started_rids)
        timeout = g.branch_timeout_ms / 1000.0 if g.branch_timeout_ms is not None and not last else None
        try:
            try:
                out = await asyncio.wait_for(branch(run, name, f"f{i}."), timeout)
            except BaseExceptionGroup as group:  # a branch's parallel calls (best_of): its first graph error
                raise first_error(group) from None
        except (NodeFailure, Overloaded, Refused, TimeoutError) as exc:
            background(run.cancel_since(since))  # what the failed branch started stops
            if last:
                raise
            outcome = "refused" if isinstance(exc, Refused) else "failed"
            why = (
                f"no answer in branch_timeout_ms={g.branch_timeout_ms}"
                if isinstance(exc, TimeoutError)
                else f"{exc.kind}: {exc.message}"
            )
            step = PathStep(graph=run.graph, kind="fallback", branch=name, outcome=outcome, why=why, depth=run.depth)
            path.append(await mark(run, step, t0))
            continue
        calling = run.overrides.tools if isinstance(run.overrides, GenerationOverrides) else None
        if not last and call_required(calling) and not made_call(out.answer.completion, out.finish_reason, calling):
            # a branch that cannot call the tools asked for (text, or a call cut short) fails over
            why = "no valid tool call, and tool_choice requires one"
            step = PathStep(graph=run.graph, kind="fallback", branch=name, outcome="failed", why=why, depth=run.depth)
            path.append(await mark(run, step, t0))
            continue
        why = "first choice" if i == 0 else f"after {i} failed"
        step = PathStep(graph=run.graph, kind="fallback", branch=name, why=why, depth=run.depth)
        path.append(await mark(run, step, t0))
        return combine(run, "fallback", out, [out], [*path, *out.path])
    raise AssertionError("a fallback has at least two branches")  # pragma: no cover


# ---- sequence -------------------------------------------------------------------------------------------


def render(template: str, prompt: str, previous: str) -> str:
    """A step's prompt: {prompt} and {previous} filled in (no other braces are read, so a prompt's own
    braces pass through)."""
    return template.replace("{prompt}", prompt).replace("{previous}", previous)


async def sequence(run: Run, g: Sequence) -> PolicyResponse:
    parts: list[PolicyResponse] = []
    path: list[PathStep] = []
    previous = ""
    for i, step in enumerate(g.steps):
        last = i == len(g.steps) - 1
        t0 = time.monotonic()
        prompt = None if i == 0 and step.template == "{prompt}" else render(step.template, prompt_text(run), previous)
        d = run.deadline
        share = None
        if d is not None:  # each step its share of what is left, so the last step still gets time
            share = Deadline(max(1, int(d.left_ms() / (len(g.steps) - i))), d.score_ms, d.overrun_ms, d.latencies)
        quiet = _quiet if run.emit is not None and not last else None  # None: the request's stream
        out = await branch(run, step.run, f"s{i}.", prompt=prompt, deadline=share, own_clock=True, emit=quiet)
        parts.append(out)
        previous = out.answer.completion.strip()
        why = f"step {i + 1}/{len(g.steps)}: {out.answer.completion_tokens} tokens"
        own = PathStep(graph=run.graph, kind="sequence", branch=step.run, why=why, depth=run.depth)
        path += [await mark(run, own, t0), *out.path]
    served = parts[-1]
    if any(p.finish_reason == "time" for p in parts):
        served = served.model_copy(update={"finish_reason": "time"})
    return combine(run, "sequence", served, parts, path)


async def _quiet(event: PolicyEvent) -> None:
    """An earlier step of a sequence streams nothing: its answer is progress (a step event), not the text."""


# ---- guard ----------------------------------------------------------------------------------------------


def hit(g: Guard, c: Classification) -> tuple[str, float, float] | None:
    """The first blocked label at or over its threshold: (label, probability, threshold)."""
    for label, t in g.block.items():
        p = c.labels.get(label, 0.0)
        if p >= t:
            return label, p, t
    return None


def reseeded(run: Run, attempt: int) -> BaseModel:
    """The request's overrides with a new seed for attempt `attempt` (sampling, unless the request said greedy)."""
    base = run.overrides if run.overrides is not None else GenerationOverrides()
    asked = base.model_dump()
    seed = asked.get("seed")
    seed = (seed if seed is not None else random.randrange(2**31)) + attempt * SEED_STRIDE
    update: dict[str, object] = {"seed": seed % 2**32}
    if asked.get("do_sample") is not False:
        update["do_sample"] = True
    return base.model_copy(update=update)


async def guard(run: Run, g: Guard) -> PolicyResponse:
    path: list[PathStep] = []
    parts: list[PolicyResponse] = []
    if "prompt" in g.check:
        t0 = time.monotonic()
        (c,) = await labels.classify(run.host, run.ctx, g.zero_shot, [prompt_text(run)])
        found = hit(g, c)
        why = _why("prompt", c, found)
        step = PathStep(graph=run.graph, kind="guard", branch="prompt", outcome="hit" if found else "passed", why=why)
        path.append(await mark(run, step.model_copy(update={"depth": run.depth}), t0))
        if found:
            return await _on_hit(run, g, path, parts, "prompt", why)
    if "output" not in g.check:
        out = await branch(run, g.run, "g.")
        return combine(run, "guard", out, [out], [*path, *out.path])
    attempts = g.retries + 1 if g.on_hit == "regenerate" else 1
    why = ""
    for a in range(attempts):
        t0 = time.monotonic()
        overrides = reseeded(run, a) if a else None
        # the answer's text is held back until checked: its tokens do not stream
        emit = _held(run.emit) if run.emit is not None else None
        out = await branch(run, g.run, f"a{a}.", overrides=overrides, emit=emit)
        parts.append(out)
        (c,) = await labels.classify(run.host, run.ctx, g.zero_shot, [out.answer.completion])
        found = hit(g, c)
        why = _why(f"output (attempt {a + 1}/{attempts})", c, found)
        step = PathStep(
            graph=run.graph, kind="guard", branch=g.run, outcome="hit" if found else "passed", why=why, depth=run.depth
        )
        path += [await mark(run, step, t0), *out.path]
        if not found:
            return combine(run, "guard", out, parts, path)
    return await _on_hit(run, g, path, parts, "output", why)


async def _on_hit(
    run: Run, g: Guard, path: list[PathStep], parts: list[PolicyResponse], side: str, why: str
) -> PolicyResponse:
    if g.on_hit == "route" and g.route_to is not None:
        t0 = time.monotonic()
        out = await branch(run, g.route_to, "r.")
        step = PathStep(graph=run.graph, kind="guard", branch=g.route_to, why=f"routed: {why}", depth=run.depth)
        return combine(run, "guard", out, [*parts, out], [*path, await mark(run, step, t0), *out.path])
    tried = f" after {len(parts)} attempts" if len(parts) > 1 else ""
    raise Refused(f"graph {run.graph!r} refused the {side}{tried}: {why}", field=side)


def _why(side: str, c: Classification, found: tuple[str, float, float] | None) -> str:
    if found is None:
        return f"{side}: {c.label} {c.score:.2f}, under every threshold"
    label, p, t = found
    return f"{side}: {label} {p:.2f} >= block.{label} {t}"


def _held(emit: Emit) -> Emit:
    async def send(event: PolicyEvent) -> None:
        if not isinstance(event, TokenEvent | FinalEvent):
            await emit(event)

    return send
