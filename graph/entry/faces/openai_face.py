"""The OpenAI-compatible face over a Graph: /v1/models, chat completions and completions, plain or streamed.

Requests arrive validated (graph/entry/faces/openai_requests.py); answers are the `openai` package's own
response types, so their shape cannot drift from what the SDK reads. A `model` is a route: a generator
node, or `graph` (every node, each choice scored by the classifier, choices ordered by score and
carrying `model`, `score` and `label`: extra fields OpenAI clients ignore).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from openai.types import Completion, CompletionChoice, CompletionUsage, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    ChoiceLogprobs,
)
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from pydantic import BaseModel

from graph.chat_format import Prompt, score_text
from graph.entry.compose import Graph, sse
from graph.entry.context import RequestContext
from graph.entry.faces.embeddings import EMBEDDING_MODEL, EmbeddingRequest, openai_embeddings
from graph.entry.faces.openai_errors import UnknownModel, error_object
from graph.entry.faces.openai_policy import decided, decision_stream
from graph.entry.faces.openai_requests import ChatCompletionRequest, CompletionRequest
from graph.entry.faces.openai_shapes import Scored, chat_logprobs, extras_of, text_logprobs, usage_of, with_extras
from graph.entry.schemas import ErrorEvent, FinalEvent, ScoreEvent, TokenEvent
from graph.entry.tasks import background
from graph.errors import ErrorBody, InvalidRequest
from graph.results import TokenLogprob
from graph.tools import CallStream, ToolCall, ToolCalling, parse_calls

log = logging.getLogger("graph")
GRAPH_MODEL = "graph"
OWNER = "inference-graph"
# stop/length as OpenAI has them; a wall-clock budget ran out like a token budget; cancelled is
# only seen by a client that has gone. A choice that made tool calls and stopped says "tool_calls".
Finish = Literal["stop", "length", "tool_calls"]
_FINISH: dict[str, Literal["stop", "length"]] = {
    "stop": "stop",
    "length": "length",
    "time": "length",
    "cancelled": "stop",
}


@dataclass(frozen=True)
class Route:
    """What a `model` name runs: one generator node (or every one: None), scored or not, or a
    named graph of the config's policies (`graph:<name>`: its one decided answer)."""

    node: str | None
    scored: bool
    policy: str | None = None


class ModelList(BaseModel):
    """GET /v1/models (the SDK pages over `data`)."""

    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIFace:
    """OpenAI's endpoints as calls on `graph`; every error is a GraphError (mapped by the shell)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.created = int(time.time())
        self.routes: dict[str, Route] = {
            **{node: Route(node, scored=False) for node in graph.generators},
            GRAPH_MODEL: Route(None, scored=True),
            **{f"graph:{name}": Route(None, scored=True, policy=name) for name in graph.config.policies.graphs},
        }

    def models(self) -> ModelList:
        names = [*self.routes, EMBEDDING_MODEL]
        return ModelList(data=[Model(id=m, created=self.created, object="model", owned_by=OWNER) for m in names])

    def route(self, model: str) -> Route:
        if model == EMBEDDING_MODEL:
            raise InvalidRequest(f"model: {model!r} embeds text; use /v1/embeddings", field="model")
        if model not in self.routes:
            raise UnknownModel(f"model: {model!r} does not exist; this server has {list(self.routes)}", field="model")
        return self.routes[model]

    # ---- embeddings ----------------------------------------------------------------------------
    async def embeddings(self, ctx: RequestContext, req: EmbeddingRequest) -> CreateEmbeddingResponse:
        """The classifier node's sentence encoder on every input (batched with concurrent requests)."""
        log.info("request_id=%s openai embeddings inputs=%d user=%s", ctx.request_id, len(req.texts()), req.user)
        return openai_embeddings(req, await self.graph.embed(ctx, req.texts()))

    # ---- chat ----------------------------------------------------------------------------------
    async def chat(self, ctx: RequestContext, req: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[str]:
        """A ChatCompletion, or (stream=true) the SSE lines of its chunks; validated before any node works.
        Its `id` carries the request id; the graph charges the tokens to `ctx`'s caller."""
        route, prompt, rid = self.route(req.model), req.prompt(), ctx.request_id
        ctx = ctx.tagged(req.user, req.metadata)
        log.info("request_id=%s openai chat model=%s user=%s", rid, req.model, req.user)
        if req.stream:
            return await self._stream(ctx, req, route, prompt, chat=True)
        choices = await self._run(ctx, [prompt], route, req)
        calling = req.tool_calling()
        return ChatCompletion(
            id=f"chatcmpl-{rid}",
            object="chat.completion",
            created=int(time.time()),
            model=req.model,
            choices=[with_extras(_chat_choice(i, c, calling), extras_of(c)) for i, c in enumerate(choices)],
            usage=usage_of(choices),
        )

    # ---- completions ---------------------------------------------------------------------------
    async def completions(self, ctx: RequestContext, req: CompletionRequest) -> Completion | AsyncIterator[str]:
        route, prompts, rid = self.route(req.model), req.prompts(), ctx.request_id
        ctx = ctx.tagged(req.user, req.metadata)
        log.info("request_id=%s openai completions model=%s user=%s", rid, req.model, req.user)
        if req.stream:
            return await self._stream(ctx, req, route, prompts[0], chat=False)
        choices = await self._run(ctx, list(prompts), route, req)
        return Completion(
            id=f"cmpl-{rid}",
            object="text_completion",
            created=int(time.time()),
            model=req.model,
            choices=[
                with_extras(
                    CompletionChoice(
                        index=i,
                        finish_reason=_FINISH[c.result.finish_reason],
                        text=(prompts[c.prompt_index] if req.echo else "") + c.result.text,
                        logprobs=text_logprobs(c.result.logprobs),
                    ),
                    extras_of(c),
                )
                for i, c in enumerate(choices)
            ],
            usage=usage_of(choices),
        )

    async def _run(
        self,
        ctx: RequestContext,
        prompts: list[Prompt],
        route: Route,
        req: ChatCompletionRequest | CompletionRequest,
    ) -> list[Scored]:
        """Every completion of the route, scored and ordered by score (per prompt) for `graph`;
        a named graph's decided answer per prompt."""
        if route.policy is not None:
            return [await self._decide(ctx.part(str(i)), route.policy, p, i, req) for i, p in enumerate(prompts)]
        per_node = await self.graph.generate(ctx, prompts, route.node, req.overrides())
        flat = [(node, i, r) for node, rows in per_node.items() for i, results in enumerate(rows) for r in results]
        if not route.scored:
            return [Scored(node, i, r, None) for node, i, r in flat]
        verdicts = await self.graph.classify([score_text(prompts[i], r.text) for _, i, r in flat])
        scored = [Scored(node, i, r, c) for (node, i, r), c in zip(flat, verdicts)]
        return sorted(scored, key=lambda s: (s.prompt_index, -(s.score.score if s.score else 0.0)))

    async def _decide(
        self,
        ctx: RequestContext,
        name: str,
        prompt: Prompt,
        index: int,
        req: ChatCompletionRequest | CompletionRequest,
    ) -> Scored:
        """A named graph's decided answer to one prompt (every candidate's tokens charged to `ctx`)."""
        out = await self.graph.decide(ctx, prompt, req.overrides(), name)
        return decided(out, index)

    # ---- streaming -----------------------------------------------------------------------------
    async def _stream(
        self,
        ctx: RequestContext,
        req: ChatCompletionRequest | CompletionRequest,
        route: Route,
        prompt: Prompt,
        *,
        chat: bool,
    ) -> AsyncIterator[str]:
        """Validate and admit now (bad input is a 4xx and a node's refusal a 429 with Retry-After, not a
        broken stream), then the chunks as SSE, then [DONE]."""
        if route.policy is not None:
            chunks = _Chunks(req, ctx.request_id, [f"graph:{route.policy}"], chat=chat, echo=False)
            return decision_stream(self.graph, ctx, req, route.policy, prompt, chunks, _FINISH.__getitem__)
        events = await self.graph.open_stream(ctx, prompt, route.node, req.overrides(), score=route.scored)
        nodes = list(self.graph.generators) if route.node is None else [route.node]
        chunks = _Chunks(req, ctx.request_id, nodes, chat=chat, echo=isinstance(req, CompletionRequest) and req.echo)

        async def body() -> AsyncIterator[str]:
            try:
                async for ev in events:
                    for chunk in chunks.of(ev):  # pyright: ignore[reportArgumentType]  no graph= here: no policy events
                        yield sse(chunk)
                if req.include_usage:
                    yield sse(chunks.usage_chunk().model_dump_json(exclude_unset=True))
                yield sse("[DONE]")
            finally:  # the client went away (or the stream ended): close the graph's stream, which stops the nodes
                background(events.aclose())

        return body()


def _chat_choice(index: int, c: Scored, calling: ToolCalling | None) -> Choice:
    """One chat choice: its text, and with tools its calls (finish_reason tool_calls when it stopped)."""
    parsed = parse_calls(c.result.text, calling)
    finish: Finish = _FINISH[c.result.finish_reason]
    if parsed.calls and finish == "stop":
        finish = "tool_calls"
    message = ChatCompletionMessage(
        role="assistant",
        content=parsed.content,
        tool_calls=[_message_call(call) for call in parsed.calls] or None,
    )
    return Choice(index=index, message=message, finish_reason=finish, logprobs=chat_logprobs(c.result.logprobs))


def _message_call(call: ToolCall) -> ChatCompletionMessageFunctionToolCall:
    return ChatCompletionMessageFunctionToolCall(
        id=call.id, type="function", function=Function(name=call.name, arguments=call.arguments)
    )


class _Chunks:
    """Graph stream events -> OpenAI chunks of one response (choice indexes, first-delta role, usage)."""

    def __init__(
        self, req: ChatCompletionRequest | CompletionRequest, rid: str, nodes: list[str], *, chat: bool, echo: bool
    ) -> None:
        self.req, self.chat, self.nodes = req, chat, nodes
        self.echo = req.prompts()[0] if echo and isinstance(req, CompletionRequest) else None
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
        self.created = int(time.time())
        self.started: set[int] = set()
        self.prompt_tokens: dict[str, int] = {}
        self.completion_tokens = 0
        # With tools: each choice's text through a CallStream (text as it comes, calls when closed).
        self.calling = req.tool_calling() if chat and isinstance(req, ChatCompletionRequest) else None
        self.calls: dict[int, CallStream] = {}

    def index(self, node: str, seq: int) -> int:
        """Choice index in the stream: node order, then sequence (unique across a graph's nodes)."""
        return self.nodes.index(node) * self.req.n + seq

    def of(self, ev: TokenEvent | FinalEvent | ScoreEvent | ErrorEvent) -> list[str]:
        """The JSON of each chunk this event makes (as OpenAI writes them: explicit nulls kept)."""
        if isinstance(ev, ErrorEvent):  # a node failed mid-stream: OpenAI's error object, as vLLM sends it
            return [
                error_object(ErrorBody.model_validate(ev.model_dump()), self.req.names()).model_dump_json(
                    exclude_unset=True
                )
            ]
        extras: dict[str, object] = {"model": ev.model} if len(self.nodes) > 1 or isinstance(ev, ScoreEvent) else {}
        idx = self.index(ev.model, ev.index)
        if isinstance(ev, ScoreEvent):
            extras.update(score=ev.score, label=ev.label)
            return [self._chunk(idx, "", None, extras).model_dump_json(exclude_unset=True)]
        finish = None
        logprobs = None
        if isinstance(ev, FinalEvent):
            finish = _FINISH[ev.finish_reason]
            self.prompt_tokens[ev.model] = ev.usage.prompt_tokens
            self.completion_tokens += ev.usage.completion_tokens
            logprobs = ev.logprobs
        return self.parts(idx, ev.text, finish, extras, final=isinstance(ev, FinalEvent), logprobs=logprobs)

    def parts(
        self,
        idx: int,
        text: str,
        finish: Literal["stop", "length"] | None,
        extras: dict[str, object],
        *,
        final: bool,
        logprobs: list[TokenLogprob] | None = None,
    ) -> list[str]:
        """The chunks of a choice's new text: as it is, or with tools its text and closed calls, then
        (final) the finish chunk, finish_reason tool_calls when it stopped after calls. A stream's
        logprobs (every token of the choice) come in its finish chunk."""
        out: list[ChatCompletionChunk | Completion] = []
        if self.calling is None:
            if text or finish is not None:
                out.append(self._chunk(idx, text, finish, extras, logprobs=logprobs))
            return [c.model_dump_json(exclude_unset=True) for c in out]
        stream = self.calls.setdefault(idx, CallStream(self.calling))
        parts = [*stream.feed(text), *(stream.finish() if final else [])]
        said = "".join(p for p in parts if isinstance(p, str))
        if said:
            out.append(self._chunk(idx, said, None, extras))
        out += [self._chunk(idx, "", None, extras, call=(n, p)) for n, p in self._numbered(stream, parts)]
        if final:
            done: Finish | None = "tool_calls" if stream.calls and finish == "stop" else finish
            out.append(self._chunk(idx, "", done, extras, logprobs=logprobs))
        return [c.model_dump_json(exclude_unset=True) for c in out]

    @staticmethod
    def _numbered(stream: CallStream, parts: list[str | ToolCall]) -> list[tuple[int, ToolCall]]:
        """The calls among `parts` with their index in the choice's tool_calls."""
        return [(stream.calls.index(p), p) for p in parts if isinstance(p, ToolCall)]

    def _chunk(
        self,
        idx: int,
        text: str,
        finish: Finish | None,
        extras: dict[str, object],
        *,
        call: tuple[int, ToolCall] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> ChatCompletionChunk | Completion:
        first = idx not in self.started
        self.started.add(idx)
        if self.chat:
            delta = ChoiceDelta(role="assistant", content=text) if first else ChoiceDelta(content=text)
            if call is not None:
                n, c = call
                fn = ChoiceDeltaToolCallFunction(name=c.name, arguments=c.arguments)
                delta = ChoiceDelta(
                    role="assistant" if first else None,
                    tool_calls=[ChoiceDeltaToolCall(index=n, id=c.id, type="function", function=fn)],
                )
                if not first:
                    delta = ChoiceDelta(tool_calls=delta.tool_calls)
            choice = ChunkChoice(index=idx, delta=delta, finish_reason=finish)
            if logprobs is not None:
                full = chat_logprobs(logprobs)  # the chat layout; the chunk's own type has the same fields
                choice.logprobs = ChoiceLogprobs(content=full.content if full is not None else None)
            choice = with_extras(choice, extras)
            return ChatCompletionChunk(
                id=self.id, object="chat.completion.chunk", created=self.created, model=self.req.model, choices=[choice]
            )
        if first and self.echo is not None:
            text = self.echo + text
        # OpenAI streams finish_reason null until the last chunk, which the non-streamed type does not
        # admit: built unvalidated, with every field the SDK reads.
        completion_choice = with_extras(
            CompletionChoice.model_construct(
                index=idx, text=text, finish_reason=finish, logprobs=text_logprobs(logprobs)
            ),
            extras,
        )
        return Completion(
            id=self.id,
            object="text_completion",
            created=self.created,
            model=self.req.model,
            choices=[completion_choice],
        )

    def usage_chunk(self) -> ChatCompletionChunk | Completion:
        """The last chunk with stream_options.include_usage: no choices, the whole response's usage."""
        prompt = sum(self.prompt_tokens.values())
        usage = CompletionUsage(
            prompt_tokens=prompt, completion_tokens=self.completion_tokens, total_tokens=prompt + self.completion_tokens
        )
        if self.chat:
            return ChatCompletionChunk(
                id=self.id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.req.model,
                choices=[],
                usage=usage,
            )
        return Completion(
            id=self.id, object="text_completion", created=self.created, model=self.req.model, choices=[], usage=usage
        )
