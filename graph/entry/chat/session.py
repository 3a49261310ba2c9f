"""Chat turns: a user's kept history + the new message -> one generator node -> the reply, stored.

A turn holds the conversation's lock (graph/entry/chat/store.py `turn`) from reading the history to
storing the reply, so two messages of one user sent at once are answered one after the other, the
second seeing the first's reply. The user's message and the reply are written together after the
node answers: when the node fails (or a stream's client goes away) the whole turn is rolled back,
nothing is stored, and the caller, who got the error, sends the message again.

The prompt: the last `chat.max_turns` turns, then the node cuts the oldest further to fit its
prompt-token budget (graph/chat_format.py, on the node, which has the tokenizer).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from pydantic import BaseModel

from graph.chat_format import ChatMessage, ChatPrompt, clean_reply
from graph.entry.chat.schemas import ChatReply, ChatRequest, Forgotten, History, InferRequest, StoredMessage, TurnEvent
from graph.entry.chat.store import ChatStore, Turn
from graph.entry.compose import Graph, error_event, stream_event
from graph.entry.context import RequestContext
from graph.entry.policies import registry as policies
from graph.entry.policies.schemas import DecisionEvent, PolicyResponse
from graph.entry.schemas import ErrorEvent, FinalEvent, TokenEvent, Usage
from graph.entry.streams import ADMITTED, Admitted, opened
from graph.errors import GraphError, InvalidRequest, Overloaded
from graph.params import GenerationParams
from graph.results import GenerationResult


class ChatSessions:
    """Chat turns, histories and forgetting over a Graph's generators and a ChatStore. A turn's
    conversation reaches its node as a ChatPrompt through the graph's generate/stream, as the
    OpenAI face's chats do; the node fits it (template or transcript, oldest cut) exactly once."""

    def __init__(self, graph: Graph, store: ChatStore) -> None:
        self.graph, self.store = graph, store
        self.nodes = graph.generators
        self.config = graph.config.chat

    # ---- validation at the edge (before anything is read or written) ----------------------------
    def plan(self, req: InferRequest) -> tuple[str, GenerationParams]:
        self.graph.check_prompt(req.message, "message")
        if req.graph is not None and req.model is not None:
            raise InvalidRequest(
                "graph: a named graph chooses its own nodes; give model or graph, not both", field="graph"
            )
        if req.graph is not None:  # the named graph checks its params when it starts; its name now
            policies.resolve(self.graph.config, req.graph)
            return "", GenerationParams()
        node = self.graph.select(req.model or self.config.default_model or next(iter(self.graph.generators)))[0]
        params = self.graph.params_for(node, req.params)
        if params.num_return_sequences != 1:
            raise InvalidRequest(
                "params.num_return_sequences: a chat turn has one reply; set 1", field="params.num_return_sequences"
            )
        return node, params

    def prompt(self, past: list[StoredMessage], message: str) -> list[ChatMessage]:
        """The last max_turns turns of `past`, then the new message."""
        turns = sorted({m.turn for m in past})[-self.config.max_turns :] if self.config.max_turns else []
        kept = [ChatMessage(role=m.role, content=m.content) for m in past if m.turn in set(turns)]
        return [*kept, ChatMessage(role="user", content=message)]

    # ---- turns ----------------------------------------------------------------------------------
    async def reply(self, ctx: RequestContext, req: InferRequest) -> ChatReply:
        """One turn of the caller's conversation (`ctx.key_id` owns it); its tokens charged to the caller."""
        node, params = self.plan(req)
        owner = ctx.key_id
        async with self.store.turn(owner, req.user_id) as turn:
            messages = self.prompt(await turn.history(), req.message)
            prompt = ChatPrompt(messages=messages)
            if req.graph is not None:
                out = await self.graph.decide(ctx, prompt, req.params, req.graph)
                return await self._store_decision(turn, req, out)
            gen = self.graph.node(ctx, node)
            per_prompt = await self.graph.call(node, gen.generate([prompt], params, ctx.request_id), ctx)
            (result,) = per_prompt[0]
            return await self._store(turn, req, node, result, result.prompt_messages)

    async def stream(self, ctx: RequestContext, req: ChatRequest) -> AsyncGenerator[BaseModel, None]:
        """Validate now (bad input is a 4xx, not a broken stream), wait until the node has accepted the
        turn (a refusal raises here: a 429 before the first byte, graph/entry/streams.py), then the turn's
        events: token and final events as generate_stream's, then a `turn` event once it is stored."""
        node, params = self.plan(req)
        if req.graph is not None:
            return await opened(self._graph_events(ctx, req))
        return await opened(self._events(ctx, req, node, params))

    async def _graph_events(self, ctx: RequestContext, req: ChatRequest) -> AsyncGenerator[BaseModel | Admitted, None]:
        """A named graph's turn: its events (candidates, tokens, scores, pruning, gates, the decision)
        as /generate_score_stream sends them, then the `turn` event once the answer is stored."""
        assert req.graph is not None
        async with self.store.turn(ctx.key_id, req.user_id) as turn:
            yield ADMITTED  # the policy admits its candidates as it starts them
            messages = self.prompt(await turn.history(), req.message)
            try:
                events = self.graph.stream(
                    ctx, ChatPrompt(messages=messages), None, req.params, score=True, graph=req.graph
                )
            except GraphError as exc:
                yield error_event(exc)
                return
            decision: PolicyResponse | None = None
            try:
                async for ev in events:
                    yield ev
                    if isinstance(ev, ErrorEvent):
                        return
                    if isinstance(ev, DecisionEvent):
                        decision = ev.result
            finally:
                await events.aclose()
            if decision is not None:
                yield TurnEvent(reply=await self._store_decision(turn, req, decision))

    async def _store_decision(self, turn: Turn, req: InferRequest, out: PolicyResponse) -> ChatReply:
        """A named graph's answer stored as the turn's reply (usage: every candidate's tokens)."""
        a = out.answer
        result = GenerationResult(
            index=0,
            text=a.completion,
            finish_reason=out.finish_reason,
            prompt_tokens=out.usage.prompt_tokens,
            completion_tokens=out.usage.completion_tokens,
            created=0.0,
        )
        reply = await self._store(turn, req, a.model, result, None)
        return reply.model_copy(update={"graph": out.graph, "candidate": a.id})

    async def _events(
        self,
        ctx: RequestContext,
        req: ChatRequest,
        node: str,
        params: GenerationParams,
    ) -> AsyncGenerator[TokenEvent | FinalEvent | ErrorEvent | TurnEvent | Admitted, None]:
        """The turn's events, ADMITTED in front of the first (the node's refusal is raised before it)."""
        owner = ctx.key_id
        async with self.store.turn(owner, req.user_id) as turn:
            messages = self.prompt(await turn.history(), req.message)
            result: GenerationResult | None = None
            admitted = False
            try:
                async for ev in self.graph.node(ctx, node).stream(
                    ChatPrompt(messages=messages), params, ctx.request_id, req.intermediate_result_interval_ms
                ):
                    if not admitted:
                        admitted = True
                        yield ADMITTED
                    yield stream_event(node, ev)
                    result = ev.result or result
            except Overloaded as exc:
                if not admitted:  # refused before its first event: the face answers 429 (nothing stored)
                    raise
                yield error_event(exc)
                return
            except GraphError as exc:  # nothing stored: the turn is rolled back
                yield error_event(exc)
                return
            if result is None:
                return
            yield TurnEvent(reply=await self._store(turn, req, node, result, result.prompt_messages))

    async def _store(
        self,
        turn: Turn,
        req: InferRequest,
        node: str,
        result: GenerationResult,
        kept: int | None,
    ) -> ChatReply:
        text = clean_reply(result.text)
        number = await turn.add(req.message, text, node, result.prompt_tokens, result.completion_tokens)
        return ChatReply(
            user_id=req.user_id,
            message=text,
            turn=number,
            model=node,
            finish_reason=result.finish_reason,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
            context_turns=None if kept is None else max(0, kept - 1) // 2,
        )

    # ---- histories ------------------------------------------------------------------------------
    async def history(self, owner: str | None, user_id: str) -> History:
        msgs = await self.store.history(owner, user_id)
        return History(user_id=user_id, turns=len({m.turn for m in msgs}), messages=msgs)

    async def forget(self, owner: str | None, user_id: str) -> Forgotten:
        async with self.store.turn(owner, user_id) as turn:  # not in the middle of a turn
            return Forgotten(user_id=user_id, deleted_messages=await turn.forget())
