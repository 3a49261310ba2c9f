"""In-process node clients: the graph over local engines and classifiers (tests, scripts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from graph.chat_format import Prompt
from graph.params import GenerationParams
from graph.results import Classification, Embedding, GenerationResult, StreamEvent


class LocalGenerator:
    """GeneratorClient over a GenerationEngine in this process."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def generate(
        self, prompts: list[Prompt], params: GenerationParams, request_id: str, scope: str = "", reserve_s: float = 0.0
    ) -> list[list[GenerationResult]]:
        return list(
            await asyncio.gather(
                *[
                    self.engine.generate(p, params, request_id=request_id, scope=scope, reserve_s=reserve_s)
                    for p in prompts
                ]
            )
        )

    async def stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        request_id: str,
        interval_ms: int,
        on_admitted: Callable[[], None] | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> AsyncIterator[StreamEvent]:
        events = self.engine.open_stream(
            prompt, params, request_id=request_id, interval_ms=interval_ms, scope=scope, reserve_s=reserve_s
        )
        try:
            if on_admitted is not None:
                on_admitted()
            async for ev in events:
                yield ev
        finally:
            await events.aclose()

    async def cancel(self, request_id: str) -> bool:
        return bool(self.engine.cancel(request_id))

    async def count_tokens(self, prompt: str, template: bool = True) -> int:
        return int(self.engine.count_tokens(prompt, template))

    async def stats(self) -> dict[str, float | str]:
        return {k: v if isinstance(v, str) else float(v) for k, v in self.engine.stats().items()}


class LocalClassifier:
    """ClassifierClient over a classifier object in this process (runs off the event loop)."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    async def classify(self, texts: list[str]) -> list[Classification]:
        return await asyncio.to_thread(self.classifier.classify, texts)

    async def embed(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self.classifier.embeddings, texts)


def build_local_graph(config: Any, **lookups: Any) -> tuple[Any, dict[str, Any]]:
    """The whole graph of `config` in this process: (Graph, {node: GenerationEngine}).

    Engines are started; close them when done. `lookups` are passed to the loaders (store_lookup,
    embedded_lookup) for BentoML-store and embedded model references."""
    from graph.entry.compose import Graph
    from graph.models.gguf_model import prepare_backend
    from graph.models.loading import load_classifier
    from graph.models.node_engine import engine_for_node

    prepare_backend(config.generators, **lookups)  # one ggml CPU variant that every GGUF node's file runs on
    engines = {}
    for name, node in config.generators.items():
        engines[name] = engine_for_node(name, node, threads=config.generator_threads(name), **lookups)
        engines[name].warmup()
    classifier = LocalClassifier(load_classifier(config.classifier, **lookups))
    graph = Graph(config, {n: LocalGenerator(e) for n, e in engines.items()}, classifier)
    return graph, engines
