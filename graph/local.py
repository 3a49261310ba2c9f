"""In-process node clients: the graph over local engines and classifiers (tests, scripts)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from graph.params import GenerationParams


class LocalGenerator:
    """GeneratorClient over a GenerationEngine in this process."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def generate(self, prompts: list[str], params: GenerationParams, request_id: str) -> list[list[Any]]:
        return list(
            await asyncio.gather(*[self.engine.generate(p, params, request_id=request_id) for p in prompts])
        )

    async def stream(
        self, prompt: str, params: GenerationParams, request_id: str, interval_ms: int
    ) -> AsyncIterator[Any]:
        async for ev in self.engine.stream(prompt, params, request_id=request_id, interval_ms=interval_ms):
            yield ev

    async def cancel(self, request_id: str) -> bool:
        return bool(self.engine.cancel(request_id))


class LocalClassifier:
    """ClassifierClient over a classifier object in this process (runs off the event loop)."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    async def classify(self, texts: list[str]) -> list[Any]:
        return await asyncio.to_thread(self.classifier.classify, texts)
