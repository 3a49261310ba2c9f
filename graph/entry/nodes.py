"""What the graph needs of its nodes: the generator and classifier client protocols (a local engine or a
BentoML dependency answers them; graph/entry/local.py and services/clients.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from graph.chat_format import Prompt
from graph.params import GenerationParams
from graph.results import Classification, Embedding, GenerationResult, StreamEvent


class GeneratorClient(Protocol):
    """What the graph needs from a generator node (a local engine or a BentoML dependency)."""

    async def generate(
        self, prompts: list[Prompt], params: GenerationParams, request_id: str, scope: str = "", reserve_s: float = 0.0
    ) -> list[list[GenerationResult]]:
        """Results per prompt; `scope` (the caller's API key id): whose kept prompts these may start from."""
        ...

    def stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        request_id: str,
        interval_ms: int,
        on_admitted: Callable[[], None] | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> AsyncIterator[StreamEvent]:
        """The request's events; `on_admitted()` is called once the node has accepted the request
        (before its first event; a refusal is raised instead, before any event)."""
        ...

    async def cancel(self, request_id: str) -> bool: ...

    async def count_tokens(self, prompt: str, template: bool = True) -> int: ...

    async def stats(self) -> dict[str, float | str]: ...  # numbers; a hybrid node adds its runtimes' names


class ClassifierClient(Protocol):
    async def classify(self, texts: list[str]) -> list[Classification]: ...

    async def embed(self, texts: list[str]) -> list[Embedding]: ...
