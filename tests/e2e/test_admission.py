"""Refusals before the first byte (issue #32): a node's admission refusal on a streaming face is an HTTP 429
with Retry-After (gRPC: RESOURCE_EXHAUSTED with a `retry-after` trailer), never a 200 whose stream carries
an `overloaded` event.

One server on configs/tiny.yaml with tiny_a squeezed to one batch row and one queue slot: while two long
requests hold them (one running, one waiting), tiny_a's scheduler refuses every new request at once.
Between two blockers the row may be free for a moment, so each face is called until it is refused (at
most a few times); every answer it gives is checked: a 429 with Retry-After, or a whole 200 stream
without an error in it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from protos import inference_graph_pb2 as ig
from protos import inference_graph_pb2_grpc as ig_grpc
from protos import text_generator_pb2 as tg
from protos import text_generator_pb2_grpc as tg_grpc
from tests.grpc_client import grpc_config
from tests.server import Server

LONG = "Hello world, this is"  # the tiny models run it to max_new_tokens (no end-of-sequence)
TRIES = 20


@pytest.fixture(scope="module")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("admission")
    path, _ = grpc_config("configs/tiny.yaml", folder / "tiny_grpc.yaml")
    cfg = yaml.safe_load(path.read_text())
    cfg["generators"]["tiny_a"]["scheduler"] = {"max_batch_size": 1, "max_queue": 1}
    cfg["chat"] = {"database_url": f"sqlite:///{folder}/chat.sqlite3", "default_model": "tiny_a"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with Server(config=path, name="admission") as srv:
        yield srv


class Blockers:
    """Two long /generate calls on tiny_a kept in flight (one holds the row, one the queue slot)."""

    def __init__(self, server: Server) -> None:
        self.server, self.stop = server, threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(2)]

    def _loop(self) -> None:
        body = {"prompt": LONG, "model": "tiny_a", "params": {"max_new_tokens": 900}}
        while not self.stop.is_set():
            httpx.post(self.server.url + "/generate", json=body, timeout=120)

    def __enter__(self) -> Blockers:
        for t in self.threads:
            t.start()
            time.sleep(0.3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # both in: one row running, one request waiting
            stats = httpx.post(self.server.url + "/node_stats", json={}, timeout=10).json()["tiny_a"]
            if stats["active_rows"] >= 1 and stats["queued_requests"] >= 1:
                return self
            time.sleep(0.05)
        raise AssertionError(f"the blockers never filled tiny_a: {stats}")

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def sse_call(path: str, body: dict) -> Callable[[Server], tuple[int, dict[str, str], str]]:
    def call(server: Server) -> tuple[int, dict[str, str], str]:
        with httpx.stream("POST", server.url + path, json=body, timeout=120) as r:
            return r.status_code, dict(r.headers), r.read().decode()

    return call


P = {"max_new_tokens": 4}
FACES = {
    "generate_stream": sse_call("/generate_stream", {"prompt": LONG, "model": "tiny_a", "params": P}),
    "generate_score_stream": sse_call("/generate_score_stream", {"prompt": LONG, "model": "tiny_a", "params": P}),
    "chat_stream": sse_call("/chat_stream", {"user_id": "admission", "message": "hi", "params": P}),
    "openai_chat": sse_call(
        "/v1/chat/completions",
        {"model": "tiny_a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True},
    ),
    "openai_completions": sse_call(
        "/v1/completions", {"model": "tiny_a", "prompt": LONG, "max_tokens": 4, "stream": True}
    ),
}


@pytest.mark.parametrize("face", list(FACES))
def test_a_refused_stream_is_a_429_with_retry_after(server: Server, face: str) -> None:
    answers = []
    with Blockers(server):
        for _ in range(TRIES):
            status, headers, text = FACES[face](server)
            answers.append(status)
            if status == 429:
                assert int(headers["retry-after"]) >= 1, headers
                assert headers["content-type"].startswith("application/json"), headers
                error = json.loads(text)
                error = error.get("error", error) if face.startswith("openai") else error
                assert "overloaded" in json.dumps(error) and "tiny_a" in json.dumps(error), text
                break
            assert status == 200, (status, text[:300])
            assert "overloaded" not in text and '"error"' not in text, text[:500]
            time.sleep(0.05)
    assert answers[-1] == 429, answers


def trailers(err: Any) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


def grpc_port(server: Server) -> int:
    return yaml.safe_load(Path(str(server.config)).read_text())["grpc"]["port"]


@pytest.mark.parametrize("face", ["seed_streamed", "graph_score_stream"])
def test_a_refused_grpc_stream_is_resource_exhausted_with_a_retry_hint(server: Server, face: str) -> None:
    codes = []
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as channel, Blockers(server):
        seed, graph = tg_grpc.TextGeneratorStub(channel), ig_grpc.InferenceGraphStub(channel)
        for _ in range(TRIES):
            try:
                if face == "seed_streamed":
                    req = tg.GenerateStreamedRequest(text=LONG, max_length=12)
                    replies = list(seed.GenerateStreamed(req, metadata=[("x-model", "tiny_a")], timeout=60))
                    assert replies
                else:
                    req = ig.StreamRequest(prompt=LONG, model="tiny_a", params=ig.GenerationParams(max_new_tokens=4))
                    events = list(graph.GenerateScoreStream(req, timeout=60))
                    assert not any(ev.HasField("error") for ev in events), events
            except grpc.RpcError as err:
                codes.append(err.code())
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
                assert int(trailers(err)["retry-after"]) >= 1
                break
            codes.append(grpc.StatusCode.OK)
            time.sleep(0.05)
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
