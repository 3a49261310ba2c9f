"""The graph's own gRPC service (protos/inference_graph.proto): the HTTP API's calls with typed messages.

Requests become the same pydantic request models the HTTP face validates (graph/entry/schemas.py), so a bad
value is INVALID_ARGUMENT naming the same field (`params.temperature`, `prompt`); results and stream
events go out as their proto messages field by field (json_format refuses a field the proto lacks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel

from graph.entry.compose import Graph
from graph.entry.faces.grpc_context import path_trailers, request_context
from graph.entry.faces.grpc_errors import stream_errors, unary_errors, validated
from graph.entry.policies.schemas import PolicyResponse, path_text
from graph.entry.schemas import ClassifyRequest, GenerateRequest, GenerateScoreRequest, StreamRequest
from graph.entry.tasks import background
from protos import inference_graph_pb2 as pb
from protos import inference_graph_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceGraph"].full_name
Msg = TypeVar("Msg", bound=Message)


# GenerationResult's timings (traces: graph/entry/tracing.py) that the proto's Completion does not carry.
TIMINGS = {"queue_ms", "first_token_ms"}


def fields_of(message: Message) -> dict[str, Any]:
    """The fields a request message sets (proto3 `optional` ones only when present), by proto name.
    `params.response_format` and `params.tools` (Structs, whose numbers are all doubles) get their
    whole numbers back as integers, as JSON Schema keywords like maxLength need them; `logit_bias`'s
    keys (JSON strings) become token ids again."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    params = data.get("params")
    if isinstance(params, dict):
        for name in ("response_format", "tools"):
            if name in params:
                params[name] = _whole_numbers(params[name])
        if isinstance(params.get("logit_bias"), dict):
            params["logit_bias"] = {int(k): float(v) for k, v in params["logit_bias"].items()}
    return data


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def to_proto(model: BaseModel, message: Msg, *, exclude: set[str] | None = None) -> Msg:
    """A result model as its proto message (same field names)."""
    data = model.model_dump(mode="json", exclude_none=True, exclude=exclude)
    return json_format.ParseDict(data, message)


class InferenceGraphServicer(pb_grpc.InferenceGraphServicer):
    """inference_graph.v1.InferenceGraph over a `Graph` (the same object the HTTP face calls)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    @unary_errors
    async def GenerateScore(self, request: pb.GenerateScoreRequest, context: Any) -> pb.GenerateScoreResponse:
        fields = fields_of(request)
        metadata = dict(context.invocation_metadata() or ())
        if "graph" not in fields and "x-graph" in metadata:  # the metadata names a graph, as x-model a node
            fields["graph"] = metadata["x-graph"]
        req = validated(GenerateScoreRequest, fields)
        out = await self.graph.generate_score(
            request_context(context), req.original_sentence, req.params, graph=req.graph
        )
        if isinstance(out, PolicyResponse):
            path_trailers(context, path_text(out.path))
            rest = [c for c in out.candidates if c.id != out.answer.id]
            extra = {"id", "seed", "mean_logprob", "pruned_at_tokens"}
            return pb.GenerateScoreResponse(
                completions=[to_proto(c, pb.ScoredCompletion(), exclude=extra) for c in [out.answer, *rest]],
                graph=out.graph,
                winner=out.usage.winner,
                completion_tokens_total=out.usage.completion_tokens,
            )
        return pb.GenerateScoreResponse(completions=[to_proto(c, pb.ScoredCompletion()) for c in out])

    @unary_errors
    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        req = validated(GenerateRequest, fields_of(request))
        prompts = req.prompt_list()
        per_node = await self.graph.generate(request_context(context), prompts, req.model, req.params)
        items = [
            pb.GenerateItem(
                model=node, prompt=p, results=[to_proto(r, pb.Completion(), exclude=TIMINGS) for r in rows[i]]
            )
            for node, rows in per_node.items()
            for i, p in enumerate(prompts)
        ]
        return pb.GenerateResponse(items=items)

    @unary_errors
    async def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:
        req = validated(ClassifyRequest, fields_of(request))
        out = await self.graph.classify(req.texts)
        return pb.ClassifyResponse(results=[to_proto(c, pb.Classification()) for c in out])

    @stream_errors
    async def GenerateScoreStream(self, request: pb.StreamRequest, context: Any) -> AsyncIterator[pb.GraphEvent]:
        """Token, final and score events (and error events of a failed node) as the SSE stream has."""
        req = validated(StreamRequest, fields_of(request))
        events = await self.graph.open_stream(
            request_context(context),
            req.prompt,
            req.model,
            req.params,
            interval_ms=req.intermediate_result_interval_ms,
            score=True,
        )
        try:
            async for ev in events:
                yield json_format.ParseDict(
                    {ev.type: ev.model_dump(mode="json", exclude_none=True, exclude={"type"})}, pb.GraphEvent()
                )
        finally:  # cancelled or deadline passed: close the graph stream, which cancels the nodes' work
            background(events.aclose())
