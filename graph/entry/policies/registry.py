"""The policy registry: a graph name -> its policy, run whole (/generate_score) or as a stream of events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from pydantic import BaseModel

from graph.chat_format import Prompt
from graph.entry import tracing
from graph.entry.context import RequestContext
from graph.entry.policies import steps
from graph.entry.policies.config import ALL, NamedGraph, WithPolicies
from graph.entry.policies.deadline import Deadline
from graph.entry.policies.run import Host, PolicyEvent, Run
from graph.entry.policies.schemas import DecisionEvent, PolicyResponse
from graph.entry.schemas import ErrorEvent
from graph.entry.tasks import background
from graph.errors import GraphError, InvalidRequest, NodeFailure

log = logging.getLogger("graph")


def graph_names(config: WithPolicies) -> list[str]:
    """Every graph a request may name (`all` first); the OpenAI face lists each as model `graph:<name>`."""
    return config.policies.names()


def resolve(config: WithPolicies, name: str | None, field: str = "graph") -> NamedGraph | None:
    """The named graph a request chose (None: the built-in `all`); a 400 naming the field if unknown."""
    chosen = config.policies.default if name is None else name
    if chosen == ALL:
        return None
    if chosen not in config.policies.graphs:
        raise InvalidRequest(f"{field}: unknown graph {chosen!r}; graphs: {graph_names(config)}", field=field)
    return config.policies.graphs[chosen]


def start(
    host: Host,
    ctx: RequestContext,
    graph: str | None,
    prompt: Prompt,
    overrides: BaseModel | None,
    deadline: Deadline | None,
    model: str | None = None,
) -> tuple[Run, NamedGraph] | None:
    """The run of one request on the named graph it chose (None for `all`), its parameters checked
    against the policy: on bad input a 400 naming the field, before anything starts."""
    g = resolve(host.config, graph)
    if g is None:
        return None
    if model is not None:
        raise InvalidRequest("model: a named graph chooses its own nodes; leave model out", field="model")
    name = graph or host.config.policies.default
    run = Run(host=host, ctx=ctx, graph=name, prompt=prompt, overrides=overrides, deadline=deadline)
    steps.check(run, g)
    return run, g


async def execute(run: Run, g: NamedGraph) -> PolicyResponse:
    """Run the policy; if it fails or is cancelled, stop every candidate it started."""
    try:
        out = await steps.run_graph(run, g)
        tracing.event(DecisionEvent(result=out))
        return out
    except BaseException:
        background(run.cancel_all())
        raise


async def events(run: Run, g: NamedGraph) -> AsyncGenerator[PolicyEvent | ErrorEvent, None]:
    """The policy's events as they happen (candidates, tokens, pruning, gates, scores), then the decision."""
    queue: asyncio.Queue[PolicyEvent | ErrorEvent | None] = asyncio.Queue()
    run.emit = queue.put

    async def main() -> None:
        try:
            await queue.put(DecisionEvent(result=await execute(run, g)))
        except GraphError as exc:
            await queue.put(ErrorEvent(**exc.body().model_dump()))
        except Exception as exc:  # a bug or a dead node: an error event, not a broken stream
            log.exception("policy graph %s failed", run.graph)
            await queue.put(
                ErrorEvent(**NodeFailure(f"graph {run.graph!r} failed: {exc}", node="graph").body().model_dump())
            )
        finally:
            await queue.put(None)

    task = asyncio.create_task(main())
    done = False
    try:
        while (item := await queue.get()) is not None:
            yield item
        done = True
    finally:
        if not done:  # the client left: stop the policy and its candidates
            task.cancel()
            background(run.cancel_all())
