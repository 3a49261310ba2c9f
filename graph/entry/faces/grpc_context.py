"""The request context on the gRPC faces: made once per call by the server's interceptor, read by the servicers.

`Contexts` (a grpc.aio server interceptor) gives every call of both services its `RequestContext`: the
caller's `x-request-id` metadata (or a new id), its API key (`authorization: Bearer <key>`, checked and
admitted here: UNAUTHENTICATED / RESOURCE_EXHAUSTED), and its deadline (the client's gRPC deadline, at
most the config's graph_timeout_s). Every answer, refusals included, carries `x-request-id` in its
trailing metadata (a named graph's answer also `x-graph-path`: `path_trailers`). `x-user` and `x-meta-<key>`
metadata become the request's `user` and metadata (what a named graph's switch or split routes on). Health and
reflection stay open and untouched.
"""

from __future__ import annotations

from typing import Any

import grpc

from graph.entry.auth import ApiKeys
from graph.entry.context import REQUEST_ID_HEADER, RequestContext, request_id_from
from graph.entry.faces.grpc_errors import abort
from graph.errors import GraphError


class CallContext:
    """A servicer context with the call's RequestContext (`.request`); its aborts carry the request id."""

    def __init__(self, context: Any, request: RequestContext) -> None:
        self._context, self.request = context, request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        trailers = (*tuple(trailing_metadata or ()), (REQUEST_ID_HEADER, self.request.request_id))
        await self._context.abort(code, details, trailing_metadata=trailers)


META_PREFIX = "x-meta-"


def path_trailers(context: Any, path: str) -> None:
    """A named graph's answer: the path it took as trailing metadata `x-graph-path`, beside `x-request-id`."""
    rid = context.request.request_id if isinstance(context, CallContext) else None
    trailers = [("x-graph-path", path)] + ([(REQUEST_ID_HEADER, rid)] if rid is not None else [])
    context.set_trailing_metadata(tuple(trailers))


def request_context(context: Any, timeout_s: float = 300.0) -> RequestContext:
    """The call's RequestContext (a context the interceptor did not wrap, as in unit tests: a new one)."""
    if isinstance(context, CallContext):
        return context.request
    metadata = dict(context.invocation_metadata() or ())
    return RequestContext.make(timeout_s=timeout_s, request_id=request_id_from(metadata.get(REQUEST_ID_HEADER)))


class Contexts(grpc.aio.ServerInterceptor):
    """Wraps every call's handler so that it runs with its RequestContext (see the module's docstring)."""

    OPEN = ("/grpc.health.", "/grpc.reflection.")

    def __init__(self, keys: ApiKeys, timeout_s: float) -> None:
        self.keys, self.timeout_s = keys, timeout_s

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.OPEN):
            return handler
        if handler.request_streaming:  # both services are unary-request; nothing to wrap otherwise
            return handler
        return self._wrapped(handler)

    def _context(self, context: Any) -> CallContext:
        """The call's context; GraphError (401/429) when its key is refused, after the id is known."""
        metadata = dict(context.invocation_metadata() or ())
        timeout = self.timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining))
        rctx = RequestContext.make(timeout_s=timeout, request_id=request_id_from(metadata.get(REQUEST_ID_HEADER)))
        tags = {k[len(META_PREFIX) :]: str(v) for k, v in metadata.items() if k.startswith(META_PREFIX)}
        rctx = rctx.tagged(metadata.get("x-user"), tags)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rctx.request_id),))
        return CallContext(context, rctx)

    def _admitted(self, call: CallContext) -> CallContext:
        caller = self.keys.authenticate(dict(call.invocation_metadata() or ()).get("authorization"))
        self.keys.admit(caller)
        call.request = call.request.by(caller, self.keys)
        return call

    def _wrapped(self, handler: Any) -> Any:
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def streaming(request: Any, context: Any) -> Any:
                call = self._context(context)
                try:
                    self._admitted(call)
                except GraphError as err:
                    await abort(call, err)
                async for message in inner_stream(request, call):
                    yield message

            return grpc.unary_stream_rpc_method_handler(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            call = self._context(context)
            try:
                self._admitted(call)
            except GraphError as err:
                await abort(call, err)
            return await inner(request, call)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
