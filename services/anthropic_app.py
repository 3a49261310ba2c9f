"""The Anthropic Messages face: routes the entry adds to its /v1 app (POST /v1/messages, /v1/messages/count_tokens).

A thin shell over graph/entry/faces/anthropic_face.py: read the JSON body, call the face, answer JSON or SSE.
Every error is a GraphError answered in Anthropic's error shape by `anthropic_response` (the one
mapping, graph/entry/faces/anthropic_shapes.py); an unexpected exception is logged and answered as a 500 of
the same shape. The edge's refusals under /v1/messages (401, 415, 429) use it too (services/graph.py FACES).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graph.entry.faces.anthropic_face import AnthropicFace
from graph.entry.faces.anthropic_shapes import CountTokensRequest, MessagesRequest, anthropic_error, parse_messages
from graph.errors import GraphError, Overloaded
from services.common import context_of, json_body, sse_response
from services.openai_app import face

log = logging.getLogger("graph")


def anthropic_response(err: GraphError, names: Mapping[str, str] | None = None) -> JSONResponse:
    """A GraphError as this face's HTTP response: the graph's status, Anthropic's body."""
    headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, Overloaded) else {}
    body = anthropic_error(err, names).model_dump(mode="json")
    return JSONResponse(body, status_code=err.status, headers=headers)


def _endpoint(
    model: type[MessagesRequest], call: Callable[[AnthropicFace, Any, Any], Awaitable[Any]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        ctx = context_of(request.state)
        rid = ctx.request_id
        try:
            req = parse_messages(model, await json_body(request))
            out = await call(AnthropicFace(face(request)), req, ctx)
            if isinstance(out, BaseModel):
                body = out.model_dump(mode="json", exclude_unset=True, by_alias=True)
                return JSONResponse(body, headers={"x-request-id": rid, "request-id": rid})
            return sse_response(out, rid)
        except GraphError as err:
            return anthropic_response(err)
        except Exception:
            log.exception("request_id=%s anthropic endpoint failed", rid)
            return anthropic_response(GraphError("internal error; see the server log for request id " + rid))

    return endpoint


def anthropic_routes() -> list[Route]:
    """The Messages API's routes, relative to the /v1 mount."""
    return [
        Route("/messages", _endpoint(MessagesRequest, lambda f, r, ctx: f.create(ctx, r)), methods=["POST"]),
        Route(
            "/messages/count_tokens",
            _endpoint(CountTokensRequest, lambda f, r, ctx: f.count_tokens(ctx, r)),
            methods=["POST"],
        ),
    ]
