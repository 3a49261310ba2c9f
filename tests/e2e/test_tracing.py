"""Tracing through a real `bentoml serve` of configs/tiny.yaml: BentoML's `tracing:` configuration sends
OTLP/HTTP to a receiver in this test, and a /generate_score request is one trace, a span per node call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.server import ROOT, Server


class Receiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf), keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = next(
                        (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), ""
                    )
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            received.append(
                                {
                                    "service": service,
                                    "name": span.name,
                                    "trace": span.trace_id.hex(),
                                    "id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "attrs": {a.key: _value(a.value) for a in span.attributes},
                                    "events": [e.name for e in span.events],
                                    "event_attrs": {
                                        e.name: {a.key: _value(a.value) for a in e.attributes} for e in span.events
                                    },
                                    "status": span.status.code,
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1/traces"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def trace_of(self, predicate: Any, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Every span of the trace whose spans include one matching `predicate`, once it stops growing."""
        deadline = time.time() + timeout_s
        trace, size = "", -1
        while time.time() < deadline:
            if not trace:
                trace = next((s["trace"] for s in list(self.spans) if predicate(s)), "")
            spans = [s for s in list(self.spans) if trace and s["trace"] == trace]
            if spans and len(spans) == size:
                return spans
            size = len(spans)
            time.sleep(1.0)
        raise AssertionError(
            f"no complete trace in {timeout_s}s; got {[(s['service'], s['name']) for s in self.spans]}"
        )


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def traced(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Receiver]]:
    receiver = Receiver()
    folder = tmp_path_factory.mktemp("tracing")
    bentoml_config = folder / "bentoml.yaml"
    bentoml_config.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "tracing": {
                        "exporter_type": "otlp",
                        "sample_rate": 1.0,
                        "otlp": {"protocol": "http", "endpoint": receiver.url},
                    }
                },
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_CONFIG", str(bentoml_config))
    mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export every 0.2 s instead of 5 s
    server = Server(config=ROOT / "configs" / "tiny.yaml", name="tracing")
    try:
        server.start()
        yield server, receiver
    finally:
        server.stop()
        mp.undo()
        receiver.http.shutdown()


def test_generate_score_is_one_trace_with_a_span_per_node_call(traced: tuple[Server, Receiver]) -> None:
    server, receiver = traced
    body = {"original_sentence": "Trace me", "params": {"max_new_tokens": 5}}
    r = httpx.post(server.url + "/generate_score", json=body, timeout=120)
    assert r.status_code == 200, r.text
    spans = receiver.trace_of(lambda s: s["name"] == "node classifier")
    by_id = {s["id"]: s for s in spans}
    (root,) = [s for s in spans if s["parent"] not in by_id]
    assert root["service"] == "InferenceGraph" and "/generate_score" in root["name"], root
    nodes = {s["name"]: s for s in spans if s["name"].startswith("node ")}
    assert set(nodes) == {"node tiny_a", "node tiny_b", "node classifier"}
    for name in ("tiny_a", "tiny_b"):
        span = nodes[f"node {name}"]
        assert span["parent"] == root["id"] and span["service"] == "InferenceGraph"
        attrs = span["attrs"]
        assert attrs["graph.node"] == name
        assert 1 <= attrs["graph.completion_tokens"] <= 5 and attrs["graph.prompt_tokens"] >= 1
        assert attrs["graph.finish_reasons"][0] in ("stop", "length")
        assert attrs["graph.queue_ms"] >= 0 and attrs["graph.first_token_ms"] >= attrs["graph.queue_ms"]
        # the node's own server span (its worker process) hangs under the entry's span for the call
        served = [s for s in spans if s["parent"] == span["id"]]
        assert any(s["service"] == f"generator_{name}" for s in served), served
    assert nodes["node classifier"]["attrs"]["graph.texts"] == 2
    assert any(s["service"] == "classifier" and s["parent"] == nodes["node classifier"]["id"] for s in spans)


def test_a_named_graph_records_its_decisions_as_events(traced: tuple[Server, Receiver]) -> None:
    server, receiver = traced
    body = {"original_sentence": "Choose one", "graph": "best", "params": {"max_new_tokens": 4}}
    r = httpx.post(server.url + "/generate_score", json=body, timeout=120)
    assert r.status_code == 200, r.text
    spans = receiver.trace_of(lambda s: "policy.decision" in s["events"])
    events = [e for s in spans for e in s["events"]]
    assert "policy.candidates" in events and "policy.decision" in events
    (decision,) = [s["event_attrs"]["policy.decision"] for s in spans if "policy.decision" in s["events"]]
    answer = r.json()["answer"]
    assert decision["graph.result.graph"] == "best" and decision["graph.result.policy"] == "best_of"
    assert decision["graph.result.answer.id"] == answer["id"]
    generators = [s for s in spans if s["name"] in ("node tiny_a", "node tiny_b")]
    assert {s["name"] for s in generators} == {"node tiny_a", "node tiny_b"}
    assert sum(s["attrs"]["graph.completions"] for s in generators) == 3  # best: tiny_a x2, tiny_b x1


def test_a_stream_has_a_span_per_node_too(traced: tuple[Server, Receiver]) -> None:
    server, receiver = traced
    body = {"prompt": "Stream and trace", "model": "tiny_b", "params": {"max_new_tokens": 5}}
    with httpx.stream("POST", server.url + "/generate_score_stream", json=body, timeout=120) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    spans = receiver.trace_of(lambda s: s["service"] == "InferenceGraph" and "/generate_score_stream" in s["name"])
    names = [s["name"] for s in spans if s["name"].startswith("node ")]
    assert sorted(names) == ["node classifier", "node tiny_b"], (rid, names)
    (node,) = [s for s in spans if s["name"] == "node tiny_b"]
    assert 1 <= node["attrs"]["graph.completion_tokens"] <= 5 and node["attrs"]["graph.first_token_ms"] >= 0
    assert any(s["service"] == "generator_tiny_b" and s["parent"] == node["id"] for s in spans)
