"""The public API of a generator node's engine, shared by GenerationEngine (one runtime) and HybridEngine (two).

    engine.warmup()
    results = await engine.generate(prompt, params, request_id="r1")
    async for event in engine.stream(prompt, params, interval_ms=50): ...
    events = engine.open_stream(prompt, params)   # submitted now: a refusal raises here
    engine.cancel("r1"); engine.stats(); engine.close()

What the node's services (services/generator.py, graph/entry/local.py) call, whichever engine a config builds
(graph/models/node_engine.py). `stream` is written once here over `open_stream`: closing the iterator early (aclose,
or cancelling the consuming task) closes the stream, which cancels the request and frees its rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Protocol

from graph.chat_format import ChatMessage, ChatPrompt, FittedChat
from graph.params import GenerationParams
from graph.results import GenerationResult, StreamEvent

Prompt = str | list[int] | ChatPrompt  # text, token ids used as they are, or a chat the node fits


class EventStream(Protocol):
    """A submitted request's events; aclose() cancels the request's rows, started or not."""

    def __aiter__(self) -> EventStream: ...

    async def __anext__(self) -> StreamEvent: ...

    async def aclose(self) -> None: ...


class NodeEngine(ABC):
    """A generator node's engine: requests in, results and stream events out, over one or more runtimes."""

    name: str
    tokenizer: Any
    chat_template: bool
    max_batch_size: int
    max_prompt_tokens: int

    # -- lifecycle -----------------------------------------------------------------------------------
    @abstractmethod
    def start(self) -> None:
        """Start decoding (idempotent; does nothing after close())."""

    @abstractmethod
    def close(self) -> None:
        """Stop for good; waiting and running requests fail with NodeFailure."""

    @abstractmethod
    def warmup(self, timeout: float = 120.0) -> bool:
        """Start and wait for the warm-up; False if it took longer than `timeout` seconds."""

    # -- requests ------------------------------------------------------------------------------------
    @abstractmethod
    async def generate(
        self,
        prompt: Prompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> list[GenerationResult]:
        """All `params.num_return_sequences` completions of `prompt`, in index order."""

    @abstractmethod
    def open_stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        interval_ms: int = 0,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> EventStream:
        """`stream` with the request submitted now: a refusal (Overloaded, InvalidRequest) raises here, before
        the caller has sent anything; the stream's aclose() cancels the request, iterated or not."""

    async def stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        interval_ms: int = 0,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> AsyncIterator[StreamEvent]:
        """Text fragments per sequence index, at most one event per `interval_ms` per sequence;
        a sequence's final event (carrying its result) is sent at once. Fragments of a sequence
        concatenate to its final text and never run past a stop string. Closing the iterator
        early (aclose, or cancelling the consuming task) cancels the request and frees its rows."""
        events = self.open_stream(
            prompt, params, request_id=request_id, interval_ms=interval_ms, scope=scope, reserve_s=reserve_s
        )
        try:
            async for ev in events:
                yield ev
        finally:
            await events.aclose()

    @abstractmethod
    def cancel(self, request_id: str) -> bool:
        """Cancel every row of the request(s) with this id; False if none is queued or running."""

    # -- prompts -------------------------------------------------------------------------------------
    @abstractmethod
    def count_tokens(self, text: str, template: bool = True) -> int:
        """Tokens `text` takes as a prompt (with the node's chat template unless `template` is False)."""

    @abstractmethod
    def prompt_limit(self, params: GenerationParams) -> int:
        """Prompt tokens a request with `params` may send."""

    @abstractmethod
    def fit_chat(self, messages: list[ChatMessage], params: GenerationParams) -> FittedChat:
        """`messages` as this node's prompt ids, the oldest cut until they fit `prompt_limit`."""

    # -- what it says --------------------------------------------------------------------------------
    @property
    @abstractmethod
    def runtime_name(self) -> str:
        """What the node's start-up line and /node_stats say, e.g. "onnx int8 (onnxruntime 1.32.0)"."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters since start and gauges (/node_stats, Prometheus)."""
