"""Tracing: a span per node call of a graph request, under the request's own span (OpenTelemetry API only).

The entry's HTTP server span (BentoML's OpenTelemetry middleware) is the root of a request's trace; each
node call (`Graph._call`) opens a child span here, whose context BentoML's client sends to the node, so
the node's own server span hangs under it, in the node's process or pod. A span records what the node
answered: tokens, finish reasons, the engine's queue wait and time to first token; a named graph's
decisions (candidates, pruning, gates, the answer) are events on the request's span. Spans are exported
where BentoML's configuration says (`tracing:`, docs/tracing.md); unconfigured, they cost next to nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel

from graph.results import Classification, GenerationResult

TRACER_NAME = "inference-graph"


def tracer() -> trace.Tracer:
    """From the process's provider: the entry sets BentoML's (services/graph.py), tests their own."""
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def node_span(node: str) -> Iterator[Span]:
    """The span of one node call; an error leaves it with status ERROR and the exception recorded."""
    with tracer().start_as_current_span(
        f"node {node}", kind=SpanKind.CLIENT, attributes={"graph.node": node}, record_exception=True
    ) as span:
        yield span


@contextmanager
def step_span(graph: str, kind: str, depth: int) -> Iterator[Span]:
    """The span of one step of a named graph (its branches' steps and node calls hang under it)."""
    with tracer().start_as_current_span(
        f"graph {graph}",
        kind=SpanKind.INTERNAL,
        attributes={"graph.graph": graph, "graph.kind": kind, "graph.depth": depth},
        record_exception=True,
    ) as span:
        yield span


def step_done(span: Span, out: Any) -> None:
    """What a step decided: the branch it served with, the answer's candidate and node, the path below it."""
    if not span.is_recording():
        return
    path = getattr(out, "path", None) or []
    if path and path[0].branch is not None:
        span.set_attribute("graph.branch", path[0].branch)
    answer = getattr(out, "answer", None)
    if answer is not None:
        span.set_attributes({"graph.answer.model": answer.model, "graph.answer.candidate": answer.id})
    span.set_attribute("graph.path", [f"{p.graph}:{p.kind}:{p.branch or ''}:{p.outcome}" for p in path])


def record(span: Span, answer: Any) -> None:
    """What a node answered, as the span's attributes (generations or classifications; else nothing)."""
    if not span.is_recording() or not isinstance(answer, list):
        return
    rows = [r for item in answer for r in (item if isinstance(item, list) else [item])]
    results = [r for r in rows if isinstance(r, GenerationResult)]
    if results:
        span.set_attributes(generation_attributes(results))
    elif rows and all(isinstance(r, Classification) for r in rows):
        span.set_attribute("graph.texts", len(rows))


def generation_attributes(results: Sequence[GenerationResult]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "graph.completions": len(results),
        "graph.prompt_tokens": sum(r.prompt_tokens for r in results),
        "graph.completion_tokens": sum(r.completion_tokens for r in results),
        "graph.finish_reasons": [r.finish_reason for r in results],
    }
    queue = [r.queue_ms for r in results if r.queue_ms is not None]
    first = [r.first_token_ms for r in results if r.first_token_ms is not None]
    if queue:
        out["graph.queue_ms"] = max(queue)
    if first:
        out["graph.first_token_ms"] = max(first)
    return out


def event(ev: BaseModel) -> None:
    """A named graph's decision (a PolicyEvent) as an event on the current span (the request's)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    fields = ev.model_dump(exclude_none=True, mode="json")
    name = str(fields.pop("type", type(ev).__name__))
    if name in ("token", "final"):  # the text itself is not a decision
        return
    attrs: dict[str, Any] = {}
    _flatten("graph", fields, attrs, depth=3)
    span.add_event(f"policy.{name}", attrs)


def _flatten(prefix: str, value: Any, out: dict[str, Any], depth: int) -> None:
    """Scalars and lists of scalars as dotted attributes (OpenTelemetry's attribute types)."""
    if isinstance(value, str | int | float | bool):
        out[prefix] = value
    elif isinstance(value, dict) and depth > 0:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out, depth - 1)
    elif isinstance(value, list) and value and all(isinstance(v, str | int | float | bool) for v in value):
        out[prefix] = value
    elif isinstance(value, list) and depth > 0:
        out[f"{prefix}.count"] = len(value)
