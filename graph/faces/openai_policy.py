"""Named graphs (`graph:<name>`) on the OpenAI face: the decided answer as one choice, and the stream.

A stream sends what is final as soon as it is final: the winner's text once the policy has decided
(best_of: after every candidate is scored; cascade: when a stage passes its gate). Until then the
policy's progress (candidates started, each candidate's end, scores, pruning rounds, gates, the
decision) goes out as SSE comments (`: policy {...}`), which OpenAI clients skip; the answer's chunk
carries `model`, `score`, `label` and `candidate` fields, and usage counts every candidate's tokens.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from graph.chat_format import Prompt
from graph.compose import Graph, sse
from graph.context import RequestContext
from graph.faces.openai_shapes import Scored, with_extras
from graph.policies.schemas import DecisionEvent, PolicyResponse
from graph.results import Classification, GenerationResult
from graph.schemas import ErrorEvent, TokenEvent
from graph.tasks import background

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
    return Scored(a.model, index, result, Classification(label=a.label, score=a.score, labels=a.labels), out.usage)


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

    async def body() -> AsyncIterator[str]:
        try:
            async for ev in events:
                if isinstance(ev, ErrorEvent):
                    for chunk in chunks.of(ev):
                        yield sse(chunk)
                elif isinstance(ev, DecisionEvent):
                    out = ev.result
                    yield comment("decision", out.model_dump_json(exclude={"candidates"}, exclude_none=True))
                    a = out.answer
                    extras = {"model": a.model, "score": a.score, "label": a.label, "candidate": a.id}
                    for chunk in chunks.parts(0, a.completion, finish(out.finish_reason), extras, final=True):
                        yield sse(chunk)
                    chunks.prompt_tokens = {"graph": out.usage.prompt_tokens}
                    chunks.completion_tokens = out.usage.completion_tokens
                    chunks.winner = (out.usage.candidates, a.id)
                elif not isinstance(ev, TokenEvent):  # a candidate's text is not final until decided
                    yield comment("policy", ev.model_dump_json(exclude={"text"}, exclude_none=True))
            if req.include_usage:
                last = chunks.usage_chunk()
                if getattr(chunks, "winner", None) is not None:
                    with_extras(last.usage, {"candidates": chunks.winner[0], "winners": [chunks.winner[1]]})
                yield sse(last.model_dump_json(exclude_unset=True))
            yield sse("[DONE]")
        finally:  # the client went away (or the stream ended): stop the policy and its candidates
            background(events.aclose())

    return body()
