"""The OpenAI-compatible HTTP face: a Starlette app the entry service mounts at /v1 (@bentoml.asgi_app).

A thin shell over graph/faces/openai_face.py: read the JSON body, call the face, answer JSON or SSE.
Every error is a GraphError turned into OpenAI's error object by graph/faces/openai_errors.py
`openai_error` (the one mapping); an unexpected exception is logged and answered as a 500 of the same
shape, never as a bare stack trace.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from graph.errors import GraphError, InvalidRequest
from graph.faces.embeddings import EmbeddingRequest, parse_embedding_request
from graph.faces.openai_errors import openai_error
from graph.faces.openai_face import Charge, OpenAIFace, free
from graph.faces.openai_requests import ChatCompletionRequest, CompletionRequest, parse_request
from services.edge import caller_of

log = logging.getLogger("graph")


def _rid(request: Request) -> str:
    """The caller's X-Request-Id, or a new one (as the JSON face does)."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex[:16]


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
    return StreamingResponse(
        result, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "x-request-id": rid}
    )


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise InvalidRequest(f"body: not valid JSON ({exc})", field="body") from None


def _charge(request: Request) -> Charge:
    """Counts this caller's generated tokens against its key's token rate (API keys: the entry's
    KeyCheck middleware has already admitted the request and left the caller in its state)."""
    keys, caller = getattr(request.app.state, "keys", None), caller_of(request.state)
    return (lambda tokens: keys.charge(caller, tokens)) if keys is not None else free


def _endpoint(
    model: type, call: Callable[[OpenAIFace, Any, str, Charge], Awaitable[Any]], parse: Callable[..., Any] | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """One POST endpoint: parse `model` from the body, run `call`, map any error in one place."""

    async def endpoint(request: Request) -> Response:
        rid = _rid(request)
        names: Mapping[str, str] | None = None
        try:
            body = await _body(request)
            if parse is not None:
                return _answer(await call(face(request), parse(body), rid, _charge(request)), rid)
            req = parse_request(model, body)
            names = req.names()
            return _answer(await call(face(request), req, rid, _charge(request)), rid)
        except GraphError as err:
            return _error(err, rid, names)
        except Exception:
            log.exception("request_id=%s openai endpoint failed", rid)
            return _error(GraphError("internal error; see the server log for request id " + rid), rid)

    return endpoint


async def list_models(request: Request) -> Response:
    return _answer(face(request).models(), _rid(request))


def face(request: Request) -> OpenAIFace:
    """The face the entry service bound at start-up (app.state.face)."""
    bound = getattr(request.app.state, "face", None)
    if not isinstance(bound, OpenAIFace):
        raise GraphError("the OpenAI face is not bound to a graph yet")
    return bound


def make_openai_app() -> Starlette:
    """The /v1 app; the entry service sets `app.state.face = OpenAIFace(graph)` and `app.state.keys`
    (its ApiKeys) in its __init__. API keys are checked before this app by the entry's KeyCheck
    middleware (services/edge.py), which answers /v1 refusals through `openai_response`."""
    return Starlette(
        routes=[
            Route("/models", list_models, methods=["GET"]),
            Route(
                "/chat/completions",
                _endpoint(ChatCompletionRequest, lambda f, r, rid, c: f.chat(r, rid, c)),
                methods=["POST"],
            ),
            Route(
                "/completions",
                _endpoint(CompletionRequest, lambda f, r, rid, c: f.completions(r, rid, c)),
                methods=["POST"],
            ),
            Route(
                "/embeddings",
                _endpoint(EmbeddingRequest, lambda f, r, rid, c: f.embeddings(r, rid), parse=parse_embedding_request),
                methods=["POST"],
            ),
        ]
    )
