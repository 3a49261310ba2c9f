"""The OpenAI Responses face: routes the entry adds to its /v1 app (POST /v1/responses, GET and DELETE
/v1/responses/{id}).

A thin shell over graph/entry/faces/responses_face.py; errors answer in OpenAI's error shape through the OpenAI
face's one mapping (services/openai_app.py `openai_response`). The entry binds the face at start-up
(`app.state.responses`), over the chat database its chat sessions use.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graph.entry.faces.responses_face import ResponsesFace
from graph.entry.faces.responses_shapes import NAMES, parse_responses
from graph.errors import GraphError
from services.common import context_of, json_body, sse_response
from services.openai_app import openai_response

log = logging.getLogger("graph")


def responses_face(request: Request) -> ResponsesFace:
    bound = getattr(request.app.state, "responses", None)
    if not isinstance(bound, ResponsesFace):
        raise GraphError("the Responses face is not bound to a graph yet")
    return bound


Call = Callable[[ResponsesFace, Request, Any], Awaitable[Any]]


def _endpoint(call: Call) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        ctx = context_of(request.state)
        rid = ctx.request_id
        try:
            out = await call(responses_face(request), request, ctx)
            if isinstance(out, BaseModel):
                body = out.model_dump(mode="json", exclude_unset=True, by_alias=True)
                return JSONResponse(body, headers={"x-request-id": rid})
            return sse_response(out, rid)
        except GraphError as err:
            response = openai_response(err, NAMES)
            response.headers["x-request-id"] = rid
            return response
        except Exception:
            log.exception("request_id=%s responses endpoint failed", rid)
            return openai_response(GraphError("internal error; see the server log for request id " + rid))

    return endpoint


async def _create(face: ResponsesFace, request: Request, ctx: Any) -> Any:
    return await face.create(ctx, parse_responses(await json_body(request)))


async def _stored(face: ResponsesFace, request: Request, ctx: Any) -> Any:
    """GET reads a stored response, DELETE removes it (one route, so a 405 names both methods)."""
    if request.method == "DELETE":
        return await face.delete(ctx, request.path_params["response_id"])
    return await face.retrieve(ctx, request.path_params["response_id"])


def responses_routes() -> list[Route]:
    """The Responses API's routes, relative to the /v1 mount."""
    return [
        Route("/responses", _endpoint(_create), methods=["POST"]),
        Route("/responses/{response_id}", _endpoint(_stored), methods=["GET", "DELETE"]),
    ]
