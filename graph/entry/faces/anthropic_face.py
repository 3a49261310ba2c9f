"""The Anthropic Messages face over the OpenAI face: /v1/messages (plain or streamed) and count_tokens.

A Messages request runs as the OpenAI face's chat completion (graph/entry/faces/anthropic_shapes.py `to_chat`),
so a `model` is the same route there: a generator node, or a named graph `graph:<name>` (its one decided
answer). `graph` (every node, several scored answers) has no single answer and is refused here. Answers
are the `anthropic` package's own types; a stream is Anthropic's event sequence:

    message_start, content_block_start, content_block_delta (text_delta)..., content_block_stop,
    message_delta (stop_reason, usage), message_stop     (`ping` while a named graph decides)

stop_reason: `max_tokens` when the token budget ran out, else `end_turn` (the graph does not say whether
an end-of-sequence token or a stop sequence ended it, so `stop_sequence` is never set).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Literal

from anthropic.types import (
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.input_json_delta import InputJSONDelta
from anthropic.types.raw_message_delta_event import Delta
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from graph.entry.context import RequestContext
from graph.entry.faces.anthropic_shapes import (
    CountTokensRequest,
    ErrorDetail,
    ErrorResponse,
    MessagesRequest,
    TokenCount,
)
from graph.entry.faces.chat_run import delta_parts, message_calls
from graph.entry.faces.one_answer import check_one_answer
from graph.entry.faces.openai_face import OpenAIFace
from graph.entry.tasks import background
from graph.tools import ToolCall

log = logging.getLogger("graph")
StopReason = Literal["end_turn", "max_tokens", "tool_use"]
# OpenAI's error type (a stream's error chunk) -> Anthropic's.
_STREAM_ERRORS = {"invalid_request_error": "invalid_request_error", "rate_limit_error": "rate_limit_error"}


def stop_reason(finish: str | None) -> StopReason:
    """The OpenAI face's finish_reason as Anthropic's stop_reason."""
    return {"length": "max_tokens", "tool_calls": "tool_use"}.get(finish or "", "end_turn")  # pyright: ignore[reportReturnType]


def event(data: BaseModel) -> str:
    """One server-sent event as Anthropic sends it: `event: <type>` and its JSON."""
    payload = data.model_dump_json(exclude_unset=True, by_alias=True)
    return f"event: {data.model_dump(include={'type'})['type']}\ndata: {payload}\n\n"


class AnthropicFace:
    """Anthropic's endpoints as calls on the OpenAI face; every error is a GraphError (mapped by the shell)."""

    def __init__(self, openai: OpenAIFace) -> None:
        self.openai = openai

    async def create(self, ctx: RequestContext, req: MessagesRequest) -> Message | AsyncIterator[str]:
        """A Message, or (stream=true) its events as SSE; validated before any node works."""
        check_one_answer(self.openai, req.model)
        log.info("request_id=%s anthropic messages model=%s stream=%s", ctx.request_id, req.model, req.stream)
        chat = req.to_chat(stream=req.stream)
        out = await self.openai.chat(ctx, chat)
        if isinstance(out, ChatCompletion):
            return self._message(ctx, req, out)
        return self._stream(ctx, req, out)

    async def count_tokens(self, ctx: RequestContext, req: CountTokensRequest) -> TokenCount:
        """The prompt tokens the messages take on the model's node (a named graph: its config's first
        generator), as the node renders them: one greedy token is generated (and charged) to learn it."""
        check_one_answer(self.openai, req.model)
        node = req.model if req.model in self.openai.graph.generators else next(iter(self.openai.graph.generators))
        one = req.model_copy(update={"model": node, "max_tokens": 1, "temperature": 0.0, "top_k": None})
        out = await self.openai.chat(ctx, one.to_chat(stream=False))
        assert isinstance(out, ChatCompletion) and out.usage is not None
        return TokenCount(input_tokens=out.usage.prompt_tokens)

    def _message(self, ctx: RequestContext, req: MessagesRequest, out: ChatCompletion) -> Message:
        choice = out.choices[0]
        text, calls = choice.message.content, message_calls(out)
        blocks: list[TextBlock | ToolUseBlock] = [TextBlock(type="text", text=text)] if text else []
        blocks += [_tool_use(c) for c in calls]
        usage = out.usage
        return Message(
            id=f"msg_{ctx.request_id}",
            type="message",
            role="assistant",
            model=req.model,
            content=blocks or [TextBlock(type="text", text="")],  # pyright: ignore[reportArgumentType]  content blocks
            stop_reason=stop_reason(choice.finish_reason),
            stop_sequence=None,
            usage=Usage(
                input_tokens=usage.prompt_tokens if usage else 0,
                output_tokens=usage.completion_tokens if usage else 0,
            ),
        )

    def _stream(self, ctx: RequestContext, req: MessagesRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """The OpenAI face's chunks (one choice, then usage) as Anthropic's events: text in a text block,
        each tool call (sent whole by the OpenAI face once it is complete) in a tool_use block of its own."""
        start = Message(
            id=f"msg_{ctx.request_id}",
            type="message",
            role="assistant",
            model=req.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=0, output_tokens=0),
        )
        blocks = _Blocks()

        async def body() -> AsyncIterator[str]:
            finish: str | None = None
            input_tokens = output_tokens = 0
            try:
                yield event(RawMessageStartEvent(type="message_start", message=start))
                async for line in chunks:
                    if line.startswith(":"):  # a named graph's progress: keep the connection alive
                        yield 'event: ping\ndata: {"type": "ping"}\n\n'
                        continue
                    payload = line.removeprefix("data: ").strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        err = chunk["error"]
                        kind = _STREAM_ERRORS.get(err.get("type"), "api_error")
                        yield event(ErrorResponse(error=ErrorDetail(type=kind, message=err.get("message", ""))))
                        return
                    if chunk.get("usage"):
                        input_tokens = chunk["usage"]["prompt_tokens"]
                        output_tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices", []):
                        for part in delta_parts(choice.get("delta") or {}):
                            for ev in blocks.of(part):
                                yield ev
                        finish = choice.get("finish_reason") or finish
                for ev in blocks.close(final=True):
                    yield ev
                yield event(
                    RawMessageDeltaEvent(
                        type="message_delta",
                        delta=Delta(stop_reason=stop_reason(finish), stop_sequence=None),
                        usage=MessageDeltaUsage(input_tokens=input_tokens, output_tokens=output_tokens),
                    )
                )
                yield event(RawMessageStopEvent(type="message_stop"))
            finally:  # the client went away (or the stream ended): close the OpenAI stream, which stops the nodes
                background(_close(chunks))

        return body()


class _Blocks:
    """Content blocks as stream events: an open text block takes text; a call closes it and is a block."""

    def __init__(self) -> None:
        self.index = -1
        self.text_open = False

    def of(self, part: str | ToolCall) -> list[str]:
        if isinstance(part, str):
            if not part:
                return []
            out = [] if self.text_open else [self._open_text()]
            delta = TextDelta(type="text_delta", text=part)
            return [*out, event(RawContentBlockDeltaEvent(type="content_block_delta", index=self.index, delta=delta))]
        out = self.close()
        self.index += 1
        start = ToolUseBlock(type="tool_use", id=part.id, name=part.name, input={})
        json_delta = InputJSONDelta(type="input_json_delta", partial_json=part.arguments)
        out.append(event(RawContentBlockStartEvent(type="content_block_start", index=self.index, content_block=start)))
        out.append(event(RawContentBlockDeltaEvent(type="content_block_delta", index=self.index, delta=json_delta)))
        out.append(event(RawContentBlockStopEvent(type="content_block_stop", index=self.index)))
        return out

    def _open_text(self) -> str:
        self.index += 1
        self.text_open = True
        block = TextBlock(type="text", text="")
        return event(RawContentBlockStartEvent(type="content_block_start", index=self.index, content_block=block))

    def close(self, *, final: bool = False) -> list[str]:
        """Close an open text block; at the end, a message with no block at all gets an empty text block."""
        out = [self._open_text()] if final and self.index < 0 else []
        if self.text_open:
            out.append(event(RawContentBlockStopEvent(type="content_block_stop", index=self.index)))
            self.text_open = False
        return out


def _tool_use(call: ToolCall) -> ToolUseBlock:
    return ToolUseBlock(type="tool_use", id=call.id, name=call.name, input=json.loads(call.arguments))


async def _close(chunks: AsyncIterator[str]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
