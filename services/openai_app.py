"""The OpenAI-compatible HTTP face: a Starlette app the entry service mounts at /v1 (@bentoml.asgi_app).

A thin shell over graph/entry/faces/openai_face.py: read the JSON body, call the face, answer JSON or SSE.
Every error is a GraphError turned into OpenAI's error object by graph/entry/faces/openai_errors.py
`openai_error` (the one mapping); an unexpected exception is logged and answered as a 500 of the same
shape, never as a bare stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graph.entry.context import RequestContext
from graph.entry.faces.embeddings import EmbeddingRequest, parse_embedding_request
from graph.entry.faces.openai_errors import openai_error
from graph.entry.faces.openai_face import OpenAIFace
from graph.entry.faces.openai_requests import ChatCompletionRequest, CompletionRequest, parse_request
from graph.errors import GraphError, InvalidRequest
from services.common import context_of, sse_response

log = logging.getLogger("graph")


def openai_response(err: GraphError, names: Mapping[str, str] | None = None) -> JSONResponse:
    """A GraphError as this face's HTTP response (also used by the entry's edge for /v1 refusals)."""
    mapped = openai_error(err, names)
    return JSONResponse(
        mapped.body.model_dump(mode="json", exclude_unset=True), status_code=mapped.status, headers=mapped.headers
    )


def _error(err: GraphError, rid: str, names: Mapping[str, str] | None = None) -> JSONResponse:
    response = openai_response(err, names)
    response.headers["x-request-id"] = rid
    return response


def _answer(result: Any, rid: str) -> Response:
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump(mode="json", exclude_unset=True), headers={"x-request-id": rid})
    return sse_response(result, rid)


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise InvalidRequest(f"body: not valid JSON ({exc})", field="body") from None


def _endpoint(
    model: type,
    call: Callable[[OpenAIFace, Any, RequestContext], Awaitable[Any]],
    parse: Callable[[Any], Any] | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """One POST endpoint: parse `model` from the body, run `call` with the request's context (the edge
    made it: request id, caller, deadline; the graph charges the caller's tokens), map any error in one place."""

    async def endpoint(request: Request) -> Response:
        ctx = context_of(request.state)
        rid = ctx.request_id
        names: Mapping[str, str] | None = None
        try:
            body = await _body(request)
            if parse is not None:
                return _answer(await call(face(request), parse(body), ctx), rid)
            req = parse_request(model, body)
            names = req.names()
            return _answer(await call(face(request), req, ctx), rid)
        except GraphError as err:
            return _error(err, rid, names)
        except Exception:
            log.exception("request_id=%s openai endpoint failed", rid)
            return _error(GraphError("internal error; see the server log for request id " + rid), rid)

    return endpoint


async def list_models(request: Request) -> Response:
    return _answer(face(request).models(), context_of(request.state).request_id)


def face(request: Request) -> OpenAIFace:
    """The face the entry service bound at start-up (app.state.face)."""
    bound = getattr(request.app.state, "face", None)
    if not isinstance(bound, OpenAIFace):
        raise GraphError("the OpenAI face is not bound to a graph yet")
    return bound


def make_openai_app() -> Starlette:
    """The /v1 app; the entry service sets `app.state.face = OpenAIFace(graph)` in its __init__. API keys
    are checked before this app by the entry's KeyCheck middleware (services/edge.py), which answers /v1
    refusals through `openai_response`."""
    return Starlette(
        routes=[
            Route("/models", list_models, methods=["GET"]),
            Route(
                "/chat/completions",
                _endpoint(ChatCompletionRequest, lambda f, r, ctx: f.chat(ctx, r)),
                methods=["POST"],
            ),
            Route(
                "/completions",
                _endpoint(CompletionRequest, lambda f, r, ctx: f.completions(ctx, r)),
                methods=["POST"],
            ),
            Route(
                "/embeddings",
                _endpoint(EmbeddingRequest, lambda f, r, ctx: f.embeddings(ctx, r), parse=parse_embedding_request),
                methods=["POST"],
            ),
        ]
    )
