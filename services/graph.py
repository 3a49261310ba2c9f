"""Entry service `InferenceGraph`: the graph of the config's nodes, and its HTTP JSON face.

The DAG, for every request:

    prompt --+--> generator node 1 --+
             +--> generator node 2 --+--> classifier node (one batched call) --> scored completions
             +--> ...              --+
             (asyncio.gather in graph/entry/compose.py `Graph`; one node failing cancels the others)

Each node is its own BentoML service (own worker) from the graph config, or a running Bento at the
node's `url:`. This shell only adapts HTTP JSON to `Graph` calls; errors become HTTP in one place
(services/common.py `http_errors`). The gRPC faces (graph/entry/faces/grpc_server.py) run in this worker too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import bentoml

from graph.entry.auth import ApiKeys
from graph.entry.chat.responses import ResponseStore
from graph.entry.compose import Graph, Timeline, sse
from graph.entry.faces.embeddings import EmbedRequest, EmbedResponse
from graph.entry.faces.grpc_server import GrpcFaces
from graph.entry.faces.responses_face import ResponsesFace
from graph.entry.policies import metrics as branch_metrics
from graph.entry.policies.schemas import PolicyResponse
from graph.entry.schemas import (
    Classification,
    ClassifyRequest,
    GenerateItem,
    GenerateRequest,
    GenerateScoreRequest,
    NodeStats,
    ScoredCompletion,
    ScoreStreamRequest,
    StreamRequest,
)
from graph.entry.tasks import background
from services.anthropic_app import anthropic_response, anthropic_routes
from services.chat import ChatEndpoints, open_chat
from services.classifier import make_classifier_service
from services.clients import ClassifierNodeClient, GeneratorNodeClient
from services.common import (
    graph_config,
    http_errors,
    keep_sessions_open,
    request_context,
    setup_logging,
    sse_response,
    with_dependencies,
)
from services.edge import (
    DocsContract,
    Draining,
    JsonOnly,
    KeyCheck,
    NodeHealth,
    ReadyProbe,
    RequestContexts,
    ValidationErrors,
)
from services.generator import make_generator_service
from services.openai_app import OpenAIFace, make_openai_app, openai_response
from services.playground_face import playground_app
from services.remote_nodes import install as install_remote_node
from services.responses_app import responses_routes
from services.shutdown import Drain

log = logging.getLogger("graph")
CONFIG = graph_config()
KEYS = ApiKeys(CONFIG.auth)  # a key source that is configured but missing fails here, at start-up
HEALTH = NodeHealth()
DRAIN = Drain(CONFIG.shutdown_grace_s)


def use_bentoml_tracing() -> None:
    """BentoML's tracer provider (its `tracing:` configuration: exporter, sample rate) as this process's."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from opentelemetry import trace

    trace.set_tracer_provider(BentoMLContainer.tracer_provider.get())


def _node(service: Any, url: str | None) -> Any:
    """A node's dependency: its own service here, or the Bento already running at `url`."""
    return bentoml.depends(url=url) if url else bentoml.depends(service)


# The graph's nodes: every generator of the config, then the classifier.
GENERATORS = {
    name: _node(None if node.url else make_generator_service(name, node, CONFIG.generator_threads(name)), node.url)
    for name, node in CONFIG.generators.items()
}
CLASSIFIER = _node(None if CONFIG.classifier.url else make_classifier_service(CONFIG.classifier), CONFIG.classifier.url)
OPENAI = make_openai_app()  # the OpenAI-compatible face under /v1 (services/openai_app.py)
BRANCHES = bentoml.metrics.Counter(
    name="graph_branch",
    documentation="Steps of named graphs: the branch each step chose, served with, failed over or refused.",
    labelnames=["graph", "kind", "branch", "outcome"],
)
# Anthropic's Messages API and OpenAI's Responses API under the same /v1 (services/anthropic_app.py, responses_app.py)
OPENAI.router.routes.extend([*anthropic_routes(), *responses_routes()])
# the edge's refusals (401, 415, 429) under /v1 in its face's error shape (first matching prefix)
FACES = {"/v1/messages": anthropic_response, "/v1/": openai_response}


@bentoml.service(
    name="InferenceGraph",
    traffic={"timeout": CONFIG.graph_timeout_s + 5},  # the graph answers its own node_timeout first
)
@with_dependencies({**GENERATORS, "classifier": CLASSIFIER})
@bentoml.asgi_app(playground_app(CONFIG), path="/")  # GET /graph and the page at /playground
@bentoml.asgi_app(OPENAI, path="/v1")  # mounted before "/" (decorators apply bottom-up), so /v1 is matched first
class InferenceGraph(ChatEndpoints):
    """Fans a prompt out to every generator at once, then scores all completions in one call."""

    def __init__(self) -> None:
        setup_logging()
        use_bentoml_tracing()  # node-call spans (graph/entry/tracing.py) go where BentoML's `tracing:` config says
        generators = {
            name: GeneratorNodeClient(dep.__get__(self, type(self)), name, CONFIG.node_retries)
            for name, dep in GENERATORS.items()
        }
        classifier = ClassifierNodeClient(CLASSIFIER.__get__(self, type(self)), CONFIG.node_retries)
        for client in [*generators.values(), classifier]:
            keep_sessions_open(client.dep)
        # nodes at a `url:`: their client timeout from the node's config, and an entry that starts before them
        for name, node in [*CONFIG.generators.items(), ("classifier", CONFIG.classifier)]:
            if node.url:
                dep = classifier.dep if name == "classifier" else generators[name].dep
                install_remote_node(dep, name, node.resources.timeout_s)
        self.nodes = generators
        HEALTH.nodes = {name: client.dep for name, client in [*generators.items(), ("classifier", classifier)]}
        self.graph = Graph(CONFIG, generators, classifier)
        branch_metrics.add_sink(
            lambda graph, kind, branch, outcome: BRANCHES.labels(
                graph=graph, kind=kind, branch=branch, outcome=outcome
            ).inc()
        )
        self.chat = open_chat(self.graph)  # /infer, /chat...: services/chat.py
        OPENAI.state.face = OpenAIFace(self.graph)
        OPENAI.state.responses = ResponsesFace(OPENAI.state.face, ResponseStore(self.chat.store))
        self.grpc = GrpcFaces(self.graph, CONFIG.grpc, keys=KEYS)
        log.info("graph %s ready: generators=%s", CONFIG.name, list(CONFIG.generators))

    @bentoml.on_startup
    async def _on_startup(self) -> None:
        DRAIN.install(asyncio.get_running_loop(), self.graph.cancel_inflight)

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """The gRPC faces (config `grpc:`), on the loop the HTTP APIs and the node clients use."""
        await self.grpc.start()

    @bentoml.api(input_spec=GenerateScoreRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def generate_score(self, ctx: bentoml.Context, **fields: Any) -> list[ScoredCompletion] | PolicyResponse:
        """Graph `all`: every model at once, each completion scored (`generated`, `score`, ...); a named graph
        (`graph`): its decision (answer, candidates, trace). `deadline_ms`: answer in time."""
        req = GenerateScoreRequest(**fields)
        rctx = request_context(ctx).asking(req.deadline_ms).tagged(req.user, req.metadata)
        timeline = Timeline()
        out = await self.graph.generate_score(
            rctx, req.original_sentence, req.params, graph=req.graph, timeline=timeline
        )
        log.info("request_id=%s generate_score spans=%s", rctx.request_id, json.dumps(timeline.rounded()))
        return out

    @bentoml.api(input_spec=GenerateRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def generate(self, ctx: bentoml.Context, **fields: Any) -> list[GenerateItem]:
        """Generate from `prompt` (or `prompts`) on `model` (or every model); one item per model and prompt."""
        req = GenerateRequest(**fields)
        prompts = req.prompt_list()
        per_node = await self.graph.generate(request_context(ctx), prompts, req.model, req.params)
        return [
            GenerateItem(model=node, prompt=p, results=rows[i])
            for node, rows in per_node.items()
            for i, p in enumerate(prompts)
        ]

    @bentoml.api(input_spec=ClassifyRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def classify(self, ctx: bentoml.Context, **fields: Any) -> list[Classification]:
        """Score texts with the classifier node: one {label, score, labels} per text."""
        req = ClassifyRequest(**fields)
        return await self.graph.classify(req.texts)

    @bentoml.api(input_spec=EmbedRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def embed(self, ctx: bentoml.Context, **fields: Any) -> EmbedResponse:
        """Sentence embeddings of the classifier node's encoder: one unit-length vector per text."""
        req = EmbedRequest(**fields)
        return EmbedResponse.of(await self.graph.embed(request_context(ctx), req.texts))

    @bentoml.api(input_spec=StreamRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def generate_stream(self, ctx: bentoml.Context, **fields: Any) -> AsyncGenerator[str, None]:
        """Server-sent events: fragments tagged by model, a final event per completion, then [DONE]."""
        return await self._sse(ctx, StreamRequest(**fields), score=False)

    @bentoml.api(input_spec=ScoreStreamRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def generate_score_stream(self, ctx: bentoml.Context, **fields: Any) -> AsyncGenerator[str, None]:
        """Like generate_stream, plus a `score` event for each completion as soon as it ends; a named graph
        (`graph`) streams its candidates, pruning rounds, gates and its decision."""
        return await self._sse(ctx, ScoreStreamRequest(**fields), score=True)

    async def _sse(self, ctx: bentoml.Context, req: StreamRequest, *, score: bool) -> Any:
        """Validated and admitted now (bad input is a 4xx and a node's refusal a 429 with Retry-After,
        not a broken stream); the events flow afterwards."""
        graph, deadline = (req.graph, req.deadline_ms) if isinstance(req, ScoreStreamRequest) else (None, None)
        rctx = request_context(ctx).asking(deadline)
        if isinstance(req, ScoreStreamRequest):
            rctx = rctx.tagged(req.user, req.metadata)
        interval = req.intermediate_result_interval_ms
        events = await self.graph.open_stream(
            rctx, req.prompt, req.model, req.params, interval_ms=interval, score=score, graph=graph
        )

        async def body() -> AsyncIterator[str]:
            try:
                async for ev in events:
                    yield sse(ev)
                yield sse("[DONE]")
            finally:  # client gone while we were sending: close the graph stream (cancels the nodes)
                background(events.aclose())

        return sse_response(body(), rctx.request_id)

    @bentoml.api
    async def node_stats(self) -> dict[str, NodeStats]:
        """Each generator node's counters (generated tokens, requests, active rows, queue)."""
        names = list(self.nodes)
        stats = await asyncio.gather(*[self.nodes[n].stats() for n in names])
        return {n: NodeStats.model_validate(s) for n, s in zip(names, stats)}


# The HTTP edge (services/edge.py), outermost first: Starlette puts the first one added outside.
InferenceGraph.add_asgi_middleware(RequestContexts, timeout_s=float(CONFIG.graph_timeout_s))  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
InferenceGraph.add_asgi_middleware(Draining, drain=DRAIN)  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
InferenceGraph.add_asgi_middleware(ReadyProbe, health=HEALTH)  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
InferenceGraph.add_asgi_middleware(
    DocsContract,  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
    keys=KEYS.enabled,
    models=list(CONFIG.generators),
    max_chars=CONFIG.prompt.max_chars,
    max_new_tokens=min(n.max_new_tokens_limit for n in CONFIG.generators.values()),
    defaults=[n.defaults for n in CONFIG.generators.values()],
    graphs=tuple(CONFIG.policies.names()),
    sampling=tuple(CONFIG.policies.sampling()),
    default_graph=CONFIG.policies.default,
)
InferenceGraph.add_asgi_middleware(KeyCheck, keys=KEYS, faces=FACES)  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
InferenceGraph.add_asgi_middleware(JsonOnly, faces=FACES)  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
InferenceGraph.add_asgi_middleware(ValidationErrors, faces=FACES)  # pyright: ignore[reportArgumentType]  bentoml's stub types a factory
