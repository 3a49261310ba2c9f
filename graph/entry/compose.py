"""Graph composition: fan a prompt out to generator nodes at once, score all completions in one call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel

from graph.chat_format import Prompt, prompt_chars, score_text
from graph.config import GraphConfig
from graph.entry import tracing
from graph.entry.context import RequestContext
from graph.entry.limits import check_budget
from graph.entry.metering import Metered
from graph.entry.nodes import ClassifierClient, GeneratorClient
from graph.entry.policies import registry as policies
from graph.entry.policies.deadline import Deadline, Latencies
from graph.entry.policies.labels import LabelVectors
from graph.entry.policies.run import PolicyEvent
from graph.entry.policies.schemas import PolicyResponse
from graph.entry.schemas import ErrorEvent, FinalEvent, GraphEvent, ScoredCompletion, ScoreEvent, TokenEvent, Usage
from graph.entry.streams import ADMITTED, Admitted, admitted_first, opened
from graph.entry.tasks import background
from graph.errors import GraphError, InvalidRequest, NodeFailure, NodeTimeout, Overloaded, first_error
from graph.params import GenerationParams, merge_params
from graph.results import Classification, Embedding, GenerationResult, StreamEvent

T = TypeVar("T")

log = logging.getLogger("graph")
# A TimeoutError that ends a node call this long or more before its deadline came from inside the call
# (a client's own timeout), and is said as such rather than as the request's deadline.
DEADLINE_SLACK_S = 0.5


@dataclass
class Timeline:
    """Start/end wall-clock times of each node call of one request (evidence of overlap)."""

    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    def rounded(self) -> dict[str, list[float]]:
        return {k: [round(a, 3), round(b, 3)] for k, (a, b) in self.spans.items()}

    def overlap_s(self, a: str, b: str) -> float:
        (s1, e1), (s2, e2) = self.spans[a], self.spans[b]
        return max(0.0, min(e1, e2) - max(s1, s2))


class Graph:
    """The inference graph over node clients; the entry service is a thin shell around this."""

    def __init__(
        self,
        config: GraphConfig,
        generators: Mapping[str, GeneratorClient],
        classifier: ClassifierClient,
    ) -> None:
        self.config = config
        self.generators = generators
        self.classifier = classifier
        self.latencies = Latencies()  # recent classifier calls: the deadline splitter sizes scoring from them
        self.scoring_texts = 0  # completions of scored requests in flight, not scored yet (admission's reserve)
        self.inflight: dict[str, set[str]] = {}  # request id -> nodes working on it (for shutdown)
        self.label_vectors = LabelVectors()  # switch / guard label descriptions, embedded once

    # ---- validation at the edge -------------------------------------------------------------
    def select(self, model: str | None, *, field_name: str = "model") -> list[str]:
        if model is None:
            return list(self.generators)
        if model not in self.generators:
            raise InvalidRequest(
                f"{field_name}: unknown model {model!r}; valid models: {sorted(self.generators)}",
                field=field_name,
            )
        return [model]

    def check_prompt(self, prompt: Prompt, field_name: str) -> Prompt:
        limit, size = self.config.prompt.max_chars, prompt_chars(prompt)
        if size > limit:
            raise InvalidRequest(f"{field_name}: {size} characters is above the limit of {limit}", field=field_name)
        return prompt

    def params_for(self, node: str, overrides: BaseModel | None) -> GenerationParams:
        cfg = self.config.generators[node]
        return merge_params(cfg.defaults, overrides, max_new_tokens_limit=cfg.max_new_tokens_limit)

    def plan(self, nodes: Sequence[str], overrides: BaseModel | None, prompts: int = 1) -> dict[str, GenerationParams]:
        """Validate every node's params and work budget before any work starts (nothing half-done)."""
        plan = {n: self.params_for(n, overrides) for n in nodes}
        for n, params in plan.items():
            check_budget(n, self.config.generators[n].budget, prompts, params)
        return plan

    # ---- calls -----------------------------------------------------------------------------
    def node(self, ctx: RequestContext, name: str) -> Metered:
        """Generator `name` for request `ctx`: every token it generates is charged to the request."""
        return Metered(self.generators[name], ctx)

    async def _call(self, node: str, coro: Awaitable[T], timeline: Timeline | None, ctx: RequestContext | None) -> T:
        start = time.time()
        timeout = ctx.left_s() if ctx is not None else float(self.config.graph_timeout_s)
        try:
            with tracing.node_span(node) as span:
                out = await asyncio.wait_for(coro, timeout)
                tracing.record(span, out)
                return out
        except GraphError:
            raise
        except TimeoutError:
            elapsed = time.time() - start
            if elapsed < timeout - DEADLINE_SLACK_S:  # a timeout inside the call, not the request's deadline
                raise NodeTimeout(
                    f"node {node!r} timed out after {elapsed:.1f}s, inside the call (a client timeout), "
                    f"with {timeout - elapsed:.0f}s of the request's deadline left",
                    node=node,
                ) from None
            raise NodeTimeout(
                f"node {node!r} did not answer within the request's deadline "
                f"({timeout:.0f}s left of graph_timeout_s={self.config.graph_timeout_s}s)",
                node=node,
            ) from None
        except Exception as exc:  # a node died or answered garbage: say which one
            log.exception("node %s failed", node)
            raise NodeFailure(f"node {node!r} failed: {type(exc).__name__}: {exc}", node=node) from exc
        finally:
            if timeline is not None:
                timeline.spans[node] = (start, time.time())

    async def call(self, node: str, coro: Awaitable[T], ctx: RequestContext | None = None) -> T:
        """One node call under the request's deadline; a failure becomes a GraphError naming the node."""
        return await self._call(node, coro, None, ctx)

    async def generate(
        self,
        ctx: RequestContext,
        prompts: Sequence[Prompt],
        model: str | None,
        overrides: BaseModel | None,
        *,
        timeline: Timeline | None = None,
        reserve_s: float = 0.0,
    ) -> dict[str, list[list[GenerationResult]]]:
        """Run every selected node on all prompts concurrently; {node: [[result per sequence] per prompt]}.
        `reserve_s`: seconds of work after the nodes answer (scoring), taken out of each node's max_wait_s."""
        for i, p in enumerate(prompts):
            self.check_prompt(p, "prompt" if len(prompts) == 1 else f"prompts[{i}]")
        plan = self.plan(self.select(model), overrides, len(prompts))
        request_id = ctx.request_id
        self.inflight.setdefault(request_id, set()).update(plan)
        try:
            async with asyncio.TaskGroup() as group:  # one node failing cancels the others' calls
                tasks = {
                    n: group.create_task(
                        self._call(
                            n,
                            self.node(ctx, n).generate(list(prompts), plan[n], request_id, reserve_s=reserve_s),
                            timeline,
                            ctx,
                        )
                    )
                    for n in plan
                }
        except BaseExceptionGroup as group_err:
            # the nodes that were cut off may still be working on it: tell them to stop
            self._cancel_all(plan, request_id)
            raise first_error(group_err) from None
        except asyncio.CancelledError:  # the caller went away (a gRPC cancel or deadline): same
            self._cancel_all(plan, request_id)
            raise
        finally:
            self.inflight.pop(request_id, None)
        return {n: t.result() for n, t in tasks.items()}

    async def count_tokens(self, node: str, prompt: str, template: bool = True) -> int:
        """Tokens `prompt` takes on generator `node` (its chat template and special tokens included);
        `template` false: the text's own tokens, whatever template the node wraps around it."""
        return await self._call(node, self.generators[node].count_tokens(prompt, template), None, None)

    async def classify(self, texts: list[str]) -> list[Classification]:
        if not texts:
            return []
        start = time.monotonic()
        out = await self._call("classifier", self.classifier.classify(texts), None, None)
        self.latencies.record((time.monotonic() - start) * 1000.0, len(texts))
        if len(out) != len(texts):
            raise NodeFailure(f"classifier returned {len(out)} results for {len(texts)} texts", node="classifier")
        return out

    async def embed(self, ctx: RequestContext, texts: list[str]) -> list[Embedding]:
        """Sentence embeddings from the classifier node's encoder, one per text."""
        out = await self._call("classifier", self.classifier.embed(texts), None, ctx)
        if len(out) != len(texts):
            raise NodeFailure(f"classifier returned {len(out)} embeddings for {len(texts)} texts", node="classifier")
        return out

    async def decide(
        self, ctx: RequestContext, prompt: Prompt, overrides: BaseModel | None, graph: str
    ) -> PolicyResponse:
        """Named graph `graph`'s decision on a text or a chat (chat faces: messages through each node's template);
        `ctx.deadline_ms`: answer in time."""
        self.check_prompt(prompt, "prompt")
        chosen = policies.start(self, ctx, graph, prompt, overrides, Deadline.of(ctx.deadline_ms, self.latencies))
        if chosen is None:
            raise InvalidRequest(f"graph: {graph!r} is not a named graph (best_of, cascade)", field="graph")
        return await policies.execute(*chosen)

    async def generate_score(
        self,
        ctx: RequestContext,
        sentence: str,
        overrides: BaseModel | None,
        *,
        graph: str | None = None,
        timeline: Timeline | None = None,
    ) -> list[ScoredCompletion] | PolicyResponse:
        """`all` (every node, every completion scored, all returned) or the named graph's decision;
        `ctx.deadline_ms`: answer in time."""
        self.check_prompt(sentence, "original_sentence")
        deadline = Deadline.of(ctx.deadline_ms, self.latencies)
        chosen = policies.start(self, ctx, graph, sentence, overrides, deadline)
        if chosen is not None:  # a named graph (best_of, cascade) decides
            return await policies.execute(*chosen)
        overrides = Deadline.capped(deadline, overrides)  # generators: the deadline less scoring, as max_time_ms
        # The nodes admit it knowing the scoring still to come, behind the other scored requests in flight.
        texts = len(self.generators) * (getattr(overrides, "num_return_sequences", None) or 1)
        reserve_s = self.latencies.scoring_reserve_s(self.scoring_texts)
        self.scoring_texts += texts
        try:
            per_node = await self.generate(ctx, [sentence], None, overrides, timeline=timeline, reserve_s=reserve_s)
            if deadline is not None:
                deadline.generated()
            flat = [(node, r) for node, rows in per_node.items() for r in rows[0]]
            # One batched classifier call for every completion of the request.
            scores = await self.classify([sentence + r.text for _, r in flat])
        finally:
            self.scoring_texts -= texts
        return [ScoredCompletion.of(node, sentence, r, c) for (node, r), c in zip(flat, scores)]

    # ---- streaming -------------------------------------------------------------------------
    def stream(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        model: str | None,
        overrides: BaseModel | None,
        *,
        interval_ms: int = 0,
        score: bool = False,
        graph: str | None = None,
    ) -> AsyncGenerator[GraphEvent | PolicyEvent, None]:
        """Validate now (so bad input is a 4xx, not a broken stream), then stream the events."""
        events = self._stream(ctx, prompt, model, overrides, interval_ms, score, graph, mark=False)
        return events  # pyright: ignore[reportReturnType]  mark=False: no ADMITTED marker in it

    async def open_stream(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        model: str | None,
        overrides: BaseModel | None,
        *,
        interval_ms: int = 0,
        score: bool = False,
        graph: str | None = None,
    ) -> AsyncGenerator[GraphEvent | PolicyEvent, None]:
        """`stream` for a face: returns once every node has accepted the request, so a refusal
        (Overloaded) raises here, before the face has sent a byte (graph/entry/streams.py). A named graph's
        candidates are admitted as its policy starts them: its stream is returned at once."""
        return await opened(self._stream(ctx, prompt, model, overrides, interval_ms, score, graph, mark=True))

    def _stream(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        model: str | None,
        overrides: BaseModel | None,
        interval_ms: int,
        score: bool,
        graph: str | None,
        *,
        mark: bool,
    ) -> AsyncGenerator[GraphEvent | PolicyEvent | Admitted, None]:
        self.check_prompt(prompt, "prompt")
        deadline = Deadline.of(ctx.deadline_ms, self.latencies)
        chosen = policies.start(self, ctx, graph, prompt, overrides, deadline, model) if score else None
        if chosen is not None:
            events = policies.events(*chosen)
            return admitted_first(events) if mark else events
        overrides = Deadline.capped(deadline, overrides)
        plan = self.plan(self.select(model), overrides)
        return self._events(ctx, prompt, plan, interval_ms, score, mark)

    async def _events(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        plan: dict[str, GenerationParams],
        interval_ms: int,
        score: bool,
        mark: bool = False,
    ) -> AsyncGenerator[GraphEvent | Admitted, None]:
        """Interleave every selected node's events tagged by model; score each completion as it ends.
        At the request's deadline the stream ends with a node_timeout error event. With `mark`, ADMITTED
        once every node has accepted the request, and a node's refusal before that is raised, not sent."""
        request_id = ctx.request_id
        # None: a producer is done; a GraphError: a node refused the request before the stream was admitted
        queue: asyncio.Queue[GraphEvent | Admitted | GraphError | None] = asyncio.Queue()
        outstanding = len(plan)  # producers (node pumps, scorers) that have not said "done" yet
        tasks: list[asyncio.Task[None]] = []
        waiting = set(plan)  # nodes that have not accepted the request yet
        # scored: the nodes admit it knowing the scoring after each completion, behind the others in flight
        texts = sum(p.num_return_sequences for p in plan.values()) if score else 0
        reserve_s = self.latencies.scoring_reserve_s(self.scoring_texts) if score else 0.0
        self.scoring_texts += texts

        def admit(node: str) -> None:
            if node in waiting:
                waiting.discard(node)
                if mark and not waiting:
                    queue.put_nowait(ADMITTED)

        async def pump(node: str) -> None:
            nonlocal outstanding
            try:
                with tracing.node_span(node) as span:
                    results = []
                    async for ev in self.node(ctx, node).stream(
                        prompt, plan[node], request_id, interval_ms, lambda: admit(node), reserve_s=reserve_s
                    ):
                        await queue.put(stream_event(node, ev))
                        if ev.result is not None:
                            results.append(ev.result)
                        if score and ev.result is not None:
                            outstanding += 1
                            tasks.append(asyncio.create_task(score_one(node, ev.index, ev.result)))
                    tracing.record(span, results)
            except Overloaded as exc:
                await queue.put(exc if mark and node in waiting else error_event(exc))
            except GraphError as exc:
                await queue.put(error_event(exc))
            except Exception as exc:
                log.exception("stream from node %s failed", node)
                await queue.put(
                    error_event(NodeFailure(f"node {node!r} failed: {type(exc).__name__}: {exc}", node=node))
                )
            finally:
                admit(node)
                await queue.put(None)

        async def score_one(node: str, index: int, result: GenerationResult) -> None:
            try:
                (c,) = await self.classify([score_text(prompt, result.text)])
                await queue.put(ScoreEvent(model=node, index=index, **c.model_dump()))
            except GraphError as exc:
                await queue.put(error_event(exc))
            finally:
                await queue.put(None)

        tasks.extend(asyncio.create_task(pump(n)) for n in plan)
        self.inflight.setdefault(request_id, set()).update(plan)
        completed = False
        try:
            while outstanding:
                try:
                    item = await asyncio.wait_for(queue.get(), ctx.left_s())
                except TimeoutError:
                    late = next(iter(plan))
                    yield error_event(
                        NodeTimeout(
                            f"node {late!r} did not finish within the request's deadline "
                            f"(graph_timeout_s={self.config.graph_timeout_s}s)",
                            node=late,
                        )
                    )
                    break
                if item is None:
                    outstanding -= 1
                elif isinstance(item, GraphError):
                    raise item
                else:
                    yield item
            completed = True
        finally:
            self.scoring_texts -= texts
            self.inflight.pop(request_id, None)
            for t in tasks:
                t.cancel()
            if not completed:  # the client went away: stop the nodes' work too (BentoML won't).
                # A task of its own: the server cancels this one's scope, and awaits here would be
                # cancelled with it before the nodes heard anything.
                self._cancel_all(plan, request_id)

    def cancel_inflight(self) -> int:
        """Tell the nodes to stop every request in flight (shutdown); how many there were."""
        for request_id, nodes in list(self.inflight.items()):
            self._cancel_all(nodes, request_id)
        return len(self.inflight)

    def _cancel_all(self, nodes: Iterable[str], request_id: str) -> None:
        """Tell every node to stop `request_id`, as a task of its own (the caller may be cancelled)."""
        background(asyncio.gather(*[self._cancel(n, request_id) for n in nodes]))

    async def _cancel(self, node: str, request_id: str) -> None:
        try:
            await self.generators[node].cancel(request_id)
        except Exception:  # cancelling is best effort: the node may already be done
            log.debug("cancel on %s failed", node, exc_info=True)


def stream_event(node: str, ev: StreamEvent) -> TokenEvent | FinalEvent:
    """A node's stream event as the graph sends it: tagged by model, final events carry usage."""
    if ev.result is None:
        return TokenEvent(model=node, index=ev.index, text=ev.text)
    usage = Usage(prompt_tokens=ev.result.prompt_tokens, completion_tokens=ev.result.completion_tokens)
    return FinalEvent(
        model=node,
        index=ev.index,
        text=ev.text,
        finish_reason=ev.result.finish_reason,
        usage=usage,
        logprobs=ev.result.logprobs,
    )


def error_event(err: GraphError) -> ErrorEvent:
    return ErrorEvent(**err.body().model_dump())


def sse(data: BaseModel | str) -> str:
    """One server-sent event (`data: ...` and a blank line); BentoML writes chunks raw."""
    payload = data if isinstance(data, str) else data.model_dump_json(exclude_none=True)
    return f"data: {payload}\n\n"
