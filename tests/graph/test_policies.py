"""Graph policies in-process on the tiny models with fixed seeds: best_of, pruning, cascade, deadlines, streams."""

from __future__ import annotations

import asyncio
import math

import pytest
import yaml

from graph.config import ROOT, parse_config
from graph.entry.compose import Graph
from graph.entry.context import RequestContext
from graph.entry.local import build_local_graph
from graph.entry.policies.registry import graph_names
from graph.entry.policies.schemas import PolicyResponse
from graph.errors import InvalidRequest
from graph.params import GenerationOverrides

NODES = {"tiny_a": 2, "tiny_b": 2}
GRAPHS = {
    "best": {"policy": "best_of", "nodes": NODES},
    "pruned_inf": {"policy": "best_of", "nodes": NODES, "prune": {"every_tokens": 4, "margin": math.inf}},
    "pruned": {"policy": "best_of", "nodes": NODES, "prune": {"every_tokens": 4, "margin": 0.0}},
    "pass_first": {"policy": "cascade", "order": ["tiny_b", "tiny_a"], "gate": {"label": "positive", "min_score": 0.0}},
    "never": {"policy": "cascade", "order": ["tiny_a", "tiny_b"], "gate": {"min_mean_logprob": 0.0}},
}
BUDGET = 64  # max_new_tokens of every sampled run here
SAMPLED = GenerationOverrides(do_sample=True, seed=7, max_new_tokens=BUDGET)
PROMPT = "I have an idea!"


def tiny_config(graphs=GRAPHS, default="all"):
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["policies"] = {"default": default, "graphs": graphs}
    return parse_config(data, source="test")


@pytest.fixture(scope="module")
def graph(tiny_dir):
    g, engines = build_local_graph(tiny_config())
    yield g
    for e in engines.values():
        e.close()


def run(graph: Graph, name: str, params=SAMPLED, **kw) -> PolicyResponse:
    ctx = RequestContext.make(timeout_s=120, request_id=f"rid-{name}").asking(kw.pop("deadline_ms", None))
    out = asyncio.run(graph.generate_score(ctx, PROMPT, params, graph=name, **kw))
    assert isinstance(out, PolicyResponse)
    return out


def generated_total(graph: Graph) -> float:
    return sum(g.engine.stats()["generated_tokens_total"] for g in graph.generators.values())


def test_names_listed_for_other_faces(graph):
    assert graph_names(graph.config) == ["all", *GRAPHS]


def test_best_of_scores_all_candidates_and_picks_the_best(graph):
    out = run(graph, "best")
    assert [c.id for c in out.candidates] == ["c0", "c1", "c2", "c3"]
    assert [c.model for c in out.candidates] == ["tiny_a", "tiny_a", "tiny_b", "tiny_b"]
    assert [c.seed for c in out.candidates] == [7, 8, 9, 10]  # distinct seeds
    assert out.answer.score == max(c.score for c in out.candidates)
    assert out.answer in out.candidates
    assert out.trace.tokens_total == sum(c.completion_tokens for c in out.candidates)
    assert out.trace.prune_rounds == []


def test_infinite_margin_equals_exhaustive_best_of(graph):
    plain, pruned = run(graph, "best"), run(graph, "pruned_inf")
    assert pruned.trace.prune_rounds, "the pruning path ran (rounds scored) but cancelled nobody"
    assert all(r.cancelled == [] for r in pruned.trace.prune_rounds)
    assert pruned.answer == plain.answer
    assert pruned.candidates == plain.candidates


def test_finite_margin_spends_fewer_tokens_and_cancelled_candidates_stop_soon(graph):
    before = generated_total(graph)
    plain = run(graph, "best")
    plain_tokens = generated_total(graph) - before
    before = generated_total(graph)
    pruned = run(graph, "pruned")
    pruned_tokens = generated_total(graph) - before
    cancelled = [c for c in pruned.candidates if c.pruned_at_tokens is not None]
    assert cancelled, pruned.trace.prune_rounds
    assert pruned_tokens < plain_tokens and pruned.trace.tokens_total < plain.trace.tokens_total
    for c in cancelled:
        assert c.finish_reason == "cancelled"
        # The cancel saved most of what the candidate had left: the decode thread runs a few steps past the
        # cancel (up to 4 on a quiet machine, 5 seen with one of two cores busy), never half of the rest.
        assert c.pruned_at_tokens is not None
        left = BUDGET - c.pruned_at_tokens
        assert c.completion_tokens - c.pruned_at_tokens < left // 2, c
    assert pruned.answer.pruned_at_tokens is None and pruned.answer.finish_reason != "cancelled"
    assert pruned.answer.score == max(c.score for c in pruned.candidates if c.pruned_at_tokens is None)


def test_cascade_gate_that_always_passes_runs_only_the_first_node(graph):
    out = run(graph, "pass_first")
    assert out.trace.nodes_run == ["tiny_b"]
    assert [s.model for s in out.trace.stages] == ["tiny_b"] and out.trace.stages[0].passed
    assert out.answer.model == "tiny_b"
    assert out.trace.tokens_total == out.answer.completion_tokens


def test_cascade_gate_that_never_passes_runs_all_and_returns_the_best(graph):
    out = run(graph, "never")
    assert out.trace.nodes_run == ["tiny_a", "tiny_b"]
    assert [s.passed for s in out.trace.stages] == [False, False]
    assert all(s.mean_logprob is not None and s.mean_logprob < 0 for s in out.trace.stages)
    assert out.answer.score == max(c.score for c in out.candidates)


def test_bad_graph_name_is_a_400_naming_it(graph):
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(graph.generate_score(RequestContext.make(timeout_s=120), PROMPT, SAMPLED, graph="best_off"))
    assert err.value.field == "graph" and "best_off" in err.value.message and "pruned" in err.value.message


def test_several_candidates_on_a_greedy_node_are_sampled(graph):
    out = run(graph, "best", params=GenerationOverrides(seed=5, max_new_tokens=16))  # tiny nodes default to greedy
    texts = [c.completion for c in out.candidates if c.model == "tiny_a"]
    assert len(texts) == 2 and texts[0] != texts[1]


def test_greedy_with_several_candidates_on_a_node_is_a_400(graph):
    with pytest.raises(InvalidRequest) as err:
        run(graph, "best", params=GenerationOverrides(do_sample=False))
    assert err.value.field == "params.do_sample" and "tiny_a" in err.value.message


LONG = GenerationOverrides(do_sample=True, seed=7, max_new_tokens=900)


@pytest.mark.parametrize("name", ["best", "pruned_inf", "never"])
def test_deadline_answers_in_time_with_what_it_has(graph, name):
    out = run(graph, name, params=LONG, deadline_ms=600)
    assert out.finish_reason == "time"
    assert out.trace.budget is not None and out.trace.budget.deadline_ms == 600
    assert 0 < out.trace.budget.generate_ms < 600 and out.trace.budget.score_ms > 0
    cut = any(c.finish_reason == "time" for c in out.candidates)
    # a cascade whose first stage ended on its own (tiny_a stops after ~400 sampled tokens) may have had no
    # time left for the next stage: it is then skipped, and that is what cut the answer short
    skipped = name == "never" and out.trace.nodes_run == ["tiny_a"]
    assert cut or skipped, (out.trace.nodes_run, [(c.model, c.finish_reason) for c in out.candidates])
    assert all(c.completion_tokens < 900 for c in out.candidates)
    assert out.trace.elapsed_ms < 600 + 2000  # generous: the machine is shared


def test_deadline_on_all_keeps_the_list_response(graph):
    out = asyncio.run(graph.generate_score(RequestContext.make(timeout_s=120).asking(400), PROMPT, LONG, graph="all"))
    assert isinstance(out, list) and {c.model for c in out} == {"tiny_a", "tiny_b"}
    assert any(c.finish_reason == "time" for c in out)  # (a tiny random model may also stop on its own)
    assert all(c.finish_reason in ("time", "stop") and c.completion_tokens < 900 for c in out)


def test_stream_shows_candidates_pruning_and_decision(graph):
    async def collect():
        return [
            ev
            async for ev in graph.stream(
                RequestContext.make(timeout_s=120), PROMPT, None, SAMPLED, score=True, graph="pruned"
            )
        ]

    events = asyncio.run(collect())
    types = [e.type for e in events]
    assert types[0] == "candidates" and types[-1] == "decision"
    assert [c.id for c in events[0].candidates] == ["c0", "c1", "c2", "c3"]
    assert "token" in types and "prune" in types and types.count("score") == 4 and types.count("final") == 4
    decision = events[-1].result
    prunes = [e for e in events if e.type == "prune"]
    assert [r.model_dump() for r in decision.trace.prune_rounds] == [
        {k: v for k, v in p.model_dump().items() if k != "type"} for p in prunes
    ]
    cancelled = {c for p in prunes for c in p.cancelled}
    finals = {f"c{e.index}": e for e in events if e.type == "final"}
    assert cancelled and all(finals[c].finish_reason == "cancelled" for c in cancelled)
    for c in decision.candidates:  # each candidate's fragments make its text
        text = "".join(e.text for e in events if e.type in ("token", "final") and f"c{e.index}" == c.id)
        assert text == c.completion


def test_stream_of_a_named_graph_refuses_model(graph):
    with pytest.raises(InvalidRequest) as err:
        graph.stream(RequestContext.make(timeout_s=120), PROMPT, "tiny_a", SAMPLED, score=True, graph="best")
    assert err.value.field == "model"


class Ledger:
    """Where a request's tokens are charged (graph/entry/auth.py ApiKeys in the server): it keeps them."""

    def __init__(self) -> None:
        self.charged: list[tuple[str | None, int]] = []

    def charge(self, caller, tokens: int) -> None:
        self.charged.append((caller.key_id, tokens))


def test_the_graph_charges_every_candidate_pruned_ones_included(graph):
    """The request's account gets every token its candidates generated: a named graph's pruned candidates
    (charged for what they made before the cut) and `all`'s completions, to the caller's key."""
    from graph.entry.auth import Caller

    ledger = Ledger()
    ctx = RequestContext.make(timeout_s=120, caller=Caller(key_id="k1"), meter=ledger)

    async def collect():
        return [ev async for ev in graph.stream(ctx, PROMPT, None, SAMPLED, score=True, graph="pruned")]

    decision = asyncio.run(collect())[-1].result
    assert decision.trace.prune_rounds and any(c.pruned_at_tokens is not None for c in decision.candidates)
    assert ctx.account.tokens == decision.trace.tokens_total == sum(n for _, n in ledger.charged)
    assert {k for k, _ in ledger.charged} == {"k1"}
    plain = RequestContext.make(timeout_s=120, meter=ledger)
    out = asyncio.run(graph.generate_score(plain, PROMPT, SAMPLED))
    assert plain.account.tokens == sum(c.completion_tokens for c in out) > 0
