"""The one place a graph error becomes a gRPC status (both gRPC services, unary and streaming).

validation -> INVALID_ARGUMENT (the message names the field; `x-error-field` trailer too)
overloaded, rate_limited -> RESOURCE_EXHAUSTED (`retry-after` trailer, seconds); unavailable -> UNAVAILABLE
node_timeout -> DEADLINE_EXCEEDED
node_failure -> UNAVAILABLE (the `x-error-node` trailer names the node)
refused (a named graph's guard) -> FAILED_PRECONDITION
unauthorized -> UNAUTHENTICATED; anything else -> INTERNAL
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import grpc
from pydantic import BaseModel, ValidationError

from graph.errors import ErrorBody, GraphError, InvalidRequest
from graph.field_errors import describe, field_errors

log = logging.getLogger("graph")
M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")

_CODES = {
    "validation": grpc.StatusCode.INVALID_ARGUMENT,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "node_timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "node_failure": grpc.StatusCode.UNAVAILABLE,
    "node_unavailable": grpc.StatusCode.UNAVAILABLE,
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "refused": grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(body: ErrorBody) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """The status code and trailing metadata of an error (by its kind, as ErrorBody carries it)."""
    trailers = [("x-error-kind", body.error)]
    if body.field:
        trailers.append(("x-error-field", body.field))
    if body.node:
        trailers.append(("x-error-node", body.node))
    if body.retry_after_s is not None:
        trailers.append(("retry-after", str(body.retry_after_s)))
    return _CODES.get(body.error, grpc.StatusCode.INTERNAL), tuple(trailers)


async def abort(context: Any, err: GraphError) -> None:
    """End the call (a grpc.aio.ServicerContext) with `err`'s status; raises, as context.abort does."""
    code, trailers = status_of(err.body())
    await context.abort(code, err.message, trailing_metadata=trailers)


def validated(model: type[M], data: dict[str, Any]) -> M:
    """`data` (a request message's fields) as `model`, or InvalidRequest naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors())
        raise InvalidRequest(describe(errors), field=errors[0][0] or None) from None


def unary_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a unary servicer method `(self, request, context)`: a GraphError it raises ends the call
    with its status."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except GraphError as err:
            await abort(args[-1], err)
            raise  # not reached: abort raises

    return wrapper


def stream_errors(method: Callable[P, AsyncIterator[R]]) -> Callable[P, AsyncIterator[R]]:
    """Wrap a server-streaming servicer method the same way (an error before or mid-stream)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        try:
            async for message in method(*args, **kwargs):
                yield message
        except GraphError as err:
            await abort(args[-1], err)

    return wrapper
