"""The OpenAPI spec is the contract: schemathesis (fixed seed, bounded examples) against a real
`bentoml serve` of the tiny config finds no server error and no response outside the spec."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.server import ROOT, Server

SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"


@pytest.fixture(scope="module")
def server(tiny_server: Server) -> Server:
    return tiny_server  # tests/conftest.py: one configs/tiny.yaml server for the session


def test_spec_documents_errors_and_sse(server):
    spec = httpx.get(server.url + "/docs.json", timeout=10).json()
    for path in ("/generate", "/generate_score", "/classify", "/generate_stream", "/generate_score_stream"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "415", "429", "500"} <= set(responses), (path, sorted(responses))
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert "Retry-After" in responses["429"]["headers"]
    assert set(spec["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"]) == {"text/event-stream"}
    params = spec["components"]["schemas"]["GenerationOverrides"]["properties"]["temperature"]
    assert {"minimum": 0.0, "maximum": 5.0}.items() <= {k: v for o in params["anyOf"] for k, v in o.items()}.items()
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


def test_schemathesis_finds_nothing(server, tmp_path):
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{server.url}/docs.json",
        "--checks",
        "all",
        "--seed",
        "20261124",
        "--max-examples",
        "25",
        # A prompt's limit in *tokens* (max_prompt_tokens) depends on each node's tokenizer: no schema can
        # say it, so a schema-valid prompt may still get its 400 naming the field. Every other check runs:
        # no server error, every status, header, media type and body as documented, bad data refused.
        "--exclude-checks",
        "positive_data_acceptance",
        "--request-timeout",
        "300",
        "--workers",
        "1",
        "--no-shrink",
        "--exclude-path",
        "/metrics",  # Prometheus text, not a JSON API
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_spec_documents_the_messages_and_responses_faces(server):
    spec = httpx.get(server.url + "/docs.json", timeout=10).json()
    paths = spec["paths"]
    assert {"/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1/responses/{response_id}"} <= set(paths)
    messages = paths["/v1/messages"]["post"]
    assert set(messages["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert messages["responses"]["400"]["content"]["application/json"]["schema"]["properties"]["type"] == {
        "const": "error"
    }  # Anthropic's error shape
    body = messages["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["model"]["enum"] == [
        "tiny_a",
        "tiny_b",
        "graph:best",
        "graph:pruned",
        "graph:cheap_first",
        "graph:routed",
    ]
    assert {"get", "delete"} == set(paths["/v1/responses/{response_id}"])
    assert (
        "error"
        in paths["/v1/responses"]["post"]["responses"]["404"]["content"]["application/json"]["schema"]["required"]
    )
