"""The gRPC faces through a real `bentoml serve` of configs/tiny.yaml (gRPC on at a free port): the seed's
TextGenerator with stubs generated from its proto, the graph's own service, health, reflection, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import inference_graph_pb2 as ig
from protos import inference_graph_pb2_grpc as ig_grpc
from protos import text_generator_pb2 as tg
from protos import text_generator_pb2_grpc as tg_grpc
from tests.grpc_client import grpc_config, seed_client_script
from tests.server import ROOT, Server

LONG = "Hello world, this is"  # tiny_a runs it greedily for 1000 tokens without an end-of-sequence
SERVING = health_pb2.HealthCheckResponse.SERVING
NODES_LOADED = ("node tiny_a loaded", "node tiny_b loaded", "classifier loaded")


class Booted:
    """The server, its gRPC channel, and what the health service said while the nodes were loading."""

    def __init__(self, server: Server, port: int) -> None:
        self.server, self.port = server, port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.seen: list[int] = []  # health statuses in the order they were seen
        self.loaded_when_serving: list[str] = []  # node "loaded" log lines present when SERVING came

    def watch_boot(self, timeout_s: float = 240) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            except grpc.RpcError:  # not listening yet
                time.sleep(0.05)
                continue
            if not self.seen or self.seen[-1] != status:
                self.seen.append(status)
            if status == SERVING:
                log = self.server.log()
                self.loaded_when_serving = [line for line in NODES_LOADED if line in log]
                return
            time.sleep(0.05)
        raise TimeoutError(f"gRPC health never said SERVING:\n{self.server.log()[-3000:]}")


@pytest.fixture(scope="module")
def booted(tiny_dir, tmp_path_factory) -> Iterator[Booted]:
    config, port = grpc_config(
        "configs/tiny.yaml",
        tmp_path_factory.mktemp("grpc") / "tiny_grpc.yaml",
        default_node="tiny_a",
        stream_interval_ms=1000,
    )
    server = Server(config=config, name="grpc")
    starting = threading.Thread(target=server.start, daemon=True)
    starting.start()  # the health service is watched while the workers start and load their models
    try:
        boot = Booted(server, port)
        boot.watch_boot()
        starting.join(timeout=240)
        assert server.proc is not None and server.proc.poll() is None
        yield boot
    finally:
        starting.join(timeout=240)
        server.stop()


@pytest.fixture
def seed_stub(booted: Booted) -> tg_grpc.TextGeneratorStub:
    return tg_grpc.TextGeneratorStub(booted.channel)


@pytest.fixture
def graph_stub(booted: Booted) -> ig_grpc.InferenceGraphStub:
    return ig_grpc.InferenceGraphStub(booted.channel)


def node_stats(server: Server) -> dict[str, dict[str, float]]:
    r = httpx.post(server.url + "/node_stats", json={}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def http_completion(server: Server, prompt: str, max_new_tokens: int, model: str = "tiny_a") -> dict[str, Any]:
    body = {"prompt": prompt, "model": model, "params": {"max_new_tokens": max_new_tokens}}
    r = httpx.post(server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()[0]["results"][0]


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        out = call(*args, **kwargs)
        if hasattr(out, "__iter__") and not hasattr(out, "ListFields"):
            list(out)  # a stream: the error comes when it is read
    return info.value


def trailers(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


# --- health and reflection --------------------------------------------------------------------------


def test_health_serving_only_after_nodes_load(booted: Booted) -> None:
    log = booted.server.log()
    listening = log.find("gRPC faces on")
    assert listening >= 0, log[-3000:]
    if all(0 <= log.find(line) < listening for line in NODES_LOADED):
        # Every node had loaded before the gRPC face was listening (the tiny models can beat the entry's
        # start): its first probe answers at once, so a client may never see NOT_SERVING.
        assert booted.seen[0] in (health_pb2.HealthCheckResponse.NOT_SERVING, SERVING), booted.seen
    else:
        assert booted.seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING, booted.seen
    assert booted.seen[-1] == SERVING
    assert booted.loaded_when_serving == list(NODES_LOADED), "SERVING before every node had loaded"
    stub = health_pb2_grpc.HealthStub(booted.channel)
    for service in ("TextGenerator", "inference_graph.v1.InferenceGraph"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == SERVING
    err = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(booted: Booted) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(booted.channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for s in answer.list_services_response.service}
    assert {"TextGenerator", "inference_graph.v1.InferenceGraph", "grpc.health.v1.Health"} <= names


# --- the seed's TextGenerator ---------------------------------------------------------------------------


def test_generate_is_prompt_plus_text_and_max_length_counts_the_prompt(booted: Booted, seed_stub) -> None:
    ref = http_completion(booted.server, LONG, 5)  # greedy (tiny's default): the same text every time
    total = ref["prompt_tokens"] + 5
    out = seed_stub.Generate(tg.GenerateRequest(text=LONG, max_length=total), timeout=60)
    assert out.text == LONG + ref["text"]
    default = seed_stub.Generate(tg.GenerateRequest(text=LONG), timeout=60)  # 0: the node default (8 new tokens)
    assert default.text == LONG + http_completion(booted.server, LONG, 8)["text"]
    other = seed_stub.Generate(
        tg.GenerateRequest(text=LONG, max_length=total), metadata=[("x-model", "tiny_b")], timeout=60
    )
    assert other.text.startswith(LONG) and other.text != out.text  # x-model picks the other generator


def test_streamed_fragments_are_paced_and_add_up_to_generate(booted: Booted, seed_stub) -> None:
    total = http_completion(booted.server, LONG, 1)["prompt_tokens"] + 600
    seed = [("x-seed", "7")]
    text = seed_stub.Generate(tg.GenerateRequest(text=LONG, max_length=total), metadata=seed, timeout=120).text
    stamps, fragments = [], []
    request = tg.GenerateStreamedRequest(text=LONG, max_length=total, intermediate_result_interval_ms=300)
    for message in seed_stub.GenerateStreamed(request, metadata=seed, timeout=120):
        stamps.append(time.monotonic())
        fragments.append(message.text_fragment)
    assert "".join(fragments) == text
    assert fragments[0].startswith(LONG)
    assert len(fragments) >= 3, "generation too fast to show spacing"
    gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:-1])]  # the last fragment may come at once
    assert min(gaps) >= 0.27, gaps  # ~300 ms apart (network jitter allowed)
    assert len(fragments) < 600 / 5  # coalesced, not one message per token


def test_seed_style_client_from_the_seeds_protoc_command(booted: Booted, tmp_path) -> None:
    """Stubs generated the way the seed's README says, imported as its clients import them."""
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "protos/text_generator.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gen.returncode == 0, gen.stderr
    run = subprocess.run(
        [sys.executable, "-c", seed_client_script(booted.port, "Once upon a time")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    unary, streamed = [eval(line) for line in run.stdout.splitlines()]
    assert unary.startswith("Once upon a time") and len(unary) > len("Once upon a time")
    assert streamed == unary  # greedy tiny_a: the stream adds up to the same text


@pytest.mark.parametrize(
    "request_, metadata, field",
    [
        (tg.GenerateRequest(text=""), [], "text"),
        (tg.GenerateRequest(text="   "), [], "text"),
        (tg.GenerateRequest(text="hi", max_length=-1), [], "max_length"),
        (tg.GenerateRequest(text="hi", max_length=1), [], "max_length"),  # not even the prompt fits
        (tg.GenerateRequest(text="hi", max_length=5000), [], "max_length"),  # above the node's limit
        (tg.GenerateRequest(text="hi"), [("x-model", "nope")], "x-model"),
        (tg.GenerateRequest(text="hi"), [("x-seed", "abc")], "x-seed"),
        (
            tg.GenerateStreamedRequest(text="hi", intermediate_result_interval_ms=-5),
            [],
            "intermediate_result_interval_ms",
        ),
        (tg.GenerateStreamedRequest(text=""), [], "text"),
    ],
)
def test_bad_seed_input_is_invalid_argument_naming_the_field(
    booted: Booted, seed_stub, request_, metadata, field
) -> None:
    before = node_stats(booted.server)
    call = seed_stub.Generate if isinstance(request_, tg.GenerateRequest) else seed_stub.GenerateStreamed
    err = rpc_error(call, request_, metadata=metadata, timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith(f"{field}: "), err.details()
    assert trailers(err)["x-error-field"] == field
    after = node_stats(booted.server)
    assert [after[n]["requests_total"] for n in after] == [before[n]["requests_total"] for n in before], (
        "a node got work from a rejected request"
    )


def test_cancelled_stream_and_deadline_stop_the_node(booted: Booted, seed_stub) -> None:
    def tokens() -> float:
        return node_stats(booted.server)["tiny_a"]["generated_tokens_total"]

    total = http_completion(booted.server, LONG, 1)["prompt_tokens"] + 900
    before = tokens()
    stream = seed_stub.GenerateStreamed(
        tg.GenerateStreamedRequest(text=LONG, max_length=total, intermediate_result_interval_ms=100), timeout=120
    )
    next(stream), next(stream)
    stream.cancel()
    time.sleep(2.0)
    stopped_at = tokens()
    time.sleep(1.5)
    assert tokens() == stopped_at, "node still generating for a cancelled stream"
    assert stopped_at - before < 900, "the node ran the request to the end"

    err = rpc_error(seed_stub.Generate, tg.GenerateRequest(text=LONG, max_length=total), timeout=0.5)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(2.0)
    stopped_at = tokens()
    time.sleep(1.5)
    assert tokens() == stopped_at, "node still generating after the deadline"


def test_full_queue_is_resource_exhausted_with_retry_after(booted: Booted) -> None:
    # tiny_a: max_batch_size 8 + max_queue 16; 40 long requests at once overflow it
    async def fire() -> list[Any]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{booted.port}") as channel:
            stub = tg_grpc.TextGeneratorStub(channel)
            request = tg.GenerateRequest(text=LONG, max_length=300)
            calls = [stub.Generate(request, timeout=120) for _ in range(40)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(fire())
    errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert all(isinstance(o, tg.GenerateResponse) or isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    assert errors and len(errors) < 40, [type(o).__name__ for o in outcomes]
    for err in errors:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert int(dict(err.trailing_metadata())["retry-after"]) >= 1


# --- the graph's own service ----------------------------------------------------------------------------


def test_graph_service_calls(booted: Booted, graph_stub) -> None:
    out = graph_stub.GenerateScore(ig.GenerateScoreRequest(params=ig.GenerationParams(max_new_tokens=4)), timeout=60)
    assert {c.model for c in out.completions} == {"tiny_a", "tiny_b"}
    for c in out.completions:
        assert c.generated == "I have an idea!" + c.completion  # the default sentence
        assert 0.0 <= c.score <= 1.0 and set(c.labels) == {"positive", "negative"}
        assert 1 <= c.completion_tokens <= 4 and c.finish_reason in {"stop", "length"}

    params = ig.GenerationParams(max_new_tokens=3, logprobs=True, top_logprobs=2)
    gen = graph_stub.Generate(ig.GenerateRequest(prompts=["a", "b"], model="tiny_a", params=params), timeout=60)
    assert [(i.model, i.prompt) for i in gen.items] == [("tiny_a", "a"), ("tiny_a", "b")]
    result = gen.items[0].results[0]
    assert result.text == http_completion(booted.server, "a", 3)["text"]
    assert len(result.logprobs) == result.completion_tokens and len(result.logprobs[0].top_logprobs) == 2

    cls = graph_stub.Classify(ig.ClassifyRequest(texts=["good happy", "bad sad"]), timeout=60)
    assert len(cls.results) == 2 and all(abs(sum(r.labels.values()) - 1) < 1e-4 for r in cls.results)


def test_graph_stream_has_token_final_and_score_events(booted: Booted, graph_stub) -> None:
    request = ig.StreamRequest(prompt="Once", params=ig.GenerationParams(max_new_tokens=6))
    events = list(graph_stub.GenerateScoreStream(request, timeout=60))
    kinds = {(e.WhichOneof("event"), getattr(e, e.WhichOneof("event")).model) for e in events}
    assert kinds >= {(k, m) for k in ("final", "score") for m in ("tiny_a", "tiny_b")}
    for model in ("tiny_a", "tiny_b"):
        mine = [e for e in events if getattr(e, e.WhichOneof("event")).model == model]
        kinds = [e.WhichOneof("event") for e in mine]
        assert kinds[-1] == "score" and kinds[-2] == "final" and set(kinds[:-2]) <= {"token"}, kinds
        text = "".join(e.token.text for e in mine[:-2]) + mine[-2].final.text
        assert mine[-2].final.usage.completion_tokens == 6 and mine[-2].final.finish_reason == "length"
        assert text == http_completion(booted.server, "Once", 6, model)["text"]  # greedy: the same text
        assert 0.0 <= mine[-1].score.score <= 1.0


@pytest.mark.parametrize(
    "call, request_, field",
    [
        ("Generate", ig.GenerateRequest(prompt="hi", params=ig.GenerationParams(temperature=-1)), "params.temperature"),
        (
            "Generate",
            ig.GenerateRequest(prompt="hi", params=ig.GenerationParams(max_new_tokens=901)),
            "params.max_new_tokens",
        ),
        ("Generate", ig.GenerateRequest(prompt="hi", model="nope"), "model"),
        ("Generate", ig.GenerateRequest(), "prompt"),
        ("GenerateScore", ig.GenerateScoreRequest(original_sentence=""), "original_sentence"),
        ("GenerateScoreStream", ig.StreamRequest(params=ig.GenerationParams(top_p=2.0)), "params.top_p"),
        ("Classify", ig.ClassifyRequest(), "texts"),
    ],
)
def test_bad_graph_input_is_invalid_argument(booted: Booted, graph_stub, call, request_, field) -> None:
    before = node_stats(booted.server)
    err = rpc_error(getattr(graph_stub, call), request_, timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert trailers(err)["x-error-field"] == field and field in err.details()
    after = node_stats(booted.server)
    assert [after[n]["requests_total"] for n in after] == [before[n]["requests_total"] for n in before]


# --- named graphs and structured output -------------------------------------------------------------------


def test_seed_text_generator_answers_with_a_named_graph(booted: Booted, seed_stub) -> None:
    """`x-graph` metadata names a graph of the config, as `x-model` names a node."""
    meta = [("x-graph", "best"), ("x-seed", "3")]
    out = seed_stub.Generate(tg.GenerateRequest(text="The cat", max_length=8), metadata=meta, timeout=120).text
    assert out.startswith("The cat") and len(out) > len("The cat")
    request = tg.GenerateStreamedRequest(text="The cat", max_length=8)
    (fragment,) = [r.text_fragment for r in seed_stub.GenerateStreamed(request, metadata=meta, timeout=120)]
    assert fragment == out  # seeded: the same decision, sent once decided
    err = rpc_error(seed_stub.Generate, tg.GenerateRequest(text="hi"), metadata=[("x-graph", "nope")], timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailers(err)["x-error-field"] == "x-graph"


def test_graph_service_generate_score_on_a_named_graph(booted: Booted, graph_stub) -> None:
    params = ig.GenerationParams(max_new_tokens=4, seed=5)
    by_field = graph_stub.GenerateScore(ig.GenerateScoreRequest(params=params, graph="cheap_first"), timeout=120)
    assert by_field.graph == "cheap_first" and by_field.completions[0].model == "tiny_b"  # the cheap node first
    by_meta = graph_stub.GenerateScore(
        ig.GenerateScoreRequest(params=params), metadata=[("x-graph", "best")], timeout=120
    )
    assert by_meta.graph == "best" and len(by_meta.completions) == 3 and by_meta.winner.startswith("c")
    answer = by_meta.completions[0]
    assert answer.score == max(c.score for c in by_meta.completions)
    assert by_meta.completion_tokens_total == sum(c.completion_tokens for c in by_meta.completions)


def test_graph_service_response_format(booted: Booted, graph_stub) -> None:
    import json

    from google.protobuf import struct_pb2

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = struct_pb2.Struct()
    fmt.update({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    params = ig.GenerationParams(max_new_tokens=40, response_format=fmt)
    gen = graph_stub.Generate(ig.GenerateRequest(prompt="hi", model="tiny_a", params=params), timeout=60)
    assert isinstance(json.loads(gen.items[0].results[0].text)["ok"], bool)
    bad = struct_pb2.Struct()
    bad.update({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nosuch"}}})
    params = ig.GenerationParams(response_format=bad)
    err = rpc_error(graph_stub.Generate, ig.GenerateRequest(prompt="hi", params=params), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err)["x-error-field"] == "params.response_format"
