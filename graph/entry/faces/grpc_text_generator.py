"""The seed's gRPC TextGenerator service (protos/text_generator.proto) over the graph's generator nodes.

Semantics as the seed describes them: `max_length` counts the text's own tokens plus generated tokens,
as in transformers, whatever chat template the node wraps around the text (0: the node's default
max_new_tokens); `Generate` answers the prompt followed by the
generated text; `GenerateStreamed` sends fragments no more often than `intermediate_result_interval_ms`
(0: the config's grpc.stream_interval_ms), the last one at once, and they concatenate to that same text.
Which generator answers: the `x-model` metadata, else the config's grpc.default_node (else the first);
`x-graph` metadata names a graph of the config's policies instead, whose decided answer comes back
(streamed: as the graph declares, graph/entry/policies/config.py `Policies.streaming`: a `tokens` graph's
fragments as generated, any other's as one fragment once decided; the path in the trailers either way).
`x-seed` metadata (an integer) fixes sampling, so a streamed call can repeat a `Generate` exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from graph.entry.compose import Graph
from graph.entry.faces.grpc_context import path_trailers, request_context
from graph.entry.faces.grpc_errors import stream_errors, unary_errors, validated
from graph.entry.policies.schemas import DecisionEvent, PolicyResponse, path_text
from graph.entry.schemas import ErrorEvent, FinalEvent, GraphEvent, TokenEvent
from graph.entry.tasks import background
from graph.errors import ErrorBody, InvalidRequest, error_from_body
from graph.params import GenerationOverrides
from protos import text_generator_pb2 as pb
from protos import text_generator_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextGenerator"].full_name


class SeedCall(BaseModel):
    """One TextGenerator call: the request's fields and the call's metadata, validated together."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    text: str = Field(default="", min_length=1)
    max_length: int = Field(default=0, ge=0, description="Prompt + generated tokens; 0 = the node's default.")
    intermediate_result_interval_ms: int = Field(default=0, ge=0, le=60_000)
    model: str | None = Field(default=None, alias="x-model")
    graph: str | None = Field(default=None, alias="x-graph", description="A named graph of the config that decides.")
    seed: int | None = Field(default=None, alias="x-seed", ge=0, le=2**32 - 1)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be only whitespace")
        return v


def seed_call(request: Any, context: Any) -> SeedCall:
    metadata = dict(context.invocation_metadata() or ())
    data: dict[str, Any] = {name.name: getattr(request, name.name) for name in request.DESCRIPTOR.fields}
    data.update({k: metadata[k] for k in ("x-model", "x-seed", "x-graph") if k in metadata})
    return validated(SeedCall, data)


class TextGeneratorServicer(pb_grpc.TextGeneratorServicer):
    """TextGenerator over a `Graph` (the same object the HTTP face calls)."""

    def __init__(self, graph: Graph, *, default_node: str | None, stream_interval_ms: int) -> None:
        self.graph = graph
        self.default_node = default_node or next(iter(graph.generators))
        self.stream_interval_ms = stream_interval_ms

    def _graph_nodes(self, call: SeedCall) -> list[str]:
        """The nodes of the named graph the call's `x-graph` chose (a 400 naming it if unknown)."""
        g = self.graph.config.policies.graphs.get(call.graph or "")
        if g is None or call.graph is None:
            names = list(self.graph.config.policies.graphs)
            raise InvalidRequest(f"x-graph: unknown graph {call.graph!r}; graphs: {names}", field="x-graph")
        if call.model is not None:
            raise InvalidRequest("x-model: a named graph chooses its own nodes; leave x-model out", field="x-model")
        return self.graph.config.policies.nodes_of(call.graph)

    async def _plan(self, call: SeedCall) -> tuple[str, GenerationOverrides]:
        """The node and the overrides of a validated call; max_length checked against the prompt.
        With `x-graph`, the node is the graph's first and the budget holds on each of its nodes."""
        nodes = self._graph_nodes(call) if call.graph is not None else None
        node = nodes[0] if nodes else self.graph.select(call.model or self.default_node, field_name="x-model")[0]
        self.graph.check_prompt(call.text, "text")
        fields: dict[str, Any] = {} if call.seed is None else {"seed": call.seed}
        if call.max_length:
            counts = [await self.graph.count_tokens(n, call.text, template=False) for n in nodes or [node]]
            prompt_tokens = max(counts)
            new_tokens = call.max_length - prompt_tokens
            limit = self.graph.config.generators[node].max_new_tokens_limit
            if not 1 <= new_tokens <= limit:
                raise InvalidRequest(
                    f"max_length: {call.max_length} leaves {new_tokens} new tokens after the text's "
                    f"{prompt_tokens} on node {node!r}; give {prompt_tokens + 1}..{prompt_tokens + limit} (or 0)",
                    field="max_length",
                )
            fields["max_new_tokens"] = new_tokens
        overrides = validated(GenerationOverrides, fields)
        self.graph.plan(nodes or [node], overrides)  # every rule checked before a node sees any work
        return node, overrides

    @unary_errors
    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        call = seed_call(request, context)
        node, overrides = await self._plan(call)
        ctx = request_context(context)
        if call.graph is not None:  # the named graph's decided answer
            out = await self.graph.decide(ctx, call.text, overrides, call.graph)
            path_trailers(context, path_text(out.path))
            return pb.GenerateResponse(text=call.text + out.answer.completion)
        per_node = await self.graph.generate(ctx, [call.text], node, overrides)
        return pb.GenerateResponse(text=call.text + per_node[node][0][0].text)

    @stream_errors
    async def GenerateStreamed(
        self, request: pb.GenerateStreamedRequest, context: Any
    ) -> AsyncIterator[pb.GenerateStreamedResponse]:
        call = seed_call(request, context)
        node, overrides = await self._plan(call)
        ctx = request_context(context)
        live = call.graph is not None and self.graph.config.policies.streaming(call.graph)[0] == "tokens"
        if call.graph is not None and not live:  # a named graph's text is final once it has decided: one fragment
            out = await self.graph.decide(ctx, call.text, overrides, call.graph)
            path_trailers(context, path_text(out.path))
            yield pb.GenerateStreamedResponse(text_fragment=call.text + out.answer.completion)
            return
        interval_ms = call.intermediate_result_interval_ms or self.stream_interval_ms
        decided: list[PolicyResponse] = []
        if call.graph is not None:  # a `tokens` graph: its token events are its answer's, as generated
            events = self.graph.stream(ctx, call.text, None, overrides, score=True, graph=call.graph)
            source = answer_texts(events, decided)
        else:
            events = await self.graph.open_stream(ctx, call.text, node, overrides, interval_ms=interval_ms)
            source = texts(events, node)  # pyright: ignore[reportArgumentType]  score=False: no policy events
        prefix = call.text  # the first fragment carries the prompt: fragments add up to Generate's text
        try:
            async for fragment in paced(source, interval_ms / 1000.0):
                yield pb.GenerateStreamedResponse(text_fragment=prefix + fragment)
                prefix = ""
            if prefix:  # nothing was generated: the text is the prompt alone
                yield pb.GenerateStreamedResponse(text_fragment=prefix)
            if decided:
                path_trailers(context, path_text(decided[0].path))
        finally:  # cancelled or deadline passed: close the graph stream, which cancels the node's work
            background(events.aclose())


async def texts(events: AsyncIterator[GraphEvent], node: str) -> AsyncIterator[str]:
    """The text of `node`'s completion events; its error event is raised as the GraphError it was."""
    async for ev in events:
        if isinstance(ev, ErrorEvent):
            raise error_from_body(ErrorBody.model_validate(ev.model_dump()), ev.node or node)
        if isinstance(ev, (TokenEvent, FinalEvent)) and ev.text:
            yield ev.text


async def answer_texts(events: AsyncIterator[Any], decided: list[PolicyResponse]) -> AsyncIterator[str]:
    """A `tokens` graph's answer as its token events come (one branch runs: they are the answer's); its
    decision is appended to `decided`; an error event is raised as the GraphError it was."""
    async for ev in events:
        if isinstance(ev, ErrorEvent):
            raise error_from_body(ErrorBody.model_validate(ev.model_dump()), ev.node or "graph")
        if isinstance(ev, DecisionEvent):
            decided.append(ev.result)
        elif isinstance(ev, (TokenEvent, FinalEvent)) and ev.text:
            yield ev.text


async def paced(source: AsyncIterator[str], interval_s: float) -> AsyncIterator[str]:
    """`source`'s strings, joined so that no two come closer than `interval_s` apart; what is left
    when `source` ends comes at once (the last fragment)."""
    it = source.__aiter__()
    pending, last = "", float("-inf")
    nxt: asyncio.Task[str] | None = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(it.__anext__())
            wait = max(0.0, last + interval_s - time.monotonic()) if pending else None
            done, _ = await asyncio.wait({nxt}, timeout=wait)
            if nxt in done:
                task, nxt = nxt, None
                try:
                    pending += task.result()
                except StopAsyncIteration:
                    break
            if pending and time.monotonic() - last >= interval_s:
                yield pending
                pending, last = "", time.monotonic()
        if pending:
            yield pending
    finally:
        if nxt is not None:
            nxt.cancel()
