"""Named graphs over tool calls, in-process on the tiny models: best_of prefers a finished valid call when
one is required, a cascade gate with `tool_call: true` passes a stage only when it made one, and a fallback
moves on from a branch that answered without the call a request requires."""

from __future__ import annotations

import asyncio

import pytest

from graph.entry.context import RequestContext
from graph.entry.local import build_local_graph
from graph.entry.policies.schemas import PolicyResponse
from graph.params import GenerationOverrides
from graph.tools import ToolCalling, made_call
from tests.graph.test_policies import tiny_config

GRAPHS = {
    "best": {"policy": "best_of", "nodes": {"tiny_a": 2, "tiny_b": 1}, "return_candidates": True},
    "call_first": {"policy": "cascade", "order": ["tiny_a", "tiny_b"], "gate": {"tool_call": True}},
    "call_or_next": {"policy": "fallback", "order": ["tiny_a", "tiny_b"]},
}
ADD = {
    "type": "object",
    "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": [1, 2, 3]}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
CALLING = ToolCalling.model_validate(
    {"tools": [{"name": "add", "parameters": ADD}], "choice": "required", "parallel": False}
)


@pytest.fixture(scope="module")
def graph(tiny_dir):
    g, engines = build_local_graph(tiny_config(GRAPHS))
    yield g
    for e in engines.values():
        e.close()


def run(graph, name: str, max_new_tokens: int) -> PolicyResponse:
    params = GenerationOverrides(do_sample=True, seed=3, max_new_tokens=max_new_tokens, tools=CALLING)
    ctx = RequestContext.make(timeout_s=120, request_id=f"rid-{name}-{max_new_tokens}")
    out = asyncio.run(graph.generate_score(ctx, "1 + 2?", params, graph=name))
    assert isinstance(out, PolicyResponse)
    return out


def test_cascade_stops_at_the_first_valid_call(graph) -> None:
    out = run(graph, "call_first", 120)
    assert out.trace.nodes_run == ["tiny_a"]
    assert made_call(out.answer.completion, out.answer.finish_reason, CALLING)


def test_cascade_goes_on_while_the_call_is_cut(graph) -> None:
    out = run(graph, "call_first", 4)  # no call fits in 4 tokens: no stage passes
    assert out.trace.nodes_run == ["tiny_a", "tiny_b"]


def test_best_of_answers_with_a_valid_call(graph) -> None:
    out = run(graph, "best", 120)
    assert made_call(out.answer.completion, out.answer.finish_reason, CALLING)
    calls = [c for c in out.candidates if made_call(c.completion, c.finish_reason, CALLING)]
    assert out.answer.id in {c.id for c in calls}
    cut = run(graph, "best", 4)  # none made a call: the classifier ranks them all, as without tools
    assert cut.answer.score == max(c.score for c in cut.candidates)


def test_fallback_serves_from_the_first_branch_that_made_the_call(graph) -> None:
    out = run(graph, "call_or_next", 120)
    assert made_call(out.answer.completion, out.answer.finish_reason, CALLING)
    steps = [p for p in out.path if p.kind == "fallback"]
    assert (steps[0].branch, steps[0].outcome, steps[0].why) == ("tiny_a", "served", "first choice")


def test_fallback_moves_on_from_a_branch_without_the_required_call(graph) -> None:
    out = run(graph, "call_or_next", 4)  # no call fits in 4 tokens: tiny_a fails over, tiny_b (the last) answers
    steps = [p for p in out.path if p.kind == "fallback"]
    assert steps[0].branch == "tiny_a" and steps[0].outcome == "failed"
    assert steps[0].why == "no valid tool call, and tool_choice requires one"
    assert steps[1].branch == "tiny_b" and steps[1].why == "after 1 failed"
    assert out.answer.model == "tiny_b"
