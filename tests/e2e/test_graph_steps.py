"""Named graphs' step kinds through a real `bentoml serve` of configs/default.yaml (SmolLM2, Gemma 3, MiniLM):
the switch `router` and the guard `polite` over HTTP, the openai SDK and gRPC, each answer naming its path."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import openai
import pytest

from protos import inference_graph_pb2 as ig
from protos import inference_graph_pb2_grpc as ig_grpc
from tests.grpc_client import grpc_config
from tests.server import Server

SMALL_TALK = "Hi! How are you today?"  # MiniLM sorts it into small_talk (0.97): the router sends it to smollm2
PARAMS = {"max_new_tokens": 16, "seed": 3}


@pytest.fixture(scope="module")
def default_config(tmp_path_factory) -> tuple[Path, int]:
    return grpc_config("configs/default.yaml", tmp_path_factory.mktemp("steps") / "default.yaml")


@pytest.fixture(scope="module")
def server(default_config):
    with Server(config=default_config[0], name="default-steps") as srv:
        yield srv


def test_http_switch_names_its_path_and_counts_it(server: Server) -> None:
    body = {"original_sentence": SMALL_TALK, "graph": "router", "params": PARAMS}
    r = httpx.post(server.url + "/generate_score", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["policy"] == "switch"
    switch, served = out["path"]
    assert (switch["kind"], switch["branch"]) == ("switch", "smollm2") and switch["why"].startswith("label small_talk")
    assert (served["graph"], served["kind"], served["depth"]) == ("smollm2", "node", 1)
    assert out["answer"]["model"] == "smollm2" and out["answer"]["completion"].strip()
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    assert 'graph_branch_total{branch="smollm2",graph="router",kind="switch",outcome="served"}' in metrics


def test_http_split_sticks_to_the_user(server: Server) -> None:
    from graph.config import load_config
    from graph.entry.policies.config import Split
    from graph.entry.policies.steps import pick

    canary = load_config("configs/default.yaml").policies.graphs["canary"]
    assert isinstance(canary, Split)
    for user in ("user-1", "user-19"):  # pick: smollm2 and gemma3 (90/10 weights)
        body = {"original_sentence": "Say hello.", "graph": "canary", "user": user, "params": {"max_new_tokens": 8}}
        r = httpx.post(server.url + "/generate_score", json=body, timeout=300)
        assert r.status_code == 200, r.text
        step = r.json()["path"][0]
        assert step["kind"] == "split" and step["branch"] == pick(canary, user)[0] and "sticky on user" in step["why"]
    bad = httpx.post(server.url + "/generate_score", json={"graph": "canary", "metadata": {"k": 1}}, timeout=60)
    assert bad.status_code == 400 and bad.json()["field"].startswith("metadata"), bad.text


def test_openai_sdk_guard_answer_carries_its_path(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    out = client.chat.completions.create(
        model="graph:polite",
        messages=[{"role": "user", "content": "Give me one tip for a rainy day."}],
        max_tokens=16,
        seed=3,
    )
    extra = out.choices[0].model_extra or {}
    assert extra["path"].startswith("polite[guard]:best_of_3 > best_of_3[best_of]"), extra
    assert out.choices[0].message.content
    usage = out.usage.model_extra if out.usage is not None else None
    assert usage is not None and usage["paths"] == [extra["path"]] and usage["candidates"] >= 3


def test_grpc_answer_names_its_path_in_trailing_metadata(server: Server, default_config) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{default_config[1]}") as channel:
        stub = ig_grpc.InferenceGraphStub(channel)
        request = ig.GenerateScoreRequest(
            original_sentence=SMALL_TALK, graph="router", params=ig.GenerationParams(max_new_tokens=16, seed=3)
        )
        reply, call = stub.GenerateScore.with_call(request, timeout=300)
    trailers = dict(call.trailing_metadata() or ())
    assert trailers["x-graph-path"] == "router[switch]:smollm2 > smollm2[node]", trailers
    assert trailers["x-request-id"]
    assert reply.graph == "router" and reply.completions[0].model == "smollm2"
