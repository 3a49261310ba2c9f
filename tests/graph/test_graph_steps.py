"""Named graphs' step kinds in-process on the tiny models: switch, split, fallback, sequence, guard, nesting,
the path every answer names, the tokens charged, the deadline, streams and start-up checks."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import pytest
import yaml

from graph.config import ROOT, parse_config
from graph.entry.compose import Graph
from graph.entry.context import RequestContext
from graph.entry.faces.openai_face import OpenAIFace
from graph.entry.faces.openai_requests import ChatCompletionRequest, parse_request
from graph.entry.local import build_local_graph
from graph.entry.policies import labels, metrics
from graph.entry.policies.config import Split, ZeroShot
from graph.entry.policies.diagram import DiagramNode, diagram
from graph.entry.policies.schemas import DecisionEvent, PolicyResponse, StepEvent, path_text
from graph.entry.policies.steps import pick
from graph.entry.schemas import FinalEvent, TokenEvent
from graph.errors import ConfigError, InvalidRequest, Refused
from graph.params import GenerationOverrides
from tests.graph.test_policies import tiny_config

TOPICS = {"greeting": "hello there, good morning to you", "sums": "add seven and five then multiply by two"}
RUDE = {"rude": "you are a stupid idiot", "kind": "thank you, that is very kind"}
GRAPHS = {
    "best": {"policy": "best_of", "nodes": {"tiny_a": 2, "tiny_b": 1}},
    "cheap_first": {
        "policy": "cascade",
        "order": ["tiny_b", "tiny_a"],
        "gate": {"label": "positive", "min_score": 0.5},
    },
    "router": {
        "policy": "switch",
        "by": "label",
        "zero_shot": {"labels": TOPICS},
        "cases": {"greeting": "tiny_b", "sums": "best"},
        "default": "tiny_a",
    },
    "by_tier": {"policy": "switch", "by": "metadata", "field": "tier", "cases": {"gold": "best"}, "default": "tiny_b"},
    "ab": {"policy": "split", "weights": {"tiny_a": 3, "tiny_b": 1}},
    "failover": {"policy": "fallback", "order": ["tiny_a", "cheap_first"]},
    "refine": {
        "policy": "sequence",
        "steps": [
            {"run": "tiny_a", "template": "{prompt}"},
            {"run": "tiny_b", "template": "Question: {prompt}\nDraft: {previous}\nBetter:"},
        ],
    },
    "best_refine": {"policy": "best_of", "nodes": {"refine": 2, "tiny_a": 1}},
    "always_refuse": {
        "policy": "guard",
        "run": "tiny_a",
        "check": ["output"],
        "zero_shot": {"labels": RUDE},
        "block": {"rude": 0.0},
    },
    "prompt_guard": {
        "policy": "guard",
        "run": "best",
        "check": ["prompt"],
        "zero_shot": {"labels": RUDE},
        "block": {"rude": 0.0},
        "on_hit": "route",
        "route_to": "tiny_b",
    },
    "nested": {"policy": "fallback", "order": ["router", "ab"]},
    "safe_out": {"policy": "guard", "run": "tiny_a", "zero_shot": {"labels": RUDE}, "block": {"rude": 1.0}},
}
SAMPLED = GenerationOverrides(do_sample=True, seed=7, max_new_tokens=16)
PROMPT = "I have an idea!"


def config(graphs=GRAPHS):
    return tiny_config(graphs)


@pytest.fixture(scope="module")
def graph(tiny_dir):
    g, engines = build_local_graph(config())
    yield g
    for e in engines.values():
        e.close()


def ctx(rid: str = "rid", **tags) -> RequestContext:
    return RequestContext.make(timeout_s=120, request_id=rid).tagged(**tags)


def decide(graph: Graph, name: str, prompt: str = PROMPT, params=SAMPLED, c: RequestContext | None = None):
    out = asyncio.run(graph.decide(c or ctx(f"rid-{name}"), prompt, params, name))
    assert isinstance(out, PolicyResponse)
    return out


def generated(graph: Graph) -> int:
    return int(sum(g.engine.stats()["generated_tokens_total"] for g in graph.generators.values()))


# ---- start-up checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("graphs", "key", "words"),
    [
        ({"x": {"policy": "fallback", "order": ["tiny_a", "nope"]}}, "policies.graphs.x.order[1]", "unknown branch"),
        (
            {
                "x": {"policy": "fallback", "order": ["tiny_a", "y"]},
                "y": {"policy": "split", "weights": {"x": 1}},
            },
            "policies.graphs.x",
            "cycle: x -> y -> x",
        ),
        ({"x": {"policy": "best_of", "nodes": {"x": 1}}}, "policies.graphs.x", "cycle: x -> x"),
        ({"x": {"policy": "best_of", "nodes": {"nope": 1}}}, "policies.graphs.x.nodes", "unknown node 'nope'"),
        (
            {
                "x": {
                    "policy": "switch",
                    "by": "label",
                    "zero_shot": {"labels": TOPICS},
                    "cases": {"code": "tiny_a"},
                    "default": "tiny_b",
                }
            },
            "cases.code",
            "not a label",
        ),
        (
            {"x": {"policy": "switch", "by": "user", "cases": {"ann": "tiny_a"}, "default": "nope"}},
            "policies.graphs.x.default",
            "unknown branch 'nope'",
        ),
        (
            {"x": {"policy": "guard", "run": "tiny_a", "zero_shot": {"labels": RUDE}, "block": {"mean": 0.5}}},
            "block.mean",
            "not a label",
        ),
        ({"x": {"policy": "sequence", "steps": [{"run": "tiny_a"}]}}, "steps", "at least 2"),
        ({"x": {"policy": "split", "weights": {"tiny_a": 0}}}, "weights.tiny_a", "above 0"),
    ],
)
def test_config_errors_name_the_key(graphs, key, words):
    with pytest.raises(ConfigError) as err:
        config(graphs)
    assert key in str(err.value) and words in str(err.value), str(err.value)


def test_nodes_of_a_nested_graph(graph):
    assert graph.config.policies.nodes_of("nested") == ["tiny_b", "tiny_a"]
    assert graph.config.policies.holds_output("always_refuse") == "always_refuse"
    assert graph.config.policies.holds_output("nested") is None


# ---- switch ----------------------------------------------------------------------------------------------


def test_switch_on_a_label_routes_to_its_case_with_one_classifier_call(graph):
    asyncio.run(labels.classify(graph, ctx(), ZeroShot(labels=TOPICS), ["warm-up"]))  # descriptions embedded once
    calls = Counter()
    embed = graph.classifier.embed

    async def counted(texts):
        calls["embed"] += 1
        return await embed(texts)

    graph.classifier.embed = counted  # type: ignore[method-assign]  # count the real calls
    try:
        # a prompt equal to a label's description has cosine 1 with it: that label wins whatever the weights
        sums = decide(graph, "router", prompt=TOPICS["sums"])
        greeting = decide(graph, "router", prompt=TOPICS["greeting"])
    finally:
        graph.classifier.embed = embed  # type: ignore[method-assign]
    assert calls["embed"] == 2  # one classifier call per switch
    assert [p.kind for p in sums.path] == ["switch", "best_of"]
    assert sums.path[0].branch == "best" and sums.path[0].why is not None and sums.path[0].why.startswith("label sums")
    assert sums.policy == "switch" and len(sums.candidates) == 3 and sums.usage.candidates == 3
    assert greeting.path[0].branch == "tiny_b" and greeting.answer.model == "tiny_b"
    assert [p.kind for p in greeting.path] == ["switch", "node"]
    assert path_text(greeting.path) == "router[switch]:tiny_b > tiny_b[node]"


def test_switch_on_metadata_and_its_default(graph):
    gold = decide(graph, "by_tier", c=ctx("m1", metadata={"tier": "gold"}))
    other = decide(graph, "by_tier", c=ctx("m2", metadata={"tier": "tin"}))
    bare = decide(graph, "by_tier", c=ctx("m3"))
    assert gold.path[0].branch == "best" and gold.path[0].why == "metadata gold"
    assert other.path[0].branch == "tiny_b" and other.path[0].why == "metadata tin: no case"
    assert bare.path[0].branch == "tiny_b" and bare.path[0].why == "metadata: not given"


# ---- split -----------------------------------------------------------------------------------------------


def test_split_is_within_5_percent_of_its_weights_over_1000_decisions():
    g = Split(policy="split", weights={"a": 0.6, "b": 0.3, "c": 0.1})
    drawn = Counter(pick(g, f"user-{i}")[0] for i in range(1000))
    for name, w in g.weights.items():
        assert abs(drawn[name] / 1000 - w) <= 0.05, drawn
    unsticky = g.model_copy(update={"sticky": False})
    drawn = Counter(pick(unsticky, "same")[0] for _ in range(1000))
    for name, w in g.weights.items():
        assert abs(drawn[name] / 1000 - w) <= 0.05, drawn


def test_split_is_sticky_per_user_and_names_its_branch(graph):
    for user in ("ann", "bob", "cy"):
        branches = {decide(graph, "ab", c=ctx(f"s-{user}-{i}", user=user)).path[0].branch for i in range(3)}
        assert len(branches) == 1 and branches <= {"tiny_a", "tiny_b"}
        assert pick(graph.config.policies.graphs["ab"], user)[0] in branches  # type: ignore[arg-type]
    out = decide(graph, "ab", c=ctx("s-why", user="ann"))
    assert out.path[0].kind == "split" and "sticky on user" in (out.path[0].why or "")
    assert out.answer.model == out.path[0].branch


# ---- sequence and nesting --------------------------------------------------------------------------------


def test_sequence_feeds_one_step_into_the_next_and_charges_every_token(graph):
    before = generated(graph)
    c = ctx("seq")
    out = decide(graph, "refine", c=c)
    spent = generated(graph) - before
    draft, final = out.candidates
    assert (draft.model, final.model) == ("tiny_a", "tiny_b")
    assert draft.id == "s0.c0" and final.id == "s1.c0" and out.answer == final
    assert final.generated.startswith("Question: " + PROMPT + "\nDraft: " + draft.completion.strip())
    assert [(p.kind, p.branch) for p in out.path] == [
        ("sequence", "tiny_a"),
        ("node", "tiny_a"),
        ("sequence", "tiny_b"),
        ("node", "tiny_b"),
    ]
    assert out.usage.completion_tokens == draft.completion_tokens + final.completion_tokens == spent
    assert c.account.tokens == spent  # the key is charged for both steps


def test_best_of_over_a_sequence(graph):
    c = ctx("bos")
    before = generated(graph)
    out = decide(graph, "best_refine", c=c)
    assert out.policy == "best_of" and len(out.candidates) == 3
    assert out.answer.score == max(x.score for x in out.candidates)
    assert out.path[0].kind == "best_of" and out.path[0].branch in ("refine", "tiny_a")
    kinds = [p.kind for p in out.path]
    assert kinds.count("sequence") == 4 and kinds.count("node") == 5  # two sequence runs (2 steps) + one node
    assert {p.depth for p in out.path} == {0, 1, 2}
    assert c.account.tokens == generated(graph) - before == out.usage.completion_tokens
    seeds = {x.seed for x in out.candidates if x.id.startswith(("b0.", "b1."))}
    assert len(seeds) == 2  # the two runs of the sequence sampled with distinct seeds


# ---- fallback ----------------------------------------------------------------------------------------------


def test_fallback_moves_on_when_its_first_branch_is_killed(tiny_dir):
    g, engines = build_local_graph(config())
    try:
        first = decide(g, "failover")
        assert [(p.kind, p.branch, p.outcome) for p in first.path][:1] == [("fallback", "tiny_a", "served")]
        engines["tiny_a"].close()  # the node is gone
        c = ctx("fo")
        out = decide(g, "failover", c=c)
        assert [(p.kind, p.branch, p.outcome) for p in out.path[:2]] == [
            ("fallback", "tiny_a", "failed"),
            ("fallback", "cheap_first", "served"),
        ]
        assert out.path[0].why is not None and "tiny_a" in out.path[0].why
        assert path_text(out.path) == (
            "failover[fallback]:tiny_a!failed > failover[fallback]:cheap_first > cheap_first[cascade]"
        )
        assert out.path[2].kind == "cascade" and out.answer.model in ("tiny_a", "tiny_b")
        assert out.answer.model == "tiny_b"  # tiny_a is dead: its cascade's first stage served
        assert c.account.tokens == out.usage.completion_tokens
        assert metrics.counts[("failover", "fallback", "tiny_a", "failed")] >= 1
    finally:
        for e in engines.values():
            e.close()


# ---- guard -------------------------------------------------------------------------------------------------


def test_guard_that_refuses_the_output_still_charges_its_tokens(graph):
    c = ctx("refused")
    before = generated(graph)
    with pytest.raises(Refused) as err:
        decide(graph, "always_refuse", c=c)
    assert err.value.status == 422 and err.value.kind == "refused" and err.value.field == "output"
    assert "always_refuse" in err.value.message and "block.rude 0.0" in err.value.message
    assert c.account.tokens == generated(graph) - before > 0


def test_guard_on_the_prompt_routes_to_another_branch(graph):
    out = decide(graph, "prompt_guard")
    assert [(p.kind, p.branch, p.outcome) for p in out.path[:2]] == [
        ("guard", "prompt", "hit"),
        ("guard", "tiny_b", "served"),
    ]
    assert out.answer.model == "tiny_b" and out.trace.nodes_run == ["tiny_b"]  # `best` never ran


def test_guard_regenerates_until_the_output_passes(graph, tiny_dir):
    first = asyncio.run(_rude(graph, 7))
    second = asyncio.run(_rude(graph, 7 + 1000))
    assert first != second
    label = "rude" if first > second else "kind"  # the label on which attempt 1 scores higher
    lo, hi = sorted((first, second)) if label == "rude" else sorted((1 - first, 1 - second))
    threshold = round((lo + hi) / 2, 6)
    g = {
        "policy": "guard",
        "run": "tiny_a",
        "zero_shot": {"labels": RUDE},
        "block": {label: threshold},
        "on_hit": "regenerate",
        "retries": 2,
    }
    regen, engines = build_local_graph(config({"regen": g}))
    try:
        c = ctx("regen")
        out = decide(regen, "regen", c=c)
    finally:
        for e in engines.values():
            e.close()
    guards = [p for p in out.path if p.kind == "guard"]
    assert [p.outcome for p in guards] == ["hit", "passed"], out.path
    assert [x.id for x in out.candidates] == ["a0.c0", "a1.c0"] and out.answer.id == "a1.c0"
    assert [x.seed for x in out.candidates] == [7, 1007]
    assert c.account.tokens == out.usage.completion_tokens == sum(x.completion_tokens for x in out.candidates)


async def _rude(graph: Graph, seed: int) -> float:
    """P(rude) of tiny_a's 16 sampled tokens with `seed`, as the guard computes it."""
    params = graph.params_for("tiny_a", GenerationOverrides(do_sample=True, seed=seed, max_new_tokens=16))
    (rows,) = await graph.generators["tiny_a"].generate([PROMPT], params, f"probe-{seed}")
    (c,) = await labels.classify(graph, ctx(), ZeroShot(labels=RUDE), [rows[0].text])
    return c.labels["rude"]


# ---- nesting, deadline, streams ---------------------------------------------------------------------------


def test_nested_fallback_of_a_switch_names_every_level(graph):
    out = decide(graph, "nested", prompt=TOPICS["sums"])
    assert [(p.kind, p.depth) for p in out.path] == [("fallback", 0), ("switch", 1), ("best_of", 2)]
    assert path_text(out.path) == "nested[fallback]:router > router[switch]:best > best[best_of]"


def test_a_deadline_bounds_the_whole_sequence(graph):
    # 400 new tokens: the second step's prompt holds the first's answer, and both fit the tiny models' 1024
    params = GenerationOverrides(do_sample=True, seed=7, max_new_tokens=400)
    c = RequestContext.make(timeout_s=120, request_id="dl").asking(500)
    t0 = time.monotonic()
    out = asyncio.run(graph.decide(c, PROMPT, params, "refine"))
    took_ms = (time.monotonic() - t0) * 1000
    assert out.finish_reason == "time"
    assert took_ms < 500 * 1.5, took_ms  # within the deadline, give or take the machine's load
    assert all(x.completion_tokens < 400 for x in out.candidates)
    assert len(out.candidates) == 2  # both steps ran, each within its share


def test_sequence_streams_the_last_step_and_reports_earlier_ones(graph):
    async def collect():
        events = graph.stream(ctx("stream"), PROMPT, None, SAMPLED, score=True, graph="refine")
        return [ev async for ev in events]

    events = asyncio.run(collect())
    steps = [e for e in events if isinstance(e, StepEvent)]
    tokens = [e for e in events if isinstance(e, TokenEvent | FinalEvent)]
    decision = events[-1]
    assert isinstance(decision, DecisionEvent)
    assert [s.branch for s in steps] == ["tiny_a", "tiny_b"]
    assert tokens and {t.model for t in tokens} == {"tiny_b"}  # only the last step's text streams
    first_token = events.index(tokens[0])
    assert events.index(steps[0]) < first_token  # the draft was reported before the last step streamed
    assert "".join(t.text for t in tokens) == decision.result.answer.completion


def test_a_guard_on_output_holds_its_tokens_back(graph):
    async def collect():
        events = graph.stream(ctx("held"), PROMPT, None, SAMPLED, score=True, graph="safe_out")
        return [ev async for ev in events]

    events = asyncio.run(collect())
    assert isinstance(events[-1], DecisionEvent) and events[-1].result.answer.completion
    assert not [e for e in events if isinstance(e, TokenEvent | FinalEvent)]  # nothing unchecked reached the client
    assert [e.outcome for e in events if isinstance(e, StepEvent)] == ["passed"]


def test_greedy_request_on_a_nested_best_of_is_a_400_before_anything_runs(graph):
    before = generated(graph)
    with pytest.raises(InvalidRequest) as err:
        decide(graph, "nested", params=GenerationOverrides(do_sample=False))
    assert err.value.field == "params.do_sample"
    assert generated(graph) == before


def test_a_span_per_step_nested_as_the_graph(graph, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from graph.entry import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer(tracing.TRACER_NAME))
    decide(graph, "nested", prompt=TOPICS["sums"])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    nested, router, best = spans["graph nested"], spans["graph router"], spans["graph best"]
    assert router.parent is not None and router.parent.span_id == nested.context.span_id
    assert best.parent is not None and best.parent.span_id == router.context.span_id
    assert (nested.attributes or {})["graph.kind"] == "fallback" and (nested.attributes or {})[
        "graph.branch"
    ] == "router"
    assert (router.attributes or {})["graph.branch"] == "best" and (best.attributes or {})["graph.depth"] == 2
    node_spans = [s for s in exporter.get_finished_spans() if s.name.startswith("node tiny_")]
    assert node_spans and all(s.parent is not None and s.parent.span_id == best.context.span_id for s in node_spans)


# ---- the diagram the playground draws (graph/entry/policies/diagram.py) ------------------------------------------


def walk(tree: DiagramNode, cid: str, model: str) -> list[str]:
    """Candidate `cid` of `model` led through the diagram by its id's prefixes, as the playground's page does
    (each segment matches one branch's `scope`): the boxes it passes, down to the node that ran it."""
    *segments, own = cid.split(".")
    assert re.fullmatch(r"c\d+", own), cid
    box, names = tree, [tree.name]
    for seg in segments:
        kid = next((k for k in box.children if k.scope is not None and re.fullmatch(k.scope, seg)), None)
        assert kid is not None, f"{cid}: no branch of {box.name} ({box.kind}) has the scope of {seg!r}"
        box = kid
        names.append(kid.name)
    if box.kind == "node":
        assert box.name == model, (cid, box.name, model)
    else:  # a best_of or cascade over nodes: the candidate's node is one of its boxes
        assert model in [k.name for k in box.children], (cid, box.name, model)
        names.append(model)
    return names


@pytest.mark.parametrize(
    ("name", "prompt"),
    [("best_refine", PROMPT), ("nested", TOPICS["sums"]), ("prompt_guard", PROMPT), ("failover", PROMPT)],
)
def test_every_candidate_id_leads_through_the_diagram(graph, name, prompt):
    """The diagram's scopes are the prefixes steps.py really gives candidates: every candidate of a real run
    of a nested graph walks from the root to the node that generated it, along the path the answer names."""
    tree = diagram(graph.config.policies, name)
    out = decide(graph, name, prompt=prompt)
    walked = [walk(tree, c.id, c.model) for c in [out.answer, *out.candidates]]
    assert walked[0][-1] == out.answer.model
    taken = {p.graph for p in out.path} | {p.branch for p in out.path if p.branch}
    assert set(walked[0]) <= taken, (walked[0], path_text(out.path))


def test_diagram_draws_nested_graphs_nested():
    tree = diagram(config().policies, "best_refine")
    assert (tree.kind, tree.detail) == ("best_of", "every candidate scored")
    refine, tiny_a = tree.children
    assert (refine.name, refine.kind, refine.key, refine.scope, refine.note) == (
        "refine",
        "sequence",
        "nodes.refine",
        "b0|b1",
        "×2",
    )
    assert (tiny_a.name, tiny_a.kind, tiny_a.scope) == ("tiny_a", "node", "b2")
    assert [(s.name, s.key, s.scope) for s in refine.children] == [
        ("tiny_a", "steps[0].run", "s0"),
        ("tiny_b", "steps[1].run", "s1"),
    ]
    guard = diagram(config().policies, "prompt_guard")
    assert guard.detail == "checks prompt; on a hit: route"
    assert [(k.name, k.key, k.kind) for k in guard.children] == [
        ("best", "run", "best_of"),
        ("tiny_b", "route_to", "node"),
    ]
    assert diagram(config().policies, "tiny_a") == DiagramNode(name="tiny_a", kind="node")


# ---- how each kind streams (Policies.streaming), the start-up check, the faces as declared -----------------


def test_each_kind_declares_how_its_answer_streams():
    policies = config().policies
    modes = {name: policies.streaming(name) for name in GRAPHS}
    assert {n: m for n, (m, _, _) in modes.items()} == {
        "best": "decided",
        "cheap_first": "decided",
        "router": "decided",  # one of its cases is `best`
        "by_tier": "decided",
        "ab": "tokens",  # a split over nodes: one node runs, known before it starts
        "failover": "decided",
        "refine": "tokens",  # its last step is a node; the draft is a step event
        "best_refine": "decided",
        "always_refuse": "held",
        "prompt_guard": "decided",  # checks the prompt only; its branch is a best_of
        "nested": "decided",
        "safe_out": "held",
    }
    assert modes["router"][1] == "policies.graphs.best.policy"  # the key that holds it back
    assert modes["safe_out"][1] == "policies.graphs.safe_out.check"
    assert policies.streaming("tiny_a")[0] == "tokens"


def stream_config(stream_tokens: list[str], graphs=GRAPHS):
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["policies"] = {"graphs": graphs, "stream_tokens": stream_tokens}
    return parse_config(data, source="test")


@pytest.mark.parametrize(
    ("wanted", "words"),
    [
        (
            ["ab", "safe_out"],
            "policies.stream_tokens[1]: graph 'safe_out' cannot stream its answer token by token: "
            "policies.graphs.safe_out.check: a guard holds the answer back until it has checked the output",
        ),
        (
            ["nested"],
            "policies.stream_tokens[0]: graph 'nested' cannot stream its answer token by token: "
            "policies.graphs.nested.order: a fallback's branch may fail halfway and the next one serve",
        ),
        (["nope"], "policies.stream_tokens[0]: unknown graph 'nope'"),
    ],
)
def test_start_up_refuses_a_graph_that_cannot_stream_where_it_must(wanted, words):
    with pytest.raises(ConfigError) as err:
        stream_config(wanted)
    assert words in str(err.value), str(err.value)


def test_graphs_that_can_stream_tokens_pass_the_start_up_check():
    assert stream_config(["ab", "refine", "all"]).policies.stream_tokens == ["ab", "refine", "all"]


def openai_stream(graph: Graph, name: str) -> tuple[list[str], int, dict]:
    """The OpenAI chat stream of graph `name`: its content deltas, how many came before the decision, the last
    chunk with a finish_reason."""
    req = parse_request(
        ChatCompletionRequest,
        {
            "model": f"graph:{name}",
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "max_tokens": 16,
            "seed": 7,
            "temperature": 1.0,
        },
    )

    async def lines() -> list[str]:
        return [line async for line in await OpenAIFace(graph).chat(ctx(f"oa-{name}"), req)]

    texts: list[str] = []
    before = -1
    finished: dict = {}
    for line in asyncio.run(lines()):
        if line.startswith(": decision"):
            before = len(texts)
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[len("data: ") :])
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                texts.append(choice["delta"]["content"])
            if choice["finish_reason"] is not None:
                finished = choice
    return texts, before, finished


def test_openai_stream_sends_a_tokens_graphs_answer_as_it_is_generated(graph):
    texts, before, finished = openai_stream(graph, "refine")
    assert before == len(texts) > 1  # every token came before the decision, one delta at a time
    assert finished["finish_reason"] in ("stop", "length") and finished["path"].startswith("refine[sequence]")
    assert finished["model"] == "tiny_b"


@pytest.mark.parametrize("name", ["best", "safe_out"])
def test_openai_stream_sends_a_decided_or_held_answer_once_decided(graph, name):
    texts, before, finished = openai_stream(graph, name)
    assert before == 0 and texts  # nothing of the answer before the decision (held: before the guard passed)
    assert finished["finish_reason"] in ("stop", "length") and finished["path"].startswith(name)


def seed_stream(graph: Graph, name: str) -> tuple[list[str], dict[str, str]]:
    """GenerateStreamed of the seed's TextGenerator with `x-graph: name`, on a real gRPC server in this process
    (fragments at most 1 ms apart): the fragments and the trailing metadata."""
    import grpc

    from graph.config import GrpcConfig
    from graph.entry.faces.grpc_server import GrpcFaces
    from protos import text_generator_pb2 as tg
    from protos import text_generator_pb2_grpc as tg_grpc
    from tests.server import free_port

    async def call() -> tuple[list[str], dict[str, str]]:
        faces = GrpcFaces(graph, GrpcConfig(host="127.0.0.1", port=free_port()))
        assert await faces.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{faces.port}") as channel:
                request = tg.GenerateStreamedRequest(text=PROMPT, max_length=24, intermediate_result_interval_ms=1)
                rpc = tg_grpc.TextGeneratorStub(channel).GenerateStreamed(
                    request, metadata=[("x-graph", name), ("x-seed", "7")], timeout=120
                )
                fragments = [r.text_fragment async for r in rpc]
                return fragments, {k: str(v) for k, v in await rpc.trailing_metadata()}
        finally:
            await faces.stop(0)

    return asyncio.run(call())


def test_grpc_stream_sends_a_tokens_graphs_answer_as_it_is_generated(graph):
    fragments, trailers = seed_stream(graph, "refine")
    assert len(fragments) > 1 and fragments[0].startswith(PROMPT)  # fragments as the last step generates
    assert trailers["x-graph-path"].startswith("refine[sequence]:tiny_a")


def test_grpc_stream_sends_a_decided_answer_as_one_fragment(graph):
    fragments, trailers = seed_stream(graph, "best")
    assert len(fragments) == 1 and fragments[0].startswith(PROMPT) and len(fragments[0]) > len(PROMPT)
    assert trailers["x-graph-path"].startswith("best[best_of]")
