"""The Kubernetes topology (graph/entry/k8s.py) as processes: each node its own `bentoml serve` on its own port,
the entry reaching them by the URLs the manifests give; one node killed and restarted under traffic."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from graph.config import load_config
from graph.entry.k8s import Renderer
from tests.server import ROOT, Server, free_port


def kill(server: Server) -> None:
    """A crash, not a drain: SIGKILL to `bentoml serve` and every worker at once."""
    assert server.proc is not None
    workers = server.workers()
    os.killpg(server.proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def topology(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """configs/tiny.yaml as the cluster's ConfigMap says, each Service host mapped to a local port."""
    path = ROOT / "configs" / "tiny.yaml"
    renderer = Renderer(load_config(path), yaml.safe_load(path.read_text()), "configs/tiny.yaml")
    cluster = yaml.safe_load(renderer.config_map()["data"]["graph.yaml"])
    folder = tmp_path_factory.mktemp("topology")
    ports: dict[str, int] = {}
    for name in renderer.node_names():
        node = cluster["classifier"] if name == "classifier" else cluster["generators"][name]
        url = urlsplit(node["url"])
        assert url.hostname == renderer.service(name) and url.port == 3000  # the Service the manifests make
        ports[name] = free_port()
        node["url"] = f"http://127.0.0.1:{ports[name]}"  # this machine's stand-in for the Service's DNS name
    config = folder / "graph.yaml"
    config.write_text(yaml.safe_dump(cluster))
    servers: dict[str, Server] = {}
    for name in ports:  # the node's arguments: the same file plus `node: NAME` (a node ignores its own url)
        args = folder / f"node-{name}.yaml"
        args.write_text(yaml.safe_dump({**cluster, "node": name}))
        servers[name] = Server(target="services.node:Node", config=args, name=f"topo-{name}", port=ports[name])
    servers["entry"] = Server(config=config, name="topo-entry")
    try:
        with ThreadPoolExecutor(len(servers)) as pool:  # start together: four loads on two cores
            list(pool.map(lambda s: s.start(timeout_s=300), servers.values()))
        yield servers
    finally:
        for srv in servers.values():
            srv.stop()


def test_entry_runs_no_local_node(topology: dict[str, Server]) -> None:
    log = topology["entry"].log()
    assert "Service generator_tiny_a initialized" not in log and "Service classifier initialized" not in log


def test_node_killed_and_restarted_under_traffic(topology: dict[str, Server]) -> None:
    entry, node = topology["entry"], topology["tiny_a"]
    outcomes: list[tuple[float, int, dict | list]] = []
    errors: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"original_sentence": f"client {i} request {n}", "params": {"max_new_tokens": 4}}
                try:
                    r = http.post(entry.url + "/generate_score", json=body)
                except httpx.HTTPError as exc:  # an accepted request lost: no answer at all
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                outcomes.append((time.monotonic(), r.status_code, r.json()))
                time.sleep(0.05 if r.status_code == 200 else 0.5)  # a client backs off from a 503

    def wait_for(status: int, since: float, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(t > since and s == status for t, s, _ in outcomes):
            assert time.monotonic() < deadline, f"no {status} in {timeout_s}s: {[s for _, s, _ in outcomes][-20:]}"
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(200, 0.0, 60)
        killed = time.monotonic()
        kill(node)
        wait_for(503, killed, 60)
        restarted = time.monotonic()
        node.start(timeout_s=180)  # same port, as a new pod behind the same Service
        wait_for(200, restarted, 120)
        back = time.monotonic()
        wait_for(200, back, 60)  # and stays up
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
    assert not errors, errors
    statuses = {s for _, s, _ in outcomes}
    assert statuses <= {200, 503}, [(s, b) for _, s, b in outcomes if s not in (200, 503)]
    unavailable = [b for _, s, b in outcomes if s == 503]
    assert unavailable and all(b["node"] == "tiny_a" and "tiny_a" in b["message"] for b in unavailable)
    assert all(b["error"] == "node_unavailable" for b in unavailable)
    assert not [s for t, s, _ in outcomes if t > back and s != 200]  # once back, every request answers 200
    ok = [b for _, s, b in outcomes if s == 200]
    assert all({i["model"] for i in b} == {"tiny_a", "tiny_b"} for b in ok)
