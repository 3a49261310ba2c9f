"""The llama-server baseline of `make bench-graph` (bench/llama_server_service.py) serves the graph's request
shape: two scored greedy completions from two llama-server processes, bad fields a 400, its processes gone
with the server. Skipped where llama-server is not built (`make llama-cpp`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.llama_tools import llama_server_path
from tests.server import Server


def llama_servers(srv: Server) -> list[int]:
    """PIDs of the llama-server processes this server started (they carry its marker)."""
    out = []
    for pid in srv.processes():
        try:
            if Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name == "llama-server":
                out.append(pid)
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_llama_server_graph_answers_like_the_graph() -> None:
    try:
        llama_server_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    body = {
        "original_sentence": "The weather today is",
        "params": {"do_sample": False, "max_new_tokens": 6, "repetition_penalty": 1.0},
    }
    with Server(
        "bench.llama_server_service:LlamaServerGraph", config="configs/default.yaml", name="llama-server-graph"
    ) as srv:
        started = llama_servers(srv)
        assert len(started) == 2, srv.log()[-3000:]  # one per generator of the config
        first = httpx.post(srv.url + "/generate_score", json=body, timeout=120)
        again = httpx.post(srv.url + "/generate_score", json=body, timeout=120)
        bad = httpx.post(srv.url + "/generate_score", json={**body, "params": {"logprobs": True}}, timeout=60)
    assert first.status_code == 200, first.text
    items = first.json()
    assert [i["model"] for i in items] == ["smollm2", "gemma3"]
    for item in items:
        assert 1 <= item["completion_tokens"] <= 6
        assert item["generated"] == "The weather today is" + item["completion"]
        assert 0.0 <= item["score"] <= 1.0 and item["label"] in ("positive", "negative")
        assert abs(sum(item["labels"].values()) - 1.0) < 1e-4
        assert item["finish_reason"] in ("stop", "length") and item["prompt_tokens"] > 0
    assert [i["completion"] for i in again.json()] == [i["completion"] for i in items]  # greedy
    assert bad.status_code == 400 and "logprobs" in bad.text
    assert not [pid for pid in started if alive(pid)]  # stopped with the server
