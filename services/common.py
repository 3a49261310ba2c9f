"""Shared pieces of the BentoML shells: the graph config from --arg-file, errors to HTTP, request ids."""

from __future__ import annotations

import json
import logging
import uuid
from functools import lru_cache

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse

from graph.config import GraphConfig, config_from_arguments
from graph.errors import GraphError, InvalidRequest, NodeFailure, Overloaded

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


@lru_cache(maxsize=1)
def graph_config() -> GraphConfig:
    """The graph config given by `bentoml serve --arg-file configs/X.yaml` (default.yaml if none)."""
    return config_from_arguments(vars(bentoml.use_arguments()))


def error_response(err: GraphError, ctx: bentoml.Context | None = None) -> JSONResponse:
    """The one place a GraphError becomes an HTTP response."""
    headers = {}
    if isinstance(err, Overloaded):
        headers["Retry-After"] = str(err.retry_after_s)
    if ctx is not None:  # BentoML copies ctx's status onto returned responses
        ctx.response.status_code = err.status
        ctx.response.metadata.update(headers)
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)


def from_dependency(exc: BentoMLException, node: str) -> GraphError:
    """Turn a dependency's HTTP error back into the GraphError it was (or a NodeFailure)."""
    status = int(getattr(exc, "error_code", 500))
    message = str(exc)
    try:
        body = json.loads(message)
        if isinstance(body, list) and body:
            body = body[0]
        if isinstance(body, dict):
            message = str(body.get("message") or body.get("error") or message)
    except ValueError:
        pass
    if status in (429, 503):  # our full queue, or BentoML's own max_concurrency refusal
        return Overloaded(f"node {node!r} is overloaded: {message}")
    if 400 <= status < 500:
        return InvalidRequest(f"node {node!r} rejected the request: {message}")
    return NodeFailure(f"node {node!r} failed ({status}): {message}", node=node)


def request_id(ctx: bentoml.Context) -> str:
    """The caller's X-Request-Id, or a new one; it follows the request across nodes in the logs."""
    rid = ctx.request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    ctx.response.metadata["x-request-id"] = rid
    return rid
