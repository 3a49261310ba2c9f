"""The OpenAI Responses face over the OpenAI chat face: create (plain or streamed), retrieve, delete.

A response runs as the chat face's completion (graph/faces/responses_shapes.py `to_chat`), on the same
routes: a generator node or a named graph `graph:<name>` (`graph`, several scored answers, has no single
answer and is refused). With `store` (the default, as OpenAI's) the response and its conversation are kept
in the chat database (graph/chat/responses.py) under the caller's API key: `previous_response_id`
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
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
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

from graph.chat.responses import ResponseStore, StoredResponse
from graph.chat_format import ChatMessage
from graph.context import RequestContext
from graph.faces.one_answer import check_one_answer
from graph.faces.openai_face import OpenAIFace
from graph.faces.responses_shapes import ResponseNotFound, ResponsesRequest, check_id
from graph.tasks import background

log = logging.getLogger("graph")
Status = Literal["completed", "incomplete", "in_progress"]


class Deleted(BaseModel):
    """DELETE /v1/responses/{id}."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class _Answer:
    """What a response's output holds: its text, why it ended, its usage."""

    def __init__(self) -> None:
        self.text = ""
        self.finish: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0


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
        out = await self.openai.chat(ctx, req.to_chat(history, stream=req.stream))
        rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        if isinstance(out, ChatCompletion):
            answer = _Answer()
            choice = out.choices[0]
            answer.text, answer.finish = choice.message.content or "", choice.finish_reason
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
        return Deleted(id=response_id)

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
        messages = [*history, *req.messages(), ChatMessage(role="assistant", content=a.text)]
        await self.store.save(
            StoredResponse(
                id=response.id,
                owner=ctx.key_id,
                previous_id=req.previous_response_id,
                model=req.model,
                created=response.created_at,
                messages=messages,
                response=response.model_dump(mode="json", exclude_unset=True),
            )
        )

    def _response(self, req: ResponsesRequest, rid: str, mid: str, a: _Answer | None) -> Response:
        """The Response object: in progress (a is None), completed, or incomplete at max_output_tokens."""
        status: Status = "in_progress" if a is None else ("incomplete" if a.finish == "length" else "completed")
        output = []
        if a is not None:
            text = ResponseOutputText(type="output_text", text=a.text, annotations=[], logprobs=[])
            output = [ResponseOutputMessage(id=mid, type="message", role="assistant", status=status, content=[text])]
        fields: dict[str, Any] = {}
        if a is not None:
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
        return Response(
            id=rid,
            object="response",
            created_at=time.time(),
            model=req.model,
            output=output,  # pyright: ignore[reportArgumentType]  a list of one output message is an output list
            status=status,
            parallel_tool_calls=False,
            tool_choice="none",
            tools=[],
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
        """The chat face's chunks (one choice, then usage) as the Responses events."""
        seq = iter(range(1_000_000_000))

        def event(ev: BaseModel) -> str:
            kind = ev.model_dump(include={"type"})["type"]
            return f"event: {kind}\ndata: {ev.model_dump_json(exclude_unset=True)}\n\n"

        async def body() -> AsyncIterator[str]:
            answer = _Answer()
            try:
                started = self._response(req, rid, mid, None)
                yield event(ResponseCreatedEvent(type="response.created", response=started, sequence_number=next(seq)))
                yield event(
                    ResponseInProgressEvent(type="response.in_progress", response=started, sequence_number=next(seq))
                )
                item = ResponseOutputMessage(id=mid, type="message", role="assistant", status="in_progress", content=[])
                yield event(
                    ResponseOutputItemAddedEvent(
                        type="response.output_item.added", output_index=0, item=item, sequence_number=next(seq)
                    )
                )
                empty = ResponseOutputText(type="output_text", text="", annotations=[], logprobs=[])
                yield event(
                    ResponseContentPartAddedEvent(
                        type="response.content_part.added",
                        item_id=mid,
                        output_index=0,
                        content_index=0,
                        part=empty,
                        sequence_number=next(seq),
                    )
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
                        yield event(
                            ResponseErrorEvent(
                                type="error",
                                code=err.get("code"),
                                message=err.get("message", ""),
                                param=err.get("param"),
                                sequence_number=next(seq),
                            )
                        )
                        return
                    if chunk.get("usage"):
                        answer.input_tokens = chunk["usage"]["prompt_tokens"]
                        answer.output_tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices", []):
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            answer.text += text
                            yield event(
                                ResponseTextDeltaEvent(
                                    type="response.output_text.delta",
                                    item_id=mid,
                                    output_index=0,
                                    content_index=0,
                                    delta=text,
                                    logprobs=[],
                                    sequence_number=next(seq),
                                )
                            )
                        answer.finish = choice.get("finish_reason") or answer.finish
                done = self._response(req, rid, mid, answer)
                message = done.output[0]
                assert isinstance(message, ResponseOutputMessage)
                part = message.content[0]
                yield event(
                    ResponseTextDoneEvent(
                        type="response.output_text.done",
                        item_id=mid,
                        output_index=0,
                        content_index=0,
                        text=answer.text,
                        logprobs=[],
                        sequence_number=next(seq),
                    )
                )
                yield event(
                    ResponseContentPartDoneEvent(
                        type="response.content_part.done",
                        item_id=mid,
                        output_index=0,
                        content_index=0,
                        part=part,  # pyright: ignore[reportArgumentType]  an output text is a content part
                        sequence_number=next(seq),
                    )
                )
                yield event(
                    ResponseOutputItemDoneEvent(
                        type="response.output_item.done", output_index=0, item=message, sequence_number=next(seq)
                    )
                )
                await self._keep(ctx, req, history, done, answer)
                if done.status == "incomplete":
                    yield event(
                        ResponseIncompleteEvent(type="response.incomplete", response=done, sequence_number=next(seq))
                    )
                else:
                    yield event(
                        ResponseCompletedEvent(type="response.completed", response=done, sequence_number=next(seq))
                    )
            finally:  # the client went away (or the stream ended): close the chat stream, which stops the nodes
                background(_close(chunks))

        return body()


async def _close(chunks: AsyncIterator[str]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
