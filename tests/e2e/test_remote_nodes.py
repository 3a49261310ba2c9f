"""The entry's clients of remote nodes (services/remote_nodes.py), with processes wired by URL as the Kubernetes
manifests wire them (tests/e2e/test_topology.py does the same):

- an entry started before its nodes starts, answers /readyz 503 and requests 503 naming a node, then recovers
  once the nodes answer (BentoML's proxy failed the entry's start-up: "Application startup failed");
- a remote node call is cut by the client timeout the node's own `resources.timeout_s` gives (BentoML's proxy
  cut every call at 60 s), and the answer says so, naming the node, rather than blaming the request's deadline.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from graph.config import load_config
from graph.entry.k8s import Renderer
from tests.server import ROOT, Server, free_port

NODE_TIMEOUT_S = 8  # tiny_a's resources.timeout_s in the entry's config: its client timeout (x1.01)


@pytest.fixture(scope="module")
def late(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """configs/tiny.yaml as the cluster's ConfigMap says, each Service host mapped to a local port; the entry
    started alone (ready = alive: /livez), the nodes not yet."""
    path = ROOT / "configs" / "tiny.yaml"
    renderer = Renderer(load_config(path), yaml.safe_load(path.read_text()), "configs/tiny.yaml")
    cluster = yaml.safe_load(renderer.config_map()["data"]["graph.yaml"])
    cluster["generators"]["tiny_a"]["resources"] = {"timeout_s": NODE_TIMEOUT_S}
    folder = tmp_path_factory.mktemp("remote")
    ports = {name: free_port() for name in renderer.node_names()}
    for name, port in ports.items():
        node = cluster["classifier"] if name == "classifier" else cluster["generators"][name]
        node["url"] = f"http://127.0.0.1:{port}"  # this machine's stand-in for the Service's DNS name
    config = folder / "graph.yaml"
    config.write_text(yaml.safe_dump(cluster))
    servers: dict[str, Server] = {"entry": Server(config=config, name="late-entry", ready_path="/livez")}
    for name, port in ports.items():
        args = folder / f"node-{name}.yaml"
        args.write_text(yaml.safe_dump({**cluster, "node": name}))
        servers[name] = Server(target="services.node:Node", config=args, name=f"late-{name}", port=port)
    try:
        servers["entry"].start(timeout_s=300)
        yield servers
    finally:
        for srv in servers.values():
            srv.stop()


def generate_score(url: str) -> tuple[int, Any]:
    body = {"original_sentence": "I have an idea!", "params": {"max_new_tokens": 4}}
    r = httpx.post(url + "/generate_score", json=body, timeout=120)
    return r.status_code, r.json()


def test_entry_started_before_its_nodes_answers_503_then_recovers(late: dict[str, Server]) -> None:
    entry = late["entry"]
    nodes = sorted(n for n in late if n != "entry")
    assert "Application startup failed" not in entry.log()
    r = httpx.get(entry.url + "/readyz", timeout=10)
    assert r.status_code == 503, r.text
    assert r.json()["nodes"] == {n: False for n in nodes}
    assert all(n in r.json()["message"] for n in nodes)
    status, body = generate_score(entry.url)
    assert status == 503, body
    assert body["error"] == "node_unavailable" and body["node"] in nodes and body["node"] in body["message"]

    with ThreadPoolExecutor(len(nodes)) as pool:  # the nodes come up now, behind the same URLs
        list(pool.map(lambda n: late[n].start(timeout_s=300), nodes))
    deadline = time.monotonic() + 60
    while (r := httpx.get(entry.url + "/readyz", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    assert r.json()["nodes"] == {n: True for n in nodes}
    status, body = generate_score(entry.url)
    assert status == 200, body
    assert {item["model"] for item in body} == {"tiny_a", "tiny_b"}
    assert "did not answer at start-up" in entry.log()  # said once, at start-up, naming the nodes


def test_client_timeout_is_the_nodes_own_and_said_as_such(late: dict[str, Server]) -> None:
    """tiny_a frozen (SIGSTOP: its socket accepts, nothing answers): the call is cut at tiny_a's
    resources.timeout_s (x1.01), not at BentoML's 60 s nor at the request's deadline (graph_timeout_s 300)."""
    entry, node = late["entry"], late["tiny_a"]
    if generate_score(entry.url)[0] != 200:
        pytest.skip("the nodes are not up (the test before this one failed)")
    frozen = node.processes()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, body = generate_score(entry.url)
        took = time.monotonic() - t0
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert status == 500, body
    assert body["error"] == "node_timeout" and body["node"] == "tiny_a", body
    assert "client timeout" in body["message"] and f"{NODE_TIMEOUT_S * 1.01:.1f} s" in body["message"], body
    assert "within the request's deadline" not in body["message"], body  # not blamed on the deadline
    assert NODE_TIMEOUT_S <= took < NODE_TIMEOUT_S + 20, took
    deadline = time.monotonic() + 120  # thawed: answers again
    while generate_score(entry.url)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_call_longer_than_a_minute_is_answered(late: dict[str, Server]) -> None:
    """tiny_b (resources.timeout_s left at 300) frozen for 62 s under a request: the entry's call waits and the
    request is answered (BentoML's proxy cut every remote call at 60 s)."""
    entry, node = late["entry"], late["tiny_b"]
    if generate_score(entry.url)[0] != 200:
        pytest.skip("the nodes are not up (an earlier test failed)")
    answers: list[tuple[int, Any]] = []
    frozen = node.processes()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(generate_score, entry.url)
            time.sleep(62)
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            answers.append(pending.result(timeout=120))
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    took = time.monotonic() - t0
    assert answers[0][0] == 200, answers
    assert took >= 62, took
