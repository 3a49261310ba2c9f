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
from graph.errors import (
    ErrorBody,
    GraphError,
    NodeFailure,
    NodeTimeout,
    NodeUnavailable,
    error_from_body,
    error_from_status,
)
from graph.params import GenerationParams
from graph.results import Classification, Embedding, GenerationResult, StreamEvent
from graph.wire import StreamDecoder
from services import remote_nodes

_RESULTS = TypeAdapter(list[list[GenerationResult]])
_CLASSIFICATIONS = TypeAdapter(list[Classification])
_EMBEDDINGS = TypeAdapter(list[Embedding])
_ERROR = TypeAdapter(ErrorBody | list[ErrorBody])  # BentoML wraps a 4xx body in a one-element list
# A node's worker died under the call (kill -9, out of memory): the supervisor starts a new one on the
# same socket. The call is sent again at most `retries` times (config node_retries), each once the node
# answers its readiness probe: a request that itself kills the worker takes it down a bounded number of times.
WORKER_GONE = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
    ConnectionResetError,
    BrokenPipeError,
)
READY_POLL_S = 0.25
log = logging.getLogger("graph")


def node_error(exc: BentoMLException, node: str) -> GraphError:
    """The GraphError of a failed node call: the node's own ErrorBody when it sent one."""
    status = int(getattr(exc, "error_code", 500))
    try:
        body = _ERROR.validate_json(str(exc))
    except ValidationError:
        return error_from_status(status, str(exc)[:500], node)
    return error_from_body(body[0] if isinstance(body, list) else body, node)


def client_timeout(node: str, dep: Any) -> NodeTimeout:
    """A remote node's call cut by the entry's HTTP client timeout (services/remote_nodes.py), not by the
    request's deadline: said as such, naming the node."""
    seconds = remote_nodes.client_timeout_s(dep)
    limit = f"{seconds:.1f} s, the node's resources.timeout_s plus 1%" if seconds is not None else "its timeout"
    return NodeTimeout(
        f"node {node!r} did not answer within the entry's HTTP client timeout ({limit}): the call was cut "
        "before the request's deadline",
        node=node,
    )


def _typed(adapter: TypeAdapter[Any], value: Any, node: str) -> Any:
    """Validate what a node answered (remote Bentos answer JSON; local workers, models)."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise NodeFailure(f"node {node!r} answered an unexpected shape: {exc}", node=node) from None


async def _until_ready(dep: Any, node: str) -> None:
    """Wait until the node answers its readiness probe (its new worker is up); the graph's deadline bounds it.
    A local (in-process) node has no probe: it is ready. A node whose address refuses connections (a remote
    node's process is gone, not restarting a worker behind its socket) is unavailable now: a 503 naming it,
    not a wait until the deadline."""
    is_ready = getattr(dep, "is_ready", None)
    while is_ready is not None:
        try:
            if await is_ready(timeout=1):
                return
        except aiohttp.ClientConnectorError as exc:
            raise NodeUnavailable(f"node {node!r} cannot be reached: {exc}", node=node) from None
        except Exception:  # disconnected or timed out while the worker restarts: not ready yet
            pass
        await asyncio.sleep(READY_POLL_S)


async def _retrying(call: Callable[[], Awaitable[Any]], node: str, request_id: str, dep: Any, retries: int) -> Any:
    """`call()`, sent again at most `retries` times when the node's worker went away under it, each
    once the node is ready again; a node's own error is raised, and so is a NodeFailure naming the
    node once the retries are spent."""
    failures = 0
    await remote_nodes.connected(dep)
    while True:
        try:
            return await call()
        except BentoMLException as exc:
            raise node_error(exc, node) from None
        except aiohttp.ClientConnectorError as exc:  # nothing listens there (a remote node is down): no retry
            raise NodeUnavailable(f"node {node!r} cannot be reached: {exc}", node=node) from None
        except TimeoutError:  # the HTTP client's own timeout (the deadline cancels the call instead): no retry
            raise client_timeout(node, dep) from None
        except WORKER_GONE as exc:
            failures += 1
            if failures > retries:
                raise NodeFailure(
                    f"node {node!r} failed {failures} times under request {request_id} (its worker went away: "
                    f"{type(exc).__name__}); not sent again (node_retries={retries})",
                    node=node,
                ) from None
            log.warning(
                "request_id=%s node %s: worker gone (%s); retry %d of %d once it answers its readiness probe",
                request_id,
                node,
                type(exc).__name__,
                failures,
                retries,
            )
            await _until_ready(dep, node)


async def _events(
    chunks: AsyncIterator[str | bytes], node: str, on_admitted: Callable[[], None] | None = None, dep: Any = None
) -> AsyncIterator[StreamEvent]:
    """A node stream's chunks -> its StreamEvents (graph/wire.py); the node's error is raised.
    `on_admitted()` once the node's admission line (or, from a node that sends none, its first event) arrives."""
    decoder = StreamDecoder(node)
    try:
        async for chunk in chunks:
            events = decoder.feed(chunk)
            if on_admitted is not None and (decoder.admitted or events):
                on_admitted()
                on_admitted = None
            for event in events:
                yield event
    except BentoMLException as exc:
        raise node_error(exc, node) from None
    except TimeoutError:
        raise client_timeout(node, dep) from None
    decoder.close()


class GeneratorNodeClient:
    """A generator node reached through bentoml.depends (local worker or remote Bento by URL).
    Non-streaming calls are sent again (at most `retries` times) when the node's worker died under
    them (same params and seed: the same answer); a stream cut off that way ends with the error."""

    def __init__(self, dep: Any, node: str, retries: int = 1) -> None:
        self.dep, self.node, self.retries = dep, node, retries

    async def generate(
        self, prompts: list[Prompt], params: GenerationParams, request_id: str, scope: str = "", reserve_s: float = 0.0
    ) -> list[list[GenerationResult]]:
        out = await _retrying(
            lambda: self.dep.to_async.generate(
                prompts=prompts, params=params, request_id=request_id, scope=scope, reserve_s=reserve_s
            ),
            self.node,
            request_id,
            self.dep,
            self.retries,
        )
        return _typed(_RESULTS, out, self.node)

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
        async def chunks() -> AsyncIterator[str | bytes]:
            await remote_nodes.connected(self.dep)
            async for chunk in self.dep.to_async.generate_stream(
                prompt=prompt,
                params=params,
                request_id=request_id,
                interval_ms=interval_ms,
                scope=scope,
                reserve_s=reserve_s,
            ):
                yield chunk

        return _events(chunks(), self.node, on_admitted, self.dep)

    async def cancel(self, request_id: str) -> bool:
        remote = remote_nodes.of(self.dep)
        if remote is not None and not remote.connected:
            return False  # never reached since start-up: nothing of this request runs there
        return bool(await self.dep.to_async.cancel(request_id=request_id))

    async def count_tokens(self, prompt: str, template: bool = True) -> int:
        count = await _retrying(
            lambda: self.dep.to_async.count_tokens(prompt=prompt, template=template),
            self.node,
            "",
            self.dep,
            self.retries,
        )
        return int(count)

    async def stats(self) -> dict[str, float | str]:
        await remote_nodes.connected(self.dep)
        return dict(await self.dep.to_async.stats())


class ClassifierNodeClient:
    def __init__(self, dep: Any, retries: int = 1) -> None:
        self.dep, self.retries = dep, retries

    async def classify(self, texts: list[str]) -> list[Classification]:
        out = await _retrying(lambda: self.dep.to_async.classify(texts), "classifier", "", self.dep, self.retries)
        return _typed(_CLASSIFICATIONS, out, "classifier")

    async def embed(self, texts: list[str]) -> list[Embedding]:
        out = await _retrying(lambda: self.dep.to_async.embed(texts), "classifier", "", self.dep, self.retries)
        return _typed(_EMBEDDINGS, out, "classifier")
