"""The entry's side of the node boundary: generator and classifier clients over `bentoml.depends`.

A node answers typed results (BentoML rebuilds the pydantic models from the API's declared return
type), streams JSON lines through graph/wire.py, and errors as an ErrorBody; this is the one place
those become GraphErrors again. The same clients serve a local worker and a remote Bento (`url:`).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from bentoml.exceptions import BentoMLException
from pydantic import TypeAdapter, ValidationError

from graph.errors import ErrorBody, GraphError, NodeFailure, error_from_body, error_from_status
from graph.params import GenerationParams
from graph.results import Classification, GenerationResult, StreamEvent
from graph.wire import StreamDecoder

_RESULTS = TypeAdapter(list[list[GenerationResult]])
_CLASSIFICATIONS = TypeAdapter(list[Classification])
_ERROR = TypeAdapter(ErrorBody | list[ErrorBody])  # BentoML wraps a 4xx body in a one-element list


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


class GeneratorNodeClient:
    """A generator node reached through bentoml.depends (local worker or remote Bento by URL)."""

    def __init__(self, dep: Any, node: str) -> None:
        self.dep, self.node = dep, node

    async def generate(self, prompts: list[str], params: GenerationParams, request_id: str) -> list[list[GenerationResult]]:
        try:
            out = await self.dep.to_async.generate(prompts=prompts, params=params, request_id=request_id)
        except BentoMLException as exc:
            raise node_error(exc, self.node) from None
        return _typed(_RESULTS, out, self.node)

    async def stream(
        self, prompt: str, params: GenerationParams, request_id: str, interval_ms: int
    ) -> AsyncIterator[StreamEvent]:
        decoder = StreamDecoder(self.node)
        try:
            async for chunk in self.dep.to_async.generate_stream(
                prompt=prompt, params=params, request_id=request_id, interval_ms=interval_ms
            ):
                for event in decoder.feed(chunk):
                    yield event
        except BentoMLException as exc:
            raise node_error(exc, self.node) from None
        decoder.close()

    async def cancel(self, request_id: str) -> bool:
        return bool(await self.dep.to_async.cancel(request_id=request_id))

    async def stats(self) -> dict[str, float]:
        return dict(await self.dep.to_async.stats())


class ClassifierNodeClient:
    def __init__(self, dep: Any) -> None:
        self.dep = dep

    async def classify(self, texts: list[str]) -> list[Classification]:
        try:
            out = await self.dep.to_async.classify(texts)
        except BentoMLException as exc:
            raise node_error(exc, "classifier") from None
        return _typed(_CLASSIFICATIONS, out, "classifier")
