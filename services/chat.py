"""The chat endpoints of the entry service (/infer, /chat, /chat_stream, /chat_history, /chat_delete):
a mixin of InferenceGraph that adapts HTTP JSON to graph/entry/chat `ChatSessions`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import bentoml

from graph.entry.chat.schemas import ChatReply, ChatRequest, Forgotten, History, InferReply, InferRequest, UserRequest
from graph.entry.chat.session import ChatSessions
from graph.entry.chat.store import ChatStore
from graph.entry.compose import Graph, sse
from graph.entry.tasks import background
from services.common import http_errors, request_context, sse_response


def open_chat(graph: Graph) -> ChatSessions:
    """Chat sessions over `graph`, histories in the config's chat.database_url (opened on first use)."""
    chat = graph.config.chat
    return ChatSessions(
        graph, ChatStore(chat.database_url, pool_size=chat.pool_size, pool_timeout_s=chat.pool_timeout_s)
    )


def owner(ctx: bentoml.Context) -> str | None:
    """The API key id that owns the conversations this request may touch (None: no API keys)."""
    return request_context(ctx).key_id


class ChatEndpoints:
    """Chat sessions on the entry service; the class using it sets `self.chat` (open_chat)."""

    chat: ChatSessions

    @bentoml.api(input_spec=InferRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def infer(self, ctx: bentoml.Context, **fields: Any) -> InferReply:
        """The seed's chat API: {user_id, message} -> {message}; each user's history is kept."""
        reply = await self.chat.reply(request_context(ctx), InferRequest(**fields))
        return InferReply(message=reply.message)

    @bentoml.api(route="/chat", name="chat", input_spec=ChatRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def chat_turn(self, ctx: bentoml.Context, **fields: Any) -> ChatReply:
        """One chat turn: the reply, its turn number, the model and token usage."""
        return await self.chat.reply(request_context(ctx), ChatRequest(**fields))

    @bentoml.api(input_spec=ChatRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def chat_stream(self, ctx: bentoml.Context, **fields: Any) -> AsyncGenerator[str, None]:
        """A chat turn as server-sent events: token and final events, a `turn` event once stored, [DONE]."""
        rctx = request_context(ctx)
        events = await self.chat.stream(rctx, ChatRequest(**fields))  # a refusal raises here: 429

        async def body() -> AsyncIterator[str]:
            try:
                async for ev in events:
                    yield sse(ev)
                yield sse("[DONE]")
            finally:  # client gone: close the turn (rolled back, its lock released)
                background(events.aclose())

        response: Any = sse_response(body(), rctx.request_id)
        return response

    @bentoml.api(input_spec=UserRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def chat_history(self, ctx: bentoml.Context, **fields: Any) -> History:
        """A user's kept conversation, oldest message first."""
        req = UserRequest(**fields)
        return await self.chat.history(owner(ctx), req.user_id)

    @bentoml.api(input_spec=UserRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    @http_errors
    async def chat_delete(self, ctx: bentoml.Context, **fields: Any) -> Forgotten:
        """Delete a user's conversation from the database (the right to be forgotten)."""
        req = UserRequest(**fields)
        return await self.chat.forget(owner(ctx), req.user_id)
