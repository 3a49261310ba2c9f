"""Shared pieces of the BentoML shells: the graph config from --arg-file, the HTTP error boundary, request contexts."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import AsyncIterable, Awaitable, Callable
from functools import lru_cache
from typing import Any, ParamSpec, TypeVar

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from graph.config import GraphConfig, config_from_arguments
from graph.entry.context import RequestContext
from graph.errors import GraphError, InvalidRequest, Overloaded

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("graph")


def setup_logging() -> None:
    """Show the `graph` loggers' INFO lines in `bentoml serve` output.

    BentoML's server logging config sets the root to WARNING and disables loggers created before
    it ran; every service calls this in __init__, which runs after that config."""
    manager = logging.root.manager
    for name, logger in list(manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == "graph" or name.startswith("graph.")):
            logger.disabled = False
    logging.getLogger("graph").setLevel(logging.INFO)


def keep_sessions_open(dependency: Any) -> bool:
    """Stop BentoML (1.4.30+) from closing a dependency client's HTTP session every 100 requests
    or 300 s: it closes it with requests still in flight, which then fail ("Cannot write to closing
    transport", "Server disconnected"; bentoml/BentoML#5540, #5698). Measured here: 19 of 64
    requests failed at 32 concurrent clients before this. Uses a private attribute, so it is
    checked: False (and nothing changed) where the client has no such session manager."""
    manager = getattr(getattr(dependency, "to_async", None), "_session_manager", None)
    if manager is None or not hasattr(manager, "max_requests") or not hasattr(manager, "max_age"):
        log.warning("could not keep the sessions of %r open; expect errors under load", dependency)
        return False
    manager.max_requests = sys.maxsize
    manager.max_age = float("inf")
    return True


@lru_cache(maxsize=1)
def graph_config() -> GraphConfig:
    """The graph config given by `bentoml serve --arg-file configs/X.yaml` (default.yaml if none)."""
    return config_from_arguments(vars(bentoml.use_arguments()))


def error_response(err: GraphError, ctx: bentoml.Context | None = None) -> JSONResponse:
    """The one place a GraphError becomes an HTTP response (status, ErrorBody, Retry-After)."""
    headers = {}
    if isinstance(err, Overloaded):
        headers["Retry-After"] = str(err.retry_after_s)
    if ctx is not None:  # BentoML copies ctx's status and headers onto returned responses
        ctx.response.status_code = err.status
        ctx.response.metadata.update(headers)
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)


def http_errors(api: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap an async API so a GraphError it raises is answered by `error_response` (BentoML passes
    a returned Response through as it is). Every HTTP endpoint of every service uses this."""

    @functools.wraps(api)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await api(*args, **kwargs)
        except GraphError as err:
            ctx = next((v for v in kwargs.values() if isinstance(v, bentoml.Context)), None)
            response: Any = error_response(err, ctx)  # the declared type is the success body
            return response

    return wrapper


def with_dependencies(deps: dict[str, Any]) -> Callable[[type[R]], type[R]]:
    """Class decorator: declare `deps` ({node name: bentoml.depends(...)}) as class attributes named
    after the nodes, which is where BentoML looks for a service's dependencies (it starts a worker
    for each). For graphs whose node names come from a config, not from code."""

    def declare(cls: type[R]) -> type[R]:
        for name, dep in deps.items():
            if hasattr(cls, name):
                raise TypeError(f"node name {name!r} clashes with {cls.__name__}.{name}")
            setattr(cls, name, dep)
        return cls

    return declare


def context_of(state: Any, timeout_s: float = 300.0) -> RequestContext:
    """The request's context, made once by the edge (services/edge.py RequestContexts, KeyCheck), from the
    request's state (a Starlette State or the raw scope dict); a new one where the edge did not run."""
    ctx = state.get("context") if isinstance(state, dict) else getattr(state, "context", None)
    return ctx if isinstance(ctx, RequestContext) else RequestContext.make(timeout_s=timeout_s)


def request_context(ctx: bentoml.Context) -> RequestContext:
    """The context of the request a BentoML API is answering."""
    return context_of(ctx.request.state, graph_config().graph_timeout_s)


def sse_response(body: AsyncIterable[str], request_id: str) -> StreamingResponse:
    """A stream of server-sent events (`data: ...` lines) as every face sends it: uncached, with its request id."""
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "x-request-id": request_id}
    )


async def json_body(request: Request) -> Any:
    """A request's JSON body (None when empty); InvalidRequest naming `body` when it is not JSON."""
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise InvalidRequest(f"body: not valid JSON ({exc})", field="body") from None
