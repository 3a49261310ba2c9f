"""End-to-end through a real `bentoml serve` of configs/tiny.yaml: every endpoint, bad requests too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time

import httpx
import pytest

from tests.server import Server, assert_dropped_stream_stops, sse_events


@pytest.fixture(scope="module")
def server(tiny_server: Server) -> Server:
    return tiny_server  # tests/conftest.py: one configs/tiny.yaml server for the session


def post(server: Server, path: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


def test_generate_score_contract(server: Server) -> None:
    r = post(server, "/generate_score", {"original_sentence": "I have an idea!"})
    assert r.status_code == 200, r.text
    items = r.json()
    assert {i["model"] for i in items} == {"tiny_a", "tiny_b"}
    for item in items:
        assert item["generated"] == "I have an idea!" + item["completion"]
        assert 0.0 <= item["score"] <= 1.0
        assert set(item["labels"]) == {"positive", "negative"}
        assert abs(sum(item["labels"].values()) - 1.0) < 1e-4
        assert item["label"] in item["labels"]
        assert item["score"] == pytest.approx(item["labels"]["positive"])
        assert item["prompt_tokens"] > 0 and 1 <= item["completion_tokens"] <= 8
        assert item["finish_reason"] in {"stop", "length"}
    assert r.headers.get("x-request-id")


def test_default_sentence_when_omitted(server: Server) -> None:
    r = post(server, "/generate_score", {})
    assert r.status_code == 200, r.text
    assert all(i["generated"].startswith("I have an idea!") for i in r.json())


def test_generators_overlap_in_time(server: Server) -> None:
    r = post(
        server, "/generate_score", {"original_sentence": "Overlap?", "params": {"max_new_tokens": 64}}, timeout=120
    )
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    line = next(ln for ln in server.log().splitlines() if f"request_id={rid} generate_score spans=" in ln)
    spans, _ = json.JSONDecoder().raw_decode(line.split("spans=", 1)[1])
    (a0, a1), (b0, b1) = spans["tiny_a"], spans["tiny_b"]
    assert min(a1, b1) - max(a0, b0) > 0, spans


def test_unknown_field_is_named(server: Server) -> None:
    r = post(server, "/generate_score", {"original_sentence": "hi", "bogus": 1})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "validation" and body["field"] == "bogus"
    assert body["message"] == "bogus: Extra inputs are not permitted"
    r = post(server, "/classify", {"texts": "not a list"})
    assert r.status_code == 400 and r.json()["message"] == "texts: Input should be a valid array"


def test_unknown_param_is_named(server: Server) -> None:
    r = post(server, "/generate_score", {"original_sentence": "hi", "params": {"temprature": 1}})
    assert r.status_code == 400 and "temprature" in r.text


@pytest.mark.parametrize(
    "params, field",
    [({"temperature": -1}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"max_new_tokens": 901}, "max_new_tokens")],
)
def test_invalid_params(server: Server, params: dict, field: str) -> None:
    r = post(server, "/generate", {"prompt": "hi", "params": params})
    assert r.status_code == 400, r.text
    assert field in r.text


def test_empty_and_oversized_prompts(server: Server) -> None:
    for body in ({"original_sentence": ""}, {"original_sentence": "   "}):
        r = post(server, "/generate_score", body)
        assert r.status_code == 400 and "original_sentence" in r.text
    r = post(server, "/generate_score", {"original_sentence": "x" * 5000})
    assert r.status_code == 400 and "original_sentence" in r.text and "4000" in r.text


def test_unknown_model_lists_valid_ones(server: Server) -> None:
    r = post(server, "/generate", {"prompt": "hi", "model": "gpt5"})
    assert r.status_code == 400
    body = r.json()
    assert body["field"] == "model" and "tiny_a" in body["message"] and "tiny_b" in body["message"]


def test_generate_one_model_and_batch(server: Server) -> None:
    r = post(server, "/generate", {"prompt": "The cat", "model": "tiny_a"})
    assert r.status_code == 200, r.text
    (item,) = r.json()
    assert item["model"] == "tiny_a" and len(item["results"]) == 1
    r = post(server, "/generate", {"prompts": ["The cat", "Hello world, this is"], "params": {"max_new_tokens": 3}})
    assert r.status_code == 200, r.text
    items = r.json()
    assert len(items) == 4
    assert all(res["completion_tokens"] <= 3 for i in items for res in i["results"])
    assert post(server, "/generate", {"prompt": "a", "prompts": ["b"]}).status_code == 400


def test_classify(server: Server) -> None:
    r = post(server, "/classify", {"texts": ["good happy", "bad sad", "the cat"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 3 and all(0 <= c["score"] <= 1 and c["label"] in c["labels"] for c in out)
    assert post(server, "/classify", {"texts": []}).status_code == 400


def test_stream_matches_non_streamed(server: Server) -> None:
    params = {"max_new_tokens": 12, "do_sample": True, "seed": 7, "temperature": 1.0}
    full = post(server, "/generate", {"prompt": "Once upon", "model": "tiny_a", "params": params}).json()
    with httpx.stream(
        "POST",
        server.url + "/generate_stream",
        json={"prompt": "Once upon", "model": "tiny_a", "params": params},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1][1] == "[DONE]"
    data = [json.loads(d) for _, d in events[:-1]]
    text = "".join(e["text"] for e in data if e["type"] in ("token", "final"))
    assert text == full[0]["results"][0]["text"]
    final = [e for e in data if e["type"] == "final"]
    assert len(final) == 1 and final[0]["finish_reason"] in ("stop", "length")
    assert final[0]["usage"]["completion_tokens"] == full[0]["results"][0]["completion_tokens"]


def test_score_stream_interleaves_and_scores(server: Server) -> None:
    with httpx.stream("POST", server.url + "/generate_score_stream", json={"prompt": "The dog"}, timeout=60) as r:
        assert r.status_code == 200
        data = [json.loads(d) for _, d in sse_events(r)[:-1]]
    assert {e["model"] for e in data if e["type"] == "final"} == {"tiny_a", "tiny_b"}
    scores = [e for e in data if e["type"] == "score"]
    assert {s["model"] for s in scores} == {"tiny_a", "tiny_b"}
    for s in scores:  # a completion's score comes after its final event
        final_at = next(i for i, e in enumerate(data) if e["type"] == "final" and e["model"] == s["model"])
        assert data.index(s) > final_at and 0 <= s["score"] <= 1


def test_stream_bad_input_is_4xx_not_broken_stream(server: Server) -> None:
    r = post(server, "/generate_stream", {"prompt": "hi", "model": "nope"})
    assert r.status_code == 400 and "nope" in r.text
    r = post(server, "/generate_stream", {"prompt": "hi", "params": {"top_p": 2}})
    assert r.status_code == 400 and "top_p" in r.text


def test_health_and_docs(server: Server) -> None:
    assert httpx.get(server.url + "/readyz").status_code == 200
    spec = httpx.get(server.url + "/docs.json").json()
    for path in ("/generate_score", "/generate", "/classify", "/generate_stream", "/generate_score_stream"):
        assert path in spec["paths"]
    rid = f"health{time.time_ns()}"  # this request's own id, so earlier tests' lines cannot match
    r = httpx.post(
        server.url + "/generate_score", json={"original_sentence": "hi"}, headers={"x-request-id": rid}, timeout=60
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    deadline = time.time() + 5
    while not re.search(rf"request_id={rid} generate_score spans=", server.log()) and time.time() < deadline:
        time.sleep(0.2)
    assert re.search(rf"request_id={rid} generate_score spans=", server.log())
    assert re.search(rf"request_id={rid} node=tiny_a prompts=1", server.log())


LONG = "Hello world, this is"  # the tiny llama (tiny_a) runs it greedily for 1000 tokens without an end-of-sequence


def test_stream_interval_spaces_events(server: Server) -> None:
    body = {
        "prompt": LONG,
        "model": "tiny_a",
        "intermediate_result_interval_ms": 500,
        "params": {"max_new_tokens": 900},
    }
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=120) as r:
        assert r.status_code == 200
        events = sse_events(r)
    data = [(t, json.loads(d)) for t, d in events[:-1]]
    final = data[-1][1]
    assert final["type"] == "final" and final["usage"]["completion_tokens"] == 900
    stamps = [t for t, e in data if e["type"] == "token"]
    assert len(stamps) >= 2, "generation too fast to show spacing"
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.45, gaps  # ~500 ms apart (network jitter allowed), the final one excepted
    assert len(data) < 900 / 10  # coalesced, not one event per token


def test_dropped_stream_stops_generation(server: Server) -> None:
    body = {"prompt": LONG, "model": "tiny_a", "params": {"max_new_tokens": 900}}
    assert_dropped_stream_stops(server, "tiny_a", "/generate_stream", body, tokens=900)


def test_full_queue_answers_429_with_retry_after(server: Server) -> None:
    # tiny_a: max_batch_size 8 + max_queue 16; 40 long requests at once overflow it
    body = {"prompt": LONG, "model": "tiny_a", "params": {"max_new_tokens": 300}}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[client.post(server.url + "/generate", json=body) for _ in range(40)])

    responses = asyncio.run(fire())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 429}, codes
    rejected = [r for r in responses if r.status_code == 429]
    assert rejected and len(rejected) < 40, codes
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
        assert "overloaded" in r.json()["message"]


def test_many_concurrent_requests_all_succeed(server: Server) -> None:
    # More than 100 calls per dependency while 20 are in flight (the tiny nodes hold 8 + 16): BentoML's client
    # used to close its session under them every 100 requests (services.common.keep_sessions_open).
    body = {"prompt": "The cat", "params": {"max_new_tokens": 2}}

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            sem = asyncio.Semaphore(20)

            async def one() -> httpx.Response:
                async with sem:
                    return await client.post(server.url + "/generate", json=body)

            return await asyncio.gather(*[one() for _ in range(160)])

    codes = [r.status_code for r in asyncio.run(fire())]
    assert codes == [200] * 160, {c: codes.count(c) for c in set(codes)}
    assert "could not keep the sessions" not in server.log()


def test_classifier_batches_across_requests(server: Server) -> None:
    # Each /generate_score sends its 2 completions in one classify call; BentoML's adaptive batching
    # then merges calls of concurrent requests into one forward pass (a batch of more than 2 texts).
    def batch_sizes() -> dict[float, float]:
        """Cumulative histogram of the classifier's batch sizes: {upper bound: count}."""
        text = httpx.get(server.url + "/metrics", timeout=10).text
        out = {}
        for labels, value in re.findall(r"^bentoml_service_adaptive_batch_size_bucket\{(.*)\} (\S+)$", text, re.M):
            le = re.search(r'le="([^"]+)"', labels)
            if 'service_name="classifier"' in labels and le:  # float("+Inf") is inf: the total
                out[float(le.group(1))] = out.get(float(le.group(1)), 0.0) + float(value)
        return out

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"original_sentence": "Batch me", "params": {"max_new_tokens": 2}}
            return await asyncio.gather(*[client.post(server.url + "/generate_score", json=body) for _ in range(16)])

    # Whether calls meet in one batch window depends on timing: one burst of 16 requests once spread its
    # classify calls out (14 calls of 1-2 texts) on a 2-core machine. Up to three bursts; one merged batch is enough.
    seen = []
    for _ in range(3):
        before = batch_sizes()
        assert all(r.status_code == 200 for r in asyncio.run(fire()))
        after = batch_sizes()
        small = {le: after[le] - before.get(le, 0.0) for le in after if le <= 2.0}
        total = after[float("inf")] - before.get(float("inf"), 0.0)
        assert total >= 1, after
        if max(small.values(), default=0.0) < total:  # some batch held > 2 texts
            return
        seen.append((before, after))
    pytest.fail(f"no classify batch held more than 2 texts in 3 bursts of 16 requests: {seen}")


def test_metrics_per_node(server: Server) -> None:
    assert post(server, "/generate_score", {"original_sentence": "Metrics?"}).status_code == 200
    deadline = time.time() + 5
    while True:  # the node copies its counters into Prometheus every 0.5 s
        text = httpx.get(server.url + "/metrics", timeout=10).text
        tokens = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^graph_node_generated_tokens_total\{node="(\w+)"\} ([0-9.e+]+)$', text, re.M)
        }
        if set(tokens) >= {"tiny_a", "tiny_b"} or time.time() > deadline:
            break
        time.sleep(0.5)
    assert tokens.get("tiny_a", 0) > 0 and tokens.get("tiny_b", 0) > 0, tokens
    for service in ("generator_tiny_a", "generator_tiny_b", "classifier", "InferenceGraph"):
        assert re.search(rf'bentoml_service_request_total\{{[^}}]*service_name="{service}"', text), service
        assert re.search(rf'bentoml_service_request_duration_seconds_count\{{[^}}]*service_name="{service}"', text)


def test_request_id_follows_the_request(server: Server) -> None:
    r = httpx.post(
        server.url + "/generate_score",
        json={"original_sentence": "Trace me"},
        headers={"X-Request-Id": "trace-me-42"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-42"
    time.sleep(0.5)
    lines = [ln for ln in server.log().splitlines() if "request_id=trace-me-42" in ln]
    services = {m.group(1) for ln in lines for m in [re.search(r"\[(?:entry_)?service:(\w+):", ln)] if m}
    assert {"InferenceGraph", "generator_tiny_a", "generator_tiny_b"} <= services, lines


def test_hung_node_gives_json_5xx_not_a_hang(tiny_dir, tmp_path) -> None:
    import signal

    import yaml

    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["graph_timeout_s"] = 3
    path = tmp_path / "short_timeout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Server(config=path, name="hung") as srv:
        assert post(srv, "/generate_score", {"original_sentence": "warm"}).status_code == 200
        pid = srv.worker_pid("generator_tiny_b")
        os.kill(pid, signal.SIGSTOP)  # the node hangs: its process is frozen
        try:
            t0 = time.time()
            r = post(srv, "/generate_score", {"original_sentence": "hi"})
            elapsed = time.time() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert r.status_code == 500, r.text
        body = r.json()
        assert body["error"] == "node_timeout" and body["node"] == "tiny_b" and "tiny_b" in body["message"]
        assert elapsed < 10
        r = post(srv, "/generate", {"prompt": "hi", "model": "tiny_a"})  # the healthy node still answers
        assert r.status_code == 200, r.text


# --- structured output (params.response_format) ----------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
    "additionalProperties": False,
}
JSON_PARAMS = {
    "max_new_tokens": 80,
    "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA, "strict": True}},
}


def _valid(text: str) -> None:
    import jsonschema_rs

    jsonschema_rs.validate(SCHEMA, json.loads(text))


def test_response_format_on_generate_and_generate_score(server: Server) -> None:
    """A random tiny model constrained by a schema writes schema-valid JSON on every node."""
    r = post(server, "/generate", {"prompt": "The cat", "params": {**JSON_PARAMS, "do_sample": True, "seed": 3}})
    assert r.status_code == 200, r.text
    for item in r.json():
        (res,) = item["results"]
        assert res["finish_reason"] == "stop", res
        _valid(res["text"])
    r = post(server, "/generate_score", {"original_sentence": "The cat", "params": JSON_PARAMS}, timeout=120)
    assert r.status_code == 200, r.text
    for item in r.json():
        _valid(item["completion"])


@pytest.mark.parametrize("path", ["/generate_stream", "/generate_score_stream"])
def test_response_format_on_the_streams(server: Server, path: str) -> None:
    with httpx.stream("POST", server.url + path, json={"prompt": "The dog", "params": JSON_PARAMS}, timeout=120) as r:
        assert r.status_code == 200
        data = [json.loads(d) for _, d in sse_events(r)[:-1]]
    for model in ("tiny_a", "tiny_b"):
        text = "".join(e["text"] for e in data if e.get("model") == model and e["type"] in ("token", "final"))
        _valid(text)


@pytest.mark.parametrize("path", ["/generate", "/generate_score", "/generate_stream"])
def test_bad_schema_is_a_400_naming_response_format(server: Server, path: str) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nosuch"}}}
    key = "original_sentence" if path == "/generate_score" else "prompt"
    r = post(server, path, {key: "hi", "params": {"response_format": bad}})
    assert r.status_code == 400, r.text
    assert "params.response_format" in r.text and "nosuch" in r.text, r.text
