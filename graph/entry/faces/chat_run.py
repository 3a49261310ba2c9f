"""The chat completion a Messages or Responses request runs as, on the OpenAI face's one path.

Those APIs have what OpenAI's chat request lacks (Anthropic's `top_k`; tools, calls and tool results in
their own shapes): `ChatRun` is a ChatCompletionRequest that also carries the exact conversation (a
`ChatPrompt` whose messages may hold `tool_calls` and `tool` results) and the request's `ToolCalling`
(graph/tools.py), so the nodes render the tools and hold every call to its schema, and the OpenAI face
parses the calls back (`tool_calls` in its message and its streamed deltas), which these faces reshape.
"""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion_message_function_tool_call import ChatCompletionMessageFunctionToolCall
from pydantic import PrivateAttr, ValidationError

from graph.chat_format import ChatMessage, ChatPrompt
from graph.entry.faces.openai_requests import ChatCompletionRequest
from graph.errors import InvalidRequest
from graph.field_errors import describe, field_errors
from graph.params import GenerationOverrides
from graph.tools import ToolCall, ToolCalling


class ChatRun(ChatCompletionRequest):
    """A chat completion with `top_k`, an exact conversation and tools (see the module docstring)."""

    top_k: int | None = None
    _conversation: list[ChatMessage] | None = PrivateAttr(default=None)
    _tools: ToolCalling | None = PrivateAttr(default=None)

    def carrying(self, conversation: list[ChatMessage], tools: ToolCalling | None) -> ChatRun:
        self._conversation, self._tools = conversation, tools
        return self

    def tool_calling(self) -> ToolCalling | None:
        """The request's tools (the OpenAI face parses the calls back with them: message.tool_calls, and
        tool_calls deltas when streamed; its overrides() sends them to the nodes)."""
        return self._tools

    def prompt(self) -> ChatPrompt:
        if self._conversation is None:
            return super().prompt()
        return ChatPrompt(messages=self._conversation)

    def overrides(self) -> GenerationOverrides:
        base = super().overrides()
        update: dict[str, object] = {}
        if self.top_k is not None:
            update["top_k"] = self.top_k
            if self.temperature != 0.0:  # top_k samples, unless greedy was asked for
                update["do_sample"] = True
        if not update:
            return base
        try:
            return GenerationOverrides.model_validate({**base.model_dump(exclude_none=True), **update})
        except ValidationError as exc:
            errors = field_errors(exc.errors())
            raise InvalidRequest(describe(errors, root="body"), field=errors[0][0] or "body") from None


def text_view(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The conversation as the OpenAI chat request's text messages (what its own validation checks):
    a tool result reads as a user message there; the exact conversation rides in `ChatRun.carrying`."""
    return [{"role": "user" if m.role == "tool" else m.role, "content": m.content} for m in messages]


def message_calls(out: ChatCompletion) -> list[ToolCall]:
    """The first choice's tool calls, as graph/tools.py's ToolCall."""
    calls = out.choices[0].message.tool_calls or []
    return [
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in calls
        if isinstance(c, ChatCompletionMessageFunctionToolCall)
    ]


def delta_parts(delta: dict[str, Any]) -> list[str | ToolCall]:
    """A streamed chunk's delta (JSON) as its text and whole tool calls, in order."""
    parts: list[str | ToolCall] = [delta["content"]] if delta.get("content") else []
    for call in delta.get("tool_calls") or []:
        fn = call.get("function") or {}
        parts.append(ToolCall(id=call["id"], name=fn["name"], arguments=fn.get("arguments") or "{}"))
    return parts
