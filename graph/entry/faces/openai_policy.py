"""Named graphs (`graph:<name>`) on the OpenAI face: the decided answer as one choice, and the stream.

A stream sends what is final as soon as it is final, as the graph's kinds declare it
(graph/entry/policies/config.py `Policies.streaming`): a `tokens` graph (a switch or split over nodes, a
sequence whose last step is a node...) streams its answer's tokens as they are generated; a `decided`
one sends the winner's text once the policy has decided (best_of: after every candidate is scored;
cascade: when a stage passes its gate); a `held` one once its guard has passed the output. Meanwhile the
policy's progress (candidates started, each candidate's end, scores, pruning rounds, gates, steps, the
decision) goes out as SSE comments (`: policy {...}`), which OpenAI clients skip; the answer's last chunk
carries `model`, `score`, `label`, `candidate` and `path` fields, and usage counts every candidate's tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from graph.chat_format import Prompt
from graph.entry.compose import Graph, sse
from graph.entry.context import RequestContext
from graph.entry.faces.openai_shapes import Scored, with_extras
from graph.entry.policies.schemas import DecisionEvent, PolicyResponse, path_text
from graph.entry.schemas import ErrorEvent, FinalEvent, TokenEvent
from graph.entry.tasks import background
from graph.results import Classification, GenerationResult

log = logging.getLogger("graph")
Finish = Callable[[str], Literal["stop", "length"]]


def decided(out: PolicyResponse, index: int) -> Scored:
    """A named graph's decision as the choice of prompt `index` (usage: every candidate's tokens)."""
    a = out.answer
    result = GenerationResult(
        index=0,
        text=a.completion,
        finish_reason=out.finish_reason,
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
        created=time.time(),
    )
    verdict = Classification(label=a.label, score=a.score, labels=a.labels)
    return Scored(a.model, index, result, verdict, out.usage, path_text(out.path))


def comment(kind: str, payload: str) -> str:
    """An SSE comment line (clients that follow the SSE spec, the `openai` SDK among them, skip it)."""
    return f": {kind} {payload}\n\n"


def decision_stream(
    graph: Graph,
    ctx: RequestContext,
    req: Any,
    name: str,
    prompt: Prompt,
    chunks: Any,
    finish: Finish,
) -> AsyncIterator[str]:
    """Validate now (a 4xx, not a broken stream); then the policy's progress as comments, the answer
    as a chunk when decided, usage (with stream_options.include_usage), [DONE]. Every candidate's
    tokens are charged to `ctx` as they are generated."""
    events = graph.stream(ctx, prompt, None, req.overrides(), score=True, graph=name)
    # a `tokens` graph's token events are its answer's (one branch runs; earlier sequence steps send none)
    live = graph.config.policies.streaming(name)[0] == "tokens"
    sent: list[str] = []

    async def body() -> AsyncIterator[str]:
        try:
            async for ev in events:
                if live and isinstance(ev, TokenEvent | FinalEvent) and ev.text:
                    sent.append(ev.text)
                    for chunk in chunks.parts(0, ev.text, None, {}, final=False):
                        yield sse(chunk)
                if isinstance(ev, ErrorEvent):
                    for chunk in chunks.of(ev):
                        yield sse(chunk)
                elif isinstance(ev, DecisionEvent):
                    out = ev.result
                    yield comment("decision", out.model_dump_json(exclude={"candidates"}, exclude_none=True))
                    a = out.answer
                    path = path_text(out.path)
                    extras = {"model": a.model, "score": a.score, "label": a.label, "candidate": a.id, "path": path}
                    streamed = "".join(sent)
                    if not a.completion.startswith(streamed):  # a broken promise of Policies.streaming
                        log.error("graph %s streamed text that is not its answer's", name)
                    rest = a.completion[len(streamed) :] if a.completion.startswith(streamed) else ""
                    for chunk in chunks.parts(0, rest, finish(out.finish_reason), extras, final=True):
                        yield sse(chunk)
                    chunks.prompt_tokens = {"graph": out.usage.prompt_tokens}
                    chunks.completion_tokens = out.usage.completion_tokens
                    chunks.winner = (out.usage.candidates, a.id, path)
                elif not isinstance(ev, TokenEvent):  # a candidate's text is not final until decided
                    yield comment("policy", ev.model_dump_json(exclude={"text"}, exclude_none=True))
            if req.include_usage:
                last = chunks.usage_chunk()
                if getattr(chunks, "winner", None) is not None:
                    candidates, winner, path = chunks.winner
                    with_extras(last.usage, {"candidates": candidates, "winners": [winner], "paths": [path]})
                yield sse(last.model_dump_json(exclude_unset=True))
            yield sse("[DONE]")
        finally:  # the client went away (or the stream ended): stop the policy and its candidates
            background(events.aclose())

    return body()
