"""The entry's side of the node boundary: generator and classifier clients over `bentoml.depends`.

A node answers typed results (BentoML rebuilds the pydantic models from the API's declared return
type), streams JSON lines through graph/wire.py, and errors as an ErrorBody; this is the one place
those become GraphErrors again. The same clients serve a local worker and a remote Bento (`url:`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from bentoml.exceptions import BentoMLException
from pydantic import TypeAdapter, ValidationError

from graph.chat_format import Prompt
from graph.errors import ErrorBody, GraphError, NodeFailure, error_from_body, error_from_status
from graph.params import GenerationParams
from graph.results import Classification, Embedding, GenerationResult, StreamEvent
from graph.wire import StreamDecoder

_RESULTS = TypeAdapter(list[list[GenerationResult]])
_CLASSIFICATIONS = TypeAdapter(list[Classification])
_EMBEDDINGS = TypeAdapter(list[Embedding])
_ERROR = TypeAdapter(ErrorBody | list[ErrorBody])  # BentoML wraps a 4xx body in a one-element list
# A node's worker died under the call (kill -9, out of memory): the supervisor starts a new one on the
# same socket, so the same call, sent again, waits for it. The graph's deadline bounds the retries.
WORKER_GONE = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
    ConnectionResetError,
    BrokenPipeError,
)
RETRY_PAUSE_S = 0.5
log = logging.getLogger("graph")


def node_error(exc: BentoMLException, node: str) -> GraphError:
    """The GraphError of a failed node call: the node's own ErrorBody when it sent one."""
    status = int(getattr(exc, "error_code", 500))
    try:
        body = _ERROR.validate_json(str(exc))
    except ValidationError:
        return error_from_status(status, str(exc)[:500], node)
    return error_from_body(body[0] if isinstance(body, list) else body, node)


def _typed(adapter: TypeAdapter[Any], value: Any, node: str) -> Any:
    """Validate what a node answered (remote Bentos answer JSON; local workers, models)."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise NodeFailure(f"node {node!r} answered an unexpected shape: {exc}", node=node) from None


async def _retrying(call: Callable[[], Awaitable[Any]], node: str, request_id: str) -> Any:
    """`call()`, sent again while the node's worker is gone (died, or dropped a kept-alive
    connection), until the graph's deadline (Graph._call) gives up; a node's own error is raised."""
    attempt = 0
    while True:
        try:
            return await call()
        except BentoMLException as exc:
            raise node_error(exc, node) from None
        except aiohttp.ClientConnectorError as exc:  # nothing listens there (a remote node is down): no retry
            raise NodeFailure(f"node {node!r} cannot be reached: {exc}", node=node) from None
        except WORKER_GONE as exc:
            attempt += 1
            log.warning(
                "request_id=%s node %s: worker gone (%s); retry %d once it is back",
                request_id,
                node,
                type(exc).__name__,
                attempt,
            )
            await asyncio.sleep(min(RETRY_PAUSE_S * attempt, 5.0))


async def _events(chunks: AsyncIterator[str | bytes], node: str) -> AsyncIterator[StreamEvent]:
    """A node stream's chunks -> its StreamEvents (graph/wire.py); the node's error is raised."""
    decoder = StreamDecoder(node)
    try:
        async for chunk in chunks:
            for event in decoder.feed(chunk):
                yield event
    except BentoMLException as exc:
        raise node_error(exc, node) from None
    decoder.close()


class GeneratorNodeClient:
    """A generator node reached through bentoml.depends (local worker or remote Bento by URL).
    Non-streaming calls are sent again when the node's worker died under them (same params and
    seed: the same answer); a stream cut off that way ends with the error."""

    def __init__(self, dep: Any, node: str) -> None:
        self.dep, self.node = dep, node

    async def generate(
        self, prompts: list[Prompt], params: GenerationParams, request_id: str
    ) -> list[list[GenerationResult]]:
        out = await _retrying(
            lambda: self.dep.to_async.generate(prompts=prompts, params=params, request_id=request_id),
            self.node,
            request_id,
        )
        return _typed(_RESULTS, out, self.node)

    def stream(
        self, prompt: Prompt, params: GenerationParams, request_id: str, interval_ms: int
    ) -> AsyncIterator[StreamEvent]:
        chunks = self.dep.to_async.generate_stream(
            prompt=prompt, params=params, request_id=request_id, interval_ms=interval_ms
        )
        return _events(chunks, self.node)

    async def cancel(self, request_id: str) -> bool:
        return bool(await self.dep.to_async.cancel(request_id=request_id))

    async def count_tokens(self, prompt: str, template: bool = True) -> int:
        call = lambda: self.dep.to_async.count_tokens(prompt=prompt, template=template)  # noqa: E731
        return int(await _retrying(call, self.node, ""))

    async def stats(self) -> dict[str, float]:
        return dict(await self.dep.to_async.stats())


class ClassifierNodeClient:
    def __init__(self, dep: Any) -> None:
        self.dep = dep

    async def classify(self, texts: list[str]) -> list[Classification]:
        out = await _retrying(lambda: self.dep.to_async.classify(texts), "classifier", "")
        return _typed(_CLASSIFICATIONS, out, "classifier")

    async def embed(self, texts: list[str]) -> list[Embedding]:
        out = await _retrying(lambda: self.dep.to_async.embed(texts), "classifier", "")
        return _typed(_EMBEDDINGS, out, "classifier")
