"""The inference graph in-process on the tiny models: composition, batching, errors, streaming."""

from __future__ import annotations

import asyncio
import time

import pytest

from graph.config import load_config
from graph.entry.compose import Timeline
from graph.entry.context import RequestContext
from graph.entry.local import LocalGenerator, build_local_graph
from graph.errors import InvalidRequest, NodeFailure, NodeTimeout


def run(coro):
    return asyncio.run(coro)


def rc(request_id: str, timeout_s: float = 120.0) -> RequestContext:
    """A request's context as a face's edge makes it."""
    return RequestContext.make(timeout_s=timeout_s, request_id=request_id)


@pytest.fixture(scope="module")
def built(tiny_dir):
    graph, engines = build_local_graph(load_config("configs/tiny.yaml"))
    yield graph, engines
    for e in engines.values():
        e.close()


@pytest.fixture
def graph(built):
    return built[0]


@pytest.fixture
def engines(built):
    return built[1]


class CountingClassifier:
    """The real classifier client, counting how often it is called and with how many texts."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    async def classify(self, texts):
        self.calls.append(len(texts))
        return await self.inner.classify(texts)


class FailingGenerator(LocalGenerator):
    """A real node that breaks after `after_s` (fault injection)."""

    def __init__(self, engine, after_s=0.05, exc: Exception | None = None):
        super().__init__(engine)
        self.after_s, self.exc = after_s, exc or RuntimeError("CUDA fell off the bus")

    async def generate(self, prompts, params, request_id, scope="", reserve_s=0.0):
        await asyncio.sleep(self.after_s)
        raise self.exc


class HungGenerator(LocalGenerator):
    async def generate(self, prompts, params, request_id, scope="", reserve_s=0.0):
        await asyncio.Event().wait()


def with_nodes(graph, **replace):
    from graph.entry.compose import Graph

    return Graph(graph.config, {**graph.generators, **replace}, graph.classifier)


def test_generate_score_all_nodes_one_classifier_call(graph):
    counting = CountingClassifier(graph.classifier)
    g = type(graph)(graph.config, graph.generators, counting)
    timeline = Timeline()
    out = run(g.generate_score(rc("rid-1"), "I have an idea!", None, timeline=timeline))
    assert {c.model for c in out} == {"tiny_a", "tiny_b"}
    for c in out:
        assert c.generated == "I have an idea!" + c.completion
        assert 0 <= c.score <= 1 and c.score == pytest.approx(c.labels["positive"])
        assert c.completion_tokens <= 8  # tiny.yaml's default max_new_tokens
    assert counting.calls == [len(out)]  # every completion scored in one batched call
    assert timeline.overlap_s("tiny_a", "tiny_b") > 0


def test_num_return_sequences_all_scored_together(graph):
    counting = CountingClassifier(graph.classifier)
    g = type(graph)(graph.config, graph.generators, counting)
    from graph.params import GenerationOverrides

    params = GenerationOverrides(num_return_sequences=3, do_sample=True, seed=1, max_new_tokens=4)
    out = run(g.generate_score(rc("rid-2"), "The cat", params))
    assert sorted((c.model, c.index) for c in out) == [(m, i) for m in ("tiny_a", "tiny_b") for i in range(3)]
    assert counting.calls == [6]


def test_bad_input_rejected_before_any_work(graph, engines):
    from graph.params import GenerationOverrides

    before = {n: e.stats()["requests_total"] for n, e in engines.items()}
    with pytest.raises(InvalidRequest) as err:
        run(graph.generate(rc("r"), ["hi"], "gpt5", None))
    assert err.value.field == "model" and "tiny_a" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        run(graph.generate_score(rc("r"), "x" * 4001, None))
    assert err.value.field == "original_sentence"
    with pytest.raises(InvalidRequest) as err:
        run(graph.generate_score(rc("r"), "hi", GenerationOverrides(max_new_tokens=901)))
    assert err.value.field == "params.max_new_tokens" and "900" in err.value.message
    assert {n: e.stats()["requests_total"] for n, e in engines.items()} == before


def test_failing_node_is_named_and_siblings_are_cancelled(graph, engines):
    g = with_nodes(graph, tiny_b=FailingGenerator(engines["tiny_b"]))
    from graph.params import GenerationOverrides

    long = GenerationOverrides(max_new_tokens=900)
    with pytest.raises(NodeFailure) as err:
        run(g.generate_score(rc("rid-fail"), "Hello world, this is", long))
    assert err.value.node == "tiny_b" and err.value.status == 500
    assert "CUDA fell off the bus" in err.value.message
    time.sleep(0.3)
    assert engines["tiny_a"].stats()["active_rows"] == 0  # tiny_a's long request was stopped


def test_hung_node_times_out(graph, engines):
    cfg = graph.config.model_copy(update={"graph_timeout_s": 1})
    from graph.entry.compose import Graph

    g = Graph(cfg, {**graph.generators, "tiny_b": HungGenerator(engines["tiny_b"])}, graph.classifier)
    t0 = time.time()
    with pytest.raises(NodeTimeout) as err:
        run(g.generate_score(rc("rid-hang", cfg.graph_timeout_s), "hi", None))
    assert err.value.node == "tiny_b" and err.value.status == 500 and err.value.kind == "node_timeout"
    assert time.time() - t0 < 5


def test_stream_interleaves_models_and_scores_each_completion(graph):
    async def collect():
        return [e async for e in graph.stream(rc("rid-s"), "The dog", None, None, score=True)]

    events = run(collect())
    finals = [e for e in events if e.type == "final"]
    scores = [e for e in events if e.type == "score"]
    assert {e.model for e in finals} == {e.model for e in scores} == {"tiny_a", "tiny_b"}
    # The same request without streaming (greedy, so the same text), and its scores.
    plain = run(graph.generate(rc("rid-plain"), ["The dog"], None, None))
    expected_scores = [run(graph.classify(["The dog" + plain[n][0][0].text]))[0] for n in ("tiny_a", "tiny_b")]
    for node, expected_score in zip(("tiny_a", "tiny_b"), expected_scores):
        text = "".join(e.text for e in events if e.model == node and e.type in ("token", "final"))
        final = next(e for e in finals if e.model == node)
        assert text == plain[node][0][0].text and text
        assert final.usage.completion_tokens == plain[node][0][0].completion_tokens >= 1
        score = next(s for s in scores if s.model == node)
        assert score.score == pytest.approx(expected_score.score, abs=1e-5)
        assert events.index(score) > events.index(final)


def test_leaving_a_stream_early_cancels_the_nodes(graph, engines):
    from graph.params import GenerationOverrides

    async def leave_early():
        events = graph.stream(rc("rid-x"), "Hello world, this is", "tiny_a", GenerationOverrides(max_new_tokens=900))
        n = 0
        async for _ in events:
            n += 1
            if n == 5:
                break
        await events.aclose()
        await asyncio.sleep(0.3)  # the cancel runs as its own task
        return engines["tiny_a"].stats()

    stats = run(leave_early())
    assert stats["active_rows"] == 0 and stats["queued_requests"] == 0
