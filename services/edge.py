"""The entry's HTTP edge, as ASGI middlewares: request contexts, readiness, API keys, content types, schema errors.

Refusals answer through `error_response` (services/common.py), so each has the graph's ErrorBody.
Order, outermost first (services/graph.py adds them): RequestContexts, Draining, ReadyProbe, DocsContract,
KeyCheck, JsonOnly, ValidationErrors. RequestContexts makes each request's `RequestContext` (graph/entry/context.py)
once, KeyCheck fills in its caller, and the endpoints of every face read it with `context_of`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse

from graph.entry.auth import ApiKeys, Unauthorized
from graph.entry.context import REQUEST_ID_HEADER, RequestContext, request_id_from
from graph.errors import GraphError, InvalidRequest
from graph.field_errors import describe, field_errors
from services.common import context_of, error_response

log = logging.getLogger("graph")
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
READY_TIMEOUT_S = 0.8  # each node's probe; /readyz answers within about this


class UnsupportedMediaType(GraphError):
    status = 415
    kind = "unsupported_media_type"


class NodeHealth:
    """The node clients the entry's readiness depends on (filled in by the entry's __init__)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {}  # node name -> bentoml dependency (RemoteProxy or local instance)

    async def check(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, bool]:
        """Every node probed at once; a node that does not answer within timeout_s is not ready."""

        async def probe(dep: Any) -> bool:
            is_ready = getattr(dep, "is_ready", None)
            if is_ready is None:  # an in-process instance (development mode): ready when it exists
                return True
            try:
                return bool(await asyncio.wait_for(is_ready(timeout=max(1, int(timeout_s + 1))), timeout_s))
            except Exception:  # timed out, refused, disconnected: not ready
                return False

        names = list(self.nodes)
        results = await asyncio.gather(*[probe(self.nodes[n]) for n in names])
        return dict(zip(names, results))


# A face mounted under a path prefix that answers errors in its own protocol's shape (the OpenAI face
# at /v1/): prefix -> how a GraphError becomes its response. The edge's refusals there use it.
FaceErrors = dict[str, Callable[[GraphError], JSONResponse]]


def _refusal(scope: Any, err: GraphError, faces: FaceErrors) -> JSONResponse:
    """`err` as the response of the face that owns the request's path, else the graph's ErrorBody."""
    render = next((r for prefix, r in faces.items() if scope["path"].startswith(prefix)), error_response)
    return render(err)


async def _send_json(send: Any, response: JSONResponse) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class RequestContexts:
    """Outermost: each HTTP request's RequestContext (the caller's `x-request-id` when it is a sane one,
    else a new id; the deadline graph_timeout_s from now), left in the request's state; every response,
    refusals and /readyz included, carries the id in an `x-request-id` header."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        ctx = RequestContext.make(timeout_s=self.timeout_s, request_id=request_id_from(given or None))
        scope.setdefault("state", {})["context"] = ctx
        stamp = (REQUEST_ID_HEADER.encode(), ctx.request_id.encode())

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != stamp[0]]
                message = {**message, "headers": [*headers, stamp]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class Draining:
    """While the entry shuts down (services/shutdown.py), new requests get 503 + Retry-After and
    /readyz says so; /livez and /metrics still answer."""

    def __init__(self, app: ASGIApp, drain: Any) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.drain.draining and scope["path"] not in ("/livez", "/healthz", "/metrics"):
            body = {"error": "shutting_down", "message": "the server is shutting down; retry on another replica"}
            await _send_json(send, JSONResponse(body, status_code=503, headers={"Retry-After": "1"}))
            return
        await self.app(scope, receive, send)


class ReadyProbe:
    """GET /readyz, answered here within ~1 s: 200 when every node answers its own readiness probe,
    else 503 naming the nodes that are down (BentoML's own probe waits 5 s per node and can hang
    while a node's worker restarts)."""

    def __init__(self, app: ASGIApp, health: NodeHealth) -> None:
        self.app, self.health = app, health

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/readyz" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if not self.health.nodes:
            status = {"entry": False}
        else:
            status = await self.health.check()
        down = sorted(n for n, ok in status.items() if not ok)
        if down:
            body = {"error": "not_ready", "message": f"not ready: {', '.join(down)}", "nodes": status}
            await _send_json(send, JSONResponse(body, status_code=503, headers={"Retry-After": "1"}))
        else:
            await _send_json(send, JSONResponse({"ready": True, "nodes": status}))


class KeyCheck:
    """API keys (graph/entry/auth.py): a request to a path that is not open needs `Authorization: Bearer
    <key>` (or `x-api-key: <key>`, as Anthropic's clients send it; 401 otherwise) and must be within its
    key's rates (429). The request's context then
    names the caller, and its generated tokens are charged to the key (by the graph)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, faces: FaceErrors | None = None) -> None:
        self.app, self.keys, self.faces = app, keys, faces or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys.enabled or self.keys.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            given = headers.get(b"authorization", b"").decode("latin-1") or None
            if given is None and headers.get(b"x-api-key"):  # Anthropic's clients send the key in x-api-key
                given = "Bearer " + headers[b"x-api-key"].decode("latin-1")
            caller = self.keys.authenticate(given)
            self.keys.admit(caller)
        except GraphError as err:
            response = _refusal(scope, err, self.faces)
            if isinstance(err, Unauthorized):
                response.headers["WWW-Authenticate"] = "Bearer"
            await _send_json(send, response)
            return
        state = scope.setdefault("state", {})
        state["context"] = context_of(state).by(caller, self.keys)
        await self.app(scope, receive, send)


JSON_TYPES = ("application/json",)


class JsonOnly:
    """A request body sent to the entry must be JSON: another Content-Type gets 415 naming it
    (a missing one is taken as JSON, as BentoML does)."""

    def __init__(self, app: ASGIApp, faces: FaceErrors | None = None) -> None:
        self.app, self.faces = app, faces or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope.get("headers") or [])
            ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if ctype and ctype not in JSON_TYPES and not ctype.endswith("+json"):
                err = UnsupportedMediaType(
                    f"content-type: {ctype!r} is not supported; send the body as JSON with "
                    "Content-Type: application/json",
                    field="content-type",
                )
                await _send_json(send, _refusal(scope, err, self.faces))
                return
        await self.app(scope, receive, send)


class ValidationErrors:
    """BentoML validates an API's input schema before our code runs, and answers a failure with a
    400 of its own shape; this rewrites that body into the graph's ErrorBody, naming field and rule:
    {"error": "validation", "message": "bogus: Extra inputs are not permitted", "field": "bogus"}.
    Other responses pass through untouched, and so does everything under a face's prefix (its 400s
    are already in its protocol's shape)."""

    def __init__(self, app: ASGIApp, faces: FaceErrors | None = None) -> None:
        self.app, self.faces = app, faces or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or any(scope["path"].startswith(p) for p in self.faces):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def send_rewritten(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message  # hold it until the body is known
                return
            if start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = _rewrite_validation(b"".join(chunks))
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_rewritten)


def _rewrite_validation(body: bytes) -> bytes:
    """BentoML's schema-error body -> the graph's ErrorBody (via InvalidRequest, as every 400)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1:  # BentoML wraps its own 4xx bodies in a list
        data = data[0]
    if isinstance(data, dict) and {"error", "message"} <= set(data):
        return body  # already an ErrorBody
    detail = data.get("detail") if isinstance(data, dict) else None
    if not (isinstance(detail, list) and detail):
        message = str(data.get("error") if isinstance(data, dict) else data)
        return bytes(error_response(InvalidRequest(f"body: {message}", field="body")).body)
    errors = field_errors(detail)
    return bytes(error_response(InvalidRequest(describe(errors, root="body"), field=errors[0][0] or "body")).body)


class DocsContract:
    """GET /docs.json (and so the Swagger UI) serves the exact spec of services/openapi.py."""

    def __init__(self, app: ASGIApp, **limits: Any) -> None:
        self.app, self.limits = app, limits  # services.openapi.exact_spec's keyword arguments
        self._spec: bytes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._spec is None:
            chunks: list[bytes] = []
            started: dict[str, Any] = {}

            async def keep(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    started.update(message)
                if message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            await self.app(scope, receive, keep)
            if started.get("status") != 200:  # refused (no API key): pass the refusal on, keep nothing
                await send(started)
                await send({"type": "http.response.body", "body": b"".join(chunks)})
                return
            from services.openapi import exact_spec

            self._spec = json.dumps(exact_spec(json.loads(b"".join(chunks)), **self.limits)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self._spec)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": self._spec})
