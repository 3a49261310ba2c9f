"""The OpenAI Responses face over the OpenAI chat face: create (plain or streamed), retrieve, delete.

A response runs as the chat face's completion (graph/entry/faces/responses_shapes.py `to_chat`), on the same
routes: a generator node or a named graph `graph:<name>` (`graph`, several scored answers, has no single
answer and is refused). With `store` (the default, as OpenAI's) the response and its conversation are kept
in the chat database (graph/entry/chat/responses.py) under the caller's API key: `previous_response_id`
continues it, GET reads it, DELETE removes it, and another key finds none of it (404).

A stream is the Responses event sequence (each with its `sequence_number`):

    response.created, response.in_progress, response.output_item.added, response.content_part.added,
    response.output_text.delta..., response.output_text.done, response.content_part.done,
    response.output_item.done, response.completed (or response.incomplete at max_output_tokens)

and the response is stored just before its last event (a client gone mid-stream stores nothing).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from openai.types.chat import ChatCompletion
from openai.types.responses import (
    FunctionTool,
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextConfig,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response import IncompleteDetails
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel

from graph.chat_format import ChatMessage
from graph.entry.chat.responses import ResponseStore, StoredResponse
from graph.entry.context import RequestContext
from graph.entry.faces.chat_run import delta_parts, message_calls
from graph.entry.faces.one_answer import check_one_answer
from graph.entry.faces.openai_face import OpenAIFace
from graph.entry.faces.responses_shapes import ResponseNotFound, ResponsesRequest, check_id
from graph.entry.tasks import background
from graph.tools import ToolCall

log = logging.getLogger("graph")
Status = Literal["completed", "incomplete", "in_progress"]


class Deleted(BaseModel):
    """DELETE /v1/responses/{id}."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class _Answer:
    """What a response's output holds: its text, its calls, why it ended, its usage."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: list[ToolCall] = []
        self.finish: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0

    def message(self) -> ChatMessage:
        """The answer as the stored conversation's assistant message."""
        return ChatMessage(role="assistant", content=self.text, tool_calls=self.calls)


def _text_item(mid: str, text: str, status: Status) -> ResponseOutputMessage:
    part = ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])
    return ResponseOutputMessage(id=mid, type="message", role="assistant", status=status, content=[part])


def _call_item(call: ToolCall) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call",
        id=f"fc_{call.id.removeprefix('call_')}",
        call_id=call.id,
        name=call.name,
        arguments=call.arguments,
        status="completed",
    )


class ResponsesFace:
    """The Responses endpoints as calls on the OpenAI face and the response store."""

    def __init__(self, openai: OpenAIFace, store: ResponseStore) -> None:
        self.openai, self.store = openai, store

    async def create(self, ctx: RequestContext, req: ResponsesRequest) -> Response | AsyncIterator[str]:
        """A Response, or (stream=true) its events as SSE; validated (and the history found) before any node works."""
        check_one_answer(self.openai, req.model)
        history: list[ChatMessage] = []
        if req.previous_response_id is not None:
            history = (await self._stored(ctx, req.previous_response_id, "previous_response_id")).messages
        log.info(
            "request_id=%s responses model=%s stream=%s store=%s", ctx.request_id, req.model, req.stream, req.store
        )
        chat = req.to_chat(history, stream=req.stream)
        out = await self.openai.chat(ctx, chat)
        rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        if isinstance(out, ChatCompletion):
            answer = _Answer()
            choice = out.choices[0]
            answer.text, answer.calls = choice.message.content or "", message_calls(out)
            answer.finish = choice.finish_reason
            if out.usage is not None:
                answer.input_tokens, answer.output_tokens = out.usage.prompt_tokens, out.usage.completion_tokens
            response = self._response(req, rid, mid, answer)
            await self._keep(ctx, req, history, response, answer)
            return response
        return self._stream(ctx, req, history, rid, mid, out)

    async def retrieve(self, ctx: RequestContext, response_id: str) -> Response:
        return Response.model_validate((await self._stored(ctx, response_id, "response_id")).response)

    async def delete(self, ctx: RequestContext, response_id: str) -> Deleted:
        if not await self.store.delete(ctx.key_id, check_id(response_id)):
            raise ResponseNotFound(f"response_id: no response {response_id!r}", field="response_id")
        return Deleted(id=response_id, object="response", deleted=True)

    async def _stored(self, ctx: RequestContext, response_id: str, field: str) -> StoredResponse:
        found = await self.store.get(ctx.key_id, check_id(response_id, field))
        if found is None:
            raise ResponseNotFound(f"{field}: no response {response_id!r}", field=field)
        return found

    async def _keep(
        self, ctx: RequestContext, req: ResponsesRequest, history: list[ChatMessage], response: Response, a: _Answer
    ) -> None:
        if not req.store:
            return
        await self.store.save(
            StoredResponse(
                id=response.id,
                owner=ctx.key_id,
                previous_id=req.previous_response_id,
                model=req.model,
                created=response.created_at,
                messages=[*history, *req.messages(), a.message()],
                response=response.model_dump(mode="json", exclude_unset=True, by_alias=True),
            )
        )

    def _response(self, req: ResponsesRequest, rid: str, mid: str, a: _Answer | None) -> Response:
        """The Response object: in progress (a is None), completed, or incomplete at max_output_tokens."""
        status: Status = "in_progress" if a is None else ("incomplete" if a.finish == "length" else "completed")
        output: list[ResponseOutputMessage | ResponseFunctionToolCall] = []
        fields: dict[str, Any] = {}
        if a is not None:
            if a.text or not a.calls:
                output.append(_text_item(mid, a.text, status))
            output += [_call_item(c) for c in a.calls]
            fields["usage"] = ResponseUsage(
                input_tokens=a.input_tokens,
                output_tokens=a.output_tokens,
                total_tokens=a.input_tokens + a.output_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            )
        if status == "incomplete":
            fields["incomplete_details"] = IncompleteDetails(reason="max_output_tokens")
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
        choice = req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel) else req.tool_choice
        return Response(
            id=rid,
            object="response",
            created_at=time.time(),
            model=req.model,
            output=output,  # pyright: ignore[reportArgumentType]  messages and function calls are output items
            status=status,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            tool_choice=choice or ("auto" if req.tools else "none"),  # pyright: ignore[reportArgumentType]  validated
            tools=[FunctionTool.model_validate(t.model_dump(exclude_none=True)) for t in req.tools or []],
            instructions=req.instructions,
            previous_response_id=req.previous_response_id,
            max_output_tokens=req.max_output_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            metadata=req.metadata or {},
            text=ResponseTextConfig.model_validate({"format": fmt or {"type": "text"}}),
            user=req.user,
            **fields,
        )

    def _stream(
        self,
        ctx: RequestContext,
        req: ResponsesRequest,
        history: list[ChatMessage],
        rid: str,
        mid: str,
        chunks: AsyncIterator[str],
    ) -> AsyncIterator[str]:
        """The chat face's chunks (one choice, then usage) as the Responses events: text in a message
        item, each call (sent whole by the chat face once it is complete) in a function_call item."""
        items = _Items(mid)

        async def body() -> AsyncIterator[str]:
            answer = _Answer()
            try:
                started = self._response(req, rid, mid, None)
                yield items.event(ResponseCreatedEvent(type="response.created", response=started, sequence_number=0))
                yield items.event(
                    ResponseInProgressEvent(type="response.in_progress", response=started, sequence_number=0)
                )
                async for line in chunks:
                    if line.startswith(":"):  # a named graph's progress: pass the comment on (SSE clients skip it)
                        yield line
                        continue
                    payload = line.removeprefix("data: ").strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        err = chunk["error"]
                        yield items.event(
                            ResponseErrorEvent(
                                type="error",
                                code=err.get("code"),
                                message=err.get("message", ""),
                                param=err.get("param"),
                                sequence_number=0,
                            )
                        )
                        return
                    if chunk.get("usage"):
                        answer.input_tokens = chunk["usage"]["prompt_tokens"]
                        answer.output_tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices", []):
                        for part in delta_parts(choice.get("delta") or {}):
                            for ev in items.of(part, answer):
                                yield ev
                        answer.finish = choice.get("finish_reason") or answer.finish
                done = self._response(req, rid, mid, answer)
                for ev in items.close(answer, done.status == "incomplete", final=True):
                    yield ev
                await self._keep(ctx, req, history, done, answer)
                if done.status == "incomplete":
                    yield items.event(
                        ResponseIncompleteEvent(type="response.incomplete", response=done, sequence_number=0)
                    )
                else:
                    yield items.event(
                        ResponseCompletedEvent(type="response.completed", response=done, sequence_number=0)
                    )
            finally:  # the client went away (or the stream ended): close the chat stream, which stops the nodes
                background(_close(chunks))

        return body()


class _Items:
    """Output items as stream events, each numbered: an open message item takes text; a call closes it
    and is an item of its own."""

    def __init__(self, mid: str) -> None:
        self.mid = mid
        self.seq = 0
        self.index = -1
        self.text_open = False

    def event(self, ev: BaseModel) -> str:
        """`ev` as SSE, with the stream's next sequence number."""
        numbered = ev.model_copy(update={"sequence_number": self.seq})
        self.seq += 1
        kind = ev.model_dump(include={"type"})["type"]
        return f"event: {kind}\ndata: {numbered.model_dump_json(exclude_unset=True, by_alias=True)}\n\n"

    def of(self, part: str | ToolCall, answer: _Answer) -> list[str]:
        if isinstance(part, str):
            if not part:
                return []
            out = [] if self.text_open else self._open_text()
            answer.text += part
            delta = ResponseTextDeltaEvent(
                type="response.output_text.delta",
                item_id=self.mid,
                output_index=self.index,
                content_index=0,
                delta=part,
                logprobs=[],
                sequence_number=0,
            )
            return [*out, self.event(delta)]
        out = self.close(answer, False)
        answer.calls.append(part)
        self.index += 1
        item = _call_item(part)
        added = item.model_copy(update={"arguments": "", "status": "in_progress"})
        assert item.id is not None
        return [
            *out,
            self.event(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added", output_index=self.index, item=added, sequence_number=0
                )
            ),
            self.event(
                ResponseFunctionCallArgumentsDeltaEvent(
                    type="response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=self.index,
                    delta=part.arguments,
                    sequence_number=0,
                )
            ),
            self.event(
                ResponseFunctionCallArgumentsDoneEvent(
                    type="response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=self.index,
                    arguments=part.arguments,
                    sequence_number=0,
                )
            ),
            self.event(
                ResponseOutputItemDoneEvent(
                    type="response.output_item.done", output_index=self.index, item=item, sequence_number=0
                )
            ),
        ]

    def _open_text(self) -> list[str]:
        self.index += 1
        self.text_open = True
        empty = ResponseOutputText(type="output_text", text="", annotations=[], logprobs=[])
        item = ResponseOutputMessage(id=self.mid, type="message", role="assistant", status="in_progress", content=[])
        return [
            self.event(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added", output_index=self.index, item=item, sequence_number=0
                )
            ),
            self.event(
                ResponseContentPartAddedEvent(
                    type="response.content_part.added",
                    item_id=self.mid,
                    output_index=self.index,
                    content_index=0,
                    part=empty,
                    sequence_number=0,
                )
            ),
        ]

    def close(self, answer: _Answer, incomplete: bool, *, final: bool = False) -> list[str]:
        """Close the open message item (at the end, an answer with no item at all gets an empty one)."""
        out = self._open_text() if final and self.index < 0 else []
        if not self.text_open:
            return out
        self.text_open = False
        item = _text_item(self.mid, answer.text, "incomplete" if incomplete else "completed")
        part = item.content[0]
        return [
            *out,
            self.event(
                ResponseTextDoneEvent(
                    type="response.output_text.done",
                    item_id=self.mid,
                    output_index=self.index,
                    content_index=0,
                    text=answer.text,
                    logprobs=[],
                    sequence_number=0,
                )
            ),
            self.event(
                ResponseContentPartDoneEvent(
                    type="response.content_part.done",
                    item_id=self.mid,
                    output_index=self.index,
                    content_index=0,
                    part=part,  # pyright: ignore[reportArgumentType]  an output text is a content part
                    sequence_number=0,
                )
            ),
            self.event(
                ResponseOutputItemDoneEvent(
                    type="response.output_item.done", output_index=self.index, item=item, sequence_number=0
                )
            ),
        ]


async def _close(chunks: AsyncIterator[str]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
