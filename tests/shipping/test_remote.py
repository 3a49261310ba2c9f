"""Remote nodes: a generator Bento and the classifier each served alone (services/node.py) on their own
ports, and the graph on another port reaching them over HTTP through `url:` in its config."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.server import BENTOML, ROOT, Server, free_port, sse_events


@dataclass
class Cluster:
    config: Path  # the graph's config; each node's arguments are this plus `node: NAME`
    node: Server  # tiny_a alone, served from a Bento built with bentofile.node.yaml
    classifier: Server  # the classifier alone, served from source (services.node:Node)
    graph: Server  # InferenceGraph with tiny_b as a local worker


def build_node_bento(args: Path, name: str, folder: Path) -> str:
    """`bentoml build -f bentofile.node.yaml --name NAME --arg-file ARGS`; returns the tag.

    Built from a copy without `models:` (tiny models come by absolute path; packing the default
    models is tested in test_bento.py), so this test does not need them in the store."""
    bentofile = yaml.safe_load((ROOT / "bentofile.node.yaml").read_text())
    assert bentofile["service"] == "services.node:Node"
    bentofile.pop("models")
    (folder / "bentofile.node.yaml").write_text(yaml.safe_dump(bentofile))
    out = subprocess.run(
        [
            str(BENTOML),
            "build",
            "-f",
            str(folder / "bentofile.node.yaml"),
            "--name",
            name,
            "--arg-file",
            str(args),
            "-o",
            "tag",
            str(ROOT),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    found = re.search(r"__tag__:(\S+)", out.stdout)
    assert found, out.stdout
    return found.group(1)


@pytest.fixture(scope="module")
def cluster(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """configs/tiny.yaml with tiny_a and the classifier remote; tiny_b stays a local worker of the graph."""
    import bentoml

    node_port, classifier_port = free_port(), free_port()
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    for node in [*data["generators"].values(), data["classifier"]]:
        node["model"]["path"] = str(ROOT / node["model"]["path"])  # a Bento's code runs from its own folder
    data["generators"]["tiny_a"]["url"] = f"http://127.0.0.1:{node_port}"
    data["classifier"]["url"] = f"http://127.0.0.1:{classifier_port}"
    folder = tmp_path_factory.mktemp("remote")
    config = folder / "remote.yaml"
    config.write_text(yaml.safe_dump(data))

    def node_args(name: str) -> Path:
        """A node ignores its own `url:`, so the graph's config serves on both sides."""
        args = folder / f"node-{name}.yaml"
        args.write_text(yaml.safe_dump({**data, "node": name}))
        return args

    tag = build_node_bento(node_args("tiny_a"), "generator_tiny_a", folder)
    servers = [
        Server(target=tag, name="node-tiny_a", port=node_port),
        Server(
            target="services.node:Node", config=node_args("classifier"), name="node-classifier", port=classifier_port
        ),
        Server(config=config, name="graph-remote"),
    ]
    started: list[Server] = []
    try:
        for srv in servers:
            started.append(srv.start())
        yield Cluster(config, *servers)
    finally:
        for srv in reversed(started):
            srv.stop()
        bentoml.delete(tag)


def in_log(server: Server, text: str, timeout_s: float = 10) -> bool:
    """Whether `text` shows up in the server's log soon (access lines are written after the response)."""
    deadline = time.time() + timeout_s
    while text not in server.log():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def post(server: Server, path: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


def test_generate_score_through_remote_nodes(cluster: Cluster) -> None:
    r = post(cluster.graph, "/generate_score", {"original_sentence": "Remote idea", "params": {"max_new_tokens": 5}})
    assert r.status_code == 200, r.text
    items = r.json()
    assert {i["model"] for i in items} == {"tiny_a", "tiny_b"}
    for item in items:
        assert item["generated"] == "Remote idea" + item["completion"]
        assert 1 <= item["completion_tokens"] <= 5
        assert item["score"] == pytest.approx(item["labels"]["positive"])
    rid = r.headers["x-request-id"]
    assert 'BentoServer from "generator_tiny_a:' in cluster.node.log()  # the built node Bento
    # tiny_a ran in the other server, reached over HTTP, with the request id; texts were scored remotely.
    assert in_log(cluster.node, f"request_id={rid} node=tiny_a")
    assert in_log(cluster.node, "path=/generate,")
    assert in_log(cluster.classifier, "path=/classify,")


def test_graph_runs_no_local_worker_for_remote_nodes(cluster: Cluster) -> None:
    log = cluster.graph.log()
    assert "Service generator_tiny_b initialized" in log
    assert "Service generator_tiny_a initialized" not in log
    assert "Service classifier initialized" not in log


def test_stream_from_remote_node(cluster: Cluster) -> None:
    body = {"prompt": "Stream me", "model": "tiny_a", "params": {"max_new_tokens": 6}}
    with httpx.stream("POST", cluster.graph.url + "/generate_score_stream", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [data for _, data in sse_events(r)]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert {e["model"] for e in parsed} == {"tiny_a"}
    kinds = [e["type"] for e in parsed]
    assert kinds.count("final") == 1 and kinds.count("score") == 1
    final = next(e for e in parsed if e["type"] == "final")
    tokens = "".join(e["text"] for e in parsed if e["type"] in {"token", "final"})
    assert final["usage"]["completion_tokens"] <= 6 and tokens


def test_bad_request_for_remote_node_is_named(cluster: Cluster) -> None:
    r = post(cluster.graph, "/generate", {"prompt": "hi", "model": "tiny_a", "params": {"max_new_tokens": 901}})
    assert r.status_code == 400, r.text
    assert "max_new_tokens" in r.text


def test_unknown_node_name_fails_at_startup(cluster: Cluster) -> None:
    args = cluster.config.with_name("node-nope.yaml")
    args.write_text(yaml.safe_dump({**yaml.safe_load(cluster.config.read_text()), "node": "nope"}))
    with pytest.raises(RuntimeError) as err:
        Server(target="services.node:Node", config=args, name="node-nope").start(timeout_s=60)
    assert "'nope' is not a node of graph 'tiny'" in str(err.value)
    assert "['tiny_a', 'tiny_b', 'classifier']" in str(err.value)


def test_remote_node_down_is_a_clear_error(cluster: Cluster) -> None:
    """Runs last in this file: it stops the tiny_a server."""
    cluster.node.stop()
    r = post(cluster.graph, "/generate_score", {"original_sentence": "Anyone there?"})
    assert r.status_code == 503, r.text
    assert r.json()["node"] == "tiny_a" and "tiny_a" in r.json()["message"]
    assert r.json()["error"] == "node_unavailable"
    # The local node and the remote classifier still answer.
    r = post(cluster.graph, "/generate", {"prompt": "still here", "model": "tiny_b"})
    assert r.status_code == 200, r.text
