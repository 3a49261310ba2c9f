"""One policy request: its candidates (each its own node request id), node calls, scoring, events, cancellation."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydantic import BaseModel

from graph.chat_format import Prompt, score_text
from graph.entry import tracing
from graph.entry.context import RequestContext
from graph.entry.nodes import GeneratorClient
from graph.entry.policies.config import WithPolicies
from graph.entry.policies.deadline import Deadline, Latencies
from graph.entry.policies.labels import LabelVectors
from graph.entry.policies.schemas import Candidate, CandidatesEvent, DecisionEvent, GateEvent, PruneEvent, StepEvent
from graph.entry.schemas import FinalEvent, ScoreEvent, TokenEvent, Usage
from graph.errors import InvalidRequest
from graph.params import GenerationParams
from graph.results import Classification, Embedding, GenerationResult, StreamEvent

T = TypeVar("T")
log = logging.getLogger("graph")

PolicyEvent = (
    CandidatesEvent | TokenEvent | FinalEvent | ScoreEvent | PruneEvent | GateEvent | StepEvent | DecisionEvent
)
Emit = Callable[[PolicyEvent], Awaitable[None]]


class Host(Protocol):
    """What a policy needs of the graph (graph.entry.compose.Graph has it)."""

    latencies: Latencies
    label_vectors: LabelVectors

    @property
    def config(self) -> WithPolicies: ...

    @property
    def generators(self) -> Mapping[str, GeneratorClient]: ...

    def params_for(self, node: str, overrides: BaseModel | None) -> GenerationParams: ...

    def node(self, ctx: RequestContext, name: str) -> GeneratorClient: ...

    async def classify(self, texts: list[str]) -> list[Classification]: ...

    async def embed(self, ctx: RequestContext, texts: list[str]) -> list[Embedding]: ...

    async def call(self, node: str, coro: Awaitable[T], ctx: RequestContext | None = None) -> T: ...


@dataclass
class Spec:
    """A candidate before it runs: id (c0, c1, ...), node, params (seed, time cap) and node request id."""

    index: int
    id: str
    node: str
    params: GenerationParams
    request_id: str


@dataclass
class Run:
    """The state of one policy request."""

    host: Host
    ctx: RequestContext
    graph: str
    prompt: Prompt  # a text, or a chat (messages through each node's chat template)
    overrides: BaseModel | None
    deadline: Deadline | None
    emit: Emit | None = None
    started: float = field(default_factory=time.monotonic)
    started_rids: list[tuple[str, str]] = field(default_factory=list)  # (node, candidate request id)
    nodes_run: list[str] = field(default_factory=list)
    scope: str = ""  # a nested graph's prefix of its candidate ids (`s1.c0`): ids stay unique in one request
    depth: int = 0  # nesting depth (0: the graph the request named)

    def child(
        self,
        graph: str,
        scope: str,
        *,
        prompt: Prompt | None = None,
        overrides: BaseModel | None = None,
        deadline: Deadline | None = None,
        emit: Emit | None = None,
        keep: tuple[str, ...] = (),
    ) -> Run:
        """A branch or step of this run: the same request, account and candidate list (cancel_all stops them
        all), its own graph name and id prefix; prompt and overrides inherited unless given, deadline and emit
        only when `keep` names them."""
        return Run(
            host=self.host,
            ctx=self.ctx,
            graph=graph,
            prompt=prompt if prompt is not None else self.prompt,
            overrides=overrides if overrides is not None else self.overrides,
            deadline=deadline if deadline is not None or "deadline" not in keep else self.deadline,
            emit=emit if emit is not None or "emit" not in keep else self.emit,
            started_rids=self.started_rids,
            nodes_run=self.nodes_run,
            scope=f"{self.scope}{scope}",
            depth=self.depth + 1,
        )

    @property
    def request_id(self) -> str:
        return self.ctx.request_id

    def scored(self, completion: str) -> str:
        """What the classifier scores (and `generated` shows): the prompt (a chat's last user message) + it."""
        return score_text(self.prompt, completion)

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0

    async def send(self, event: PolicyEvent) -> None:
        tracing.event(event)
        if self.emit is not None:
            await self.emit(event)

    # ---- candidates ------------------------------------------------------------------------------
    def base_params(self, node: str, *, copies: int, logprobs: bool = False) -> GenerationParams:
        """The node's defaults + the request's overrides, validated, checked against the policy's needs."""
        p = self.host.params_for(node, self.overrides)
        if p.num_return_sequences != 1:
            raise InvalidRequest(
                f"params.num_return_sequences: graph {self.graph!r} sets its candidates in the config; leave it at 1",
                field="params.num_return_sequences",
            )
        if copies > 1 and not p.do_sample:  # several candidates on a node: the graph samples them
            asked = self.overrides.model_dump().get("do_sample") if self.overrides is not None else None
            if asked is False or p.temperature == 0.0:
                raise InvalidRequest(
                    f"params.do_sample: graph {self.graph!r} runs {copies} candidates on node {node!r}, and greedy "
                    "decoding gives the same text each time; leave do_sample out or true (and temperature above 0)",
                    field="params.do_sample",
                )
            p = p.model_copy(update={"do_sample": True})
        return p.model_copy(update={"logprobs": True}) if logprobs and not p.logprobs else p

    def spec(self, index: int, node: str, params: GenerationParams, seed: int | None, cap_ms: int | None) -> Spec:
        update: dict[str, int | None] = {"seed": seed}
        if cap_ms is not None:
            update["max_time_ms"] = min(cap_ms, params.max_time_ms or cap_ms)
        cid = f"{self.scope}c{index}"
        return Spec(index, cid, node, params.model_copy(update=update), f"{self.request_id}:{cid}")

    def seed_base(self, params: GenerationParams) -> int:
        """The request's seed, or a fresh one: candidate i samples with base + i (distinct seeds)."""
        return params.seed if params.seed is not None else random.randrange(2**32 - 64)

    async def generate(self, spec: Spec) -> GenerationResult:
        """One candidate, whole (no stream)."""
        self._started(spec)
        gen = self.host.node(self.ctx, spec.node)  # charged to the request, whatever becomes of it
        (rows,) = await self.host.call(spec.node, gen.generate([self.prompt], spec.params, spec.request_id), self.ctx)
        return rows[0]

    async def generate_many(self, specs: list[Spec]) -> list[GenerationResult]:
        """Consecutive candidates of one node (seeds s, s+1, ...) as one request with num_return_sequences."""
        first = specs[0]
        if len(specs) == 1:
            return [await self.generate(first)]
        params = first.params.model_copy(update={"num_return_sequences": len(specs)})
        spec = Spec(first.index, first.id, first.node, params, f"{first.request_id}-{specs[-1].id}")
        self._started(spec)
        gen = self.host.node(self.ctx, spec.node)
        (rows,) = await self.host.call(spec.node, gen.generate([self.prompt], params, spec.request_id), self.ctx)
        return list(rows)

    def stream(self, spec: Spec) -> AsyncIterator[StreamEvent]:
        self._started(spec)  # a pruned candidate's stream is charged for what it generated before the cut
        return self.host.node(self.ctx, spec.node).stream(self.prompt, spec.params, spec.request_id, 0)

    def _started(self, spec: Spec) -> None:
        self.started_rids.append((spec.node, spec.request_id))
        if spec.node not in self.nodes_run:
            self.nodes_run.append(spec.node)

    async def cancel(self, spec: Spec) -> None:
        try:
            await self.host.generators[spec.node].cancel(spec.request_id)
        except Exception:  # best effort: it may have finished already
            log.debug("cancel %s on %s failed", spec.request_id, spec.node, exc_info=True)

    async def cancel_since(self, since: int) -> None:
        """Stop the candidates started after the first `since` (a fallback branch that failed or ran late)."""
        gens = self.host.generators
        started = self.started_rids[since:]
        await asyncio.gather(*[gens[n].cancel(rid) for n, rid in started], return_exceptions=True)

    async def cancel_all(self) -> None:
        """Stop every candidate this run started (the request failed or its client left)."""
        gens = self.host.generators
        await asyncio.gather(*[gens[n].cancel(rid) for n, rid in self.started_rids], return_exceptions=True)

    # ---- scoring -----------------------------------------------------------------------------------
    async def score(self, texts: list[str]) -> list[Classification]:
        """One classifier call for all `texts` (the graph records its duration for the deadline splitter)."""
        return await self.host.classify(texts)

    def candidate(
        self, spec: Spec, result: GenerationResult, c: Classification, pruned_at: int | None = None
    ) -> Candidate:
        return Candidate(
            id=spec.id,
            model=spec.node,
            seed=spec.params.seed,
            generated=self.scored(result.text),
            completion=result.text,
            score=c.score,
            label=c.label,
            labels=c.labels,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            mean_logprob=mean_logprob(result),
            pruned_at_tokens=pruned_at,
        )


def mean_logprob(result: GenerationResult) -> float | None:
    if not result.logprobs:
        return None
    return sum(t.logprob for t in result.logprobs) / len(result.logprobs)


def token_event(spec_index: int, node: str, ev: StreamEvent) -> TokenEvent | FinalEvent:
    """A candidate's stream event as the graph sends it (index = the candidate's number)."""
    if ev.result is None:
        return TokenEvent(model=node, index=spec_index, text=ev.text)
    usage = Usage(prompt_tokens=ev.result.prompt_tokens, completion_tokens=ev.result.completion_tokens)
    return FinalEvent(model=node, index=spec_index, text=ev.text, finish_reason=ev.result.finish_reason, usage=usage)
