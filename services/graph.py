"""Entry service `InferenceGraph`: wires generator and classifier nodes from the graph config."""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncGenerator, AsyncIterator

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.responses import StreamingResponse

from graph.compose import Graph, Timeline, background, sse
from graph.errors import GraphError
from graph.params import GenerationParams
from graph.schemas import (
    Classification,
    ClassifyRequest,
    GenerateRequest,
    GenerateScoreRequest,
    ScoredCompletion,
    StreamRequest,
)
from services.classifier import make_classifier_service
from services.common import (
    ValidationErrors, error_response, from_dependency, graph_config, keep_sessions_open, node_error,
    request_id, setup_logging,
)
from services.generator import make_generator_service

log = logging.getLogger("graph")
CONFIG = graph_config()


class DependencyGenerator:
    """A generator node reached through bentoml.depends (local worker or remote Bento by URL)."""

    def __init__(self, dep: Any, node: str) -> None:
        self.dep, self.node = dep, node

    async def generate(self, prompts: list[str], params: GenerationParams, request_id: str) -> Any:
        try:
            return await self.dep.to_async.generate(prompts=prompts, params=params, request_id=request_id)
        except BentoMLException as exc:
            raise from_dependency(exc, self.node) from None

    async def stream(
        self, prompt: str, params: GenerationParams, request_id: str, interval_ms: int
    ) -> AsyncIterator[dict[str, Any]]:
        buffer = ""
        try:
            async for chunk in self.dep.to_async.generate_stream(
                prompt=prompt, params=params, request_id=request_id, interval_ms=interval_ms
            ):
                buffer += chunk
                while "\n" in buffer:
                    line, buffer = buffer.split("\n", 1)
                    if line.strip():
                        yield self._event(json.loads(line))
        except BentoMLException as exc:
            raise from_dependency(exc, self.node) from None

    def _event(self, data: dict[str, Any]) -> dict[str, Any]:
        if "error" not in data:
            return data
        err = data["error"]
        raise node_error(self.node, int(data.get("status", 500)), str(err.get("message", err)), err.get("field"))

    async def cancel(self, request_id: str) -> bool:
        return bool(await self.dep.to_async.cancel(request_id=request_id))


class DependencyClassifier:
    def __init__(self, dep: Any) -> None:
        self.dep = dep

    async def classify(self, texts: list[str]) -> list[Any]:
        try:
            return await self.dep.to_async.classify(texts)
        except BentoMLException as exc:
            raise from_dependency(exc, "classifier") from None


def _depends(service: Any, url: str | None) -> Any:
    return bentoml.depends(url=url) if url else bentoml.depends(service)


GENERATORS = {
    name: (None if node.url else make_generator_service(name, node, CONFIG.generator_threads(name)))
    for name, node in CONFIG.generators.items()
}
CLASSIFIER = None if CONFIG.classifier.url else make_classifier_service(CONFIG.classifier)


class InferenceGraph:
    """Fans a prompt out to every generator at once, then scores all completions in one call."""

    def __init__(self) -> None:
        setup_logging()
        for dep in [*(getattr(self, f"gen_{n}") for n in CONFIG.generators), self.classifier_node]:
            keep_sessions_open(dep)
        self.graph = Graph(
            CONFIG,
            {n: DependencyGenerator(getattr(self, f"gen_{n}"), n) for n in CONFIG.generators},
            DependencyClassifier(self.classifier_node),
        )
        log.info("graph %s ready: generators=%s", CONFIG.name, list(CONFIG.generators))

    @bentoml.api(input_spec=GenerateScoreRequest)
    async def generate_score(self, ctx: bentoml.Context, **fields: Any) -> list[ScoredCompletion]:
        """Generate with every model at once, score each completion (`generated`, `score`, ...)."""
        req = GenerateScoreRequest(**fields)
        rid = request_id(ctx)
        timeline = Timeline()
        try:
            out = await self.graph.generate_score(req.original_sentence, req.params, rid, timeline)
        except GraphError as err:
            return error_response(err, ctx)  # type: ignore[return-value]
        log.info("request_id=%s generate_score spans=%s", rid, json.dumps(_spans(timeline)))
        return out

    @bentoml.api(input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **fields: Any) -> list[dict[str, Any]]:
        """Generate from `prompt` (or `prompts`) on `model` (or every model); one item per model and prompt."""
        req = GenerateRequest(**fields)
        rid = request_id(ctx)
        try:
            prompts = req.prompt_list()
            per_node = await self.graph.generate(prompts, req.model, req.params, rid)
        except GraphError as err:
            return error_response(err, ctx)  # type: ignore[return-value]
        return [
            {"model": node, "prompt": p, "results": rows[i]}
            for node, rows in per_node.items()
            for i, p in enumerate(prompts)
        ]

    @bentoml.api(input_spec=ClassifyRequest)
    async def classify(self, ctx: bentoml.Context, **fields: Any) -> list[Classification]:
        """Score texts with the classifier node: one {label, score, labels} per text."""
        req = ClassifyRequest(**fields)
        request_id(ctx)
        try:
            return await self.graph.classify(req.texts)
        except GraphError as err:
            return error_response(err, ctx)  # type: ignore[return-value]

    @bentoml.api(input_spec=StreamRequest)
    async def generate_stream(self, ctx: bentoml.Context, **fields: Any) -> AsyncGenerator[str, None]:
        """Server-sent events: fragments tagged by model, a final event per completion, then [DONE]."""
        return self._sse(ctx, StreamRequest(**fields), score=False)  # type: ignore[return-value]

    @bentoml.api(input_spec=StreamRequest)
    async def generate_score_stream(self, ctx: bentoml.Context, **fields: Any) -> AsyncGenerator[str, None]:
        """Like generate_stream, plus a `score` event for each completion as soon as it ends."""
        return self._sse(ctx, StreamRequest(**fields), score=True)  # type: ignore[return-value]

    def _sse(self, ctx: bentoml.Context, req: StreamRequest, *, score: bool) -> Any:
        rid = request_id(ctx)
        try:
            events = self.graph.stream(
                req.prompt, req.model, req.params, req.intermediate_result_interval_ms, rid, score
            )
        except GraphError as err:
            return error_response(err, ctx)

        async def body() -> AsyncIterator[str]:
            try:
                async for ev in events:
                    yield sse(ev)
                yield sse("[DONE]")
            finally:  # client gone while we were sending: close the graph stream (cancels the nodes)
                background(events.aclose())

        return StreamingResponse(
            body(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "x-request-id": rid},
        )

    @bentoml.api
    async def node_stats(self) -> dict[str, dict[str, float]]:
        """Each generator node's counters (generated tokens, requests, active rows, queue)."""
        out = {}
        for n in CONFIG.generators:
            out[n] = await getattr(self, f"gen_{n}").to_async.stats()
        return out


def _spans(t: Timeline) -> dict[str, list[float]]:
    return {k: [round(a, 3), round(b, 3)] for k, (a, b) in t.spans.items()}


for _name, _node in CONFIG.generators.items():
    setattr(InferenceGraph, f"gen_{_name}", _depends(GENERATORS[_name], _node.url))
InferenceGraph.classifier_node = _depends(CLASSIFIER, CONFIG.classifier.url)  # type: ignore[attr-defined]
InferenceGraph = bentoml.service(  # type: ignore[misc]
    name="InferenceGraph",
    traffic={"timeout": CONFIG.graph_timeout_s + 5},  # the graph answers its own node_timeout first
)(InferenceGraph)
InferenceGraph.add_asgi_middleware(ValidationErrors)
