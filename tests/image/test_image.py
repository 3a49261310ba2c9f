"""The container images run for real with podman (`make test-image`; skipped in `make test`).

The graph's image (`make image`): `podman run` to /readyz (timed), the README's first request, the
openai SDK, the seed's gRPC client, memory at idle and under load, `podman stop` with a request in
flight. Then one container per node (`make image-nodes`) wired as the Kubernetes manifests wire them
(graph/entry/k8s.py: the ConfigMap's graph.yaml mounted over the Bento's config, each node reached at its
Service name, here a network alias on one podman network), a node's container killed under traffic:
503 naming it, then recovery. Every step prints its time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from graph.config import load_config
from graph.entry.k8s import Renderer
from tests.grpc_client import seed_client_script
from tests.server import ROOT, free_port

ENGINE = os.environ.get("ENGINE", "podman")
GRAPH_IMAGE = os.environ.get("GRAPH_IMAGE", "localhost/inference_graph:latest")
CONFIG = ROOT / "configs" / "default.yaml"
RUN = f"igtest-{os.getpid()}"  # prefix of every container and network this run makes
READY_TIMEOUT_S = 600


def engine(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def step(name: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        print(f"\n[image] {name}: {time.monotonic() - t0:.1f} s", flush=True)


def image_exists(image: str) -> bool:
    return engine("image", "inspect", image, check=False).returncode == 0


def wait_ready(url: str, container: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Seconds until /readyz answers 200 (a short client timeout: a request made while the nodes are
    loading may hang); fails early, with the log, if the container exits."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        state = engine("inspect", "-f", "{{.State.Running}}", container, check=False).stdout.strip()
        if state != "true":
            raise AssertionError(f"{container} exited while starting:\n{logs(container)[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{container} not ready in {timeout_s}s:\n{logs(container)[-4000:]}")


def logs(container: str) -> str:
    proc = engine("logs", container, check=False)
    return proc.stdout + proc.stderr


def memory(*containers: str) -> dict[str, str]:
    """`podman stats --no-stream`: memory use per container."""
    out = engine("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *containers).stdout
    return dict(line.split("\t", 1) for line in out.strip().splitlines())


def check_generate_score(url: str, **params: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"original_sentence": "I have an idea!", **({"params": params} if params else {})}
    r = httpx.post(url + "/generate_score", json=body, timeout=300)
    assert r.status_code == 200, r.text
    results = r.json()
    assert {item["model"] for item in results} == {"smollm2", "gemma3"}
    for item in results:
        assert item["generated"].startswith("I have an idea!") and item["completion"]
        assert 0.0 <= item["score"] <= 1.0 and item["label"] in {"positive", "negative"}
    return results


# ---- the graph's image ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Iterator[dict[str, Any]]:
    """`podman run -p HTTP:3000 -p GRPC:50051 inference_graph:latest`, ready; removed afterwards."""
    if not image_exists(GRAPH_IMAGE):
        pytest.fail(f"{GRAPH_IMAGE} is missing: `make image` builds it")
    name = f"{RUN}-graph"
    http_port, grpc_port = free_port(), free_port()
    try:
        with step("podman run -> /readyz 200 (graph image)"):
            t0 = time.monotonic()
            engine("run", "-d", "--name", name, "-p", f"{http_port}:3000", "-p", f"{grpc_port}:50051", GRAPH_IMAGE)
            url = f"http://127.0.0.1:{http_port}"
            wait_ready(url, name)
            ready_s = time.monotonic() - t0
        print(f"[image] ready {ready_s:.1f} s after `podman run`")
        yield {"name": name, "url": url, "grpc_port": grpc_port, "ready_s": ready_s}
    finally:
        engine("rm", "-f", "-t", "0", name, check=False)


def test_image_is_non_root_with_stopsignal_healthcheck_ports_and_cpu_torch() -> None:
    if not image_exists(GRAPH_IMAGE):
        pytest.fail(f"{GRAPH_IMAGE} is missing: `make image` builds it")
    info = json.loads(engine("image", "inspect", GRAPH_IMAGE).stdout)[0]
    config = info["Config"]
    assert config["User"] == "bentoml"
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) >= {"3000/tcp", "50051/tcp"}
    health = info.get("Healthcheck") or {}
    assert any("/readyz" in part for part in health.get("Test", [])), info.keys()
    layers = engine("history", "--format", "{{.Size}}\t{{.CreatedBy}}", GRAPH_IMAGE).stdout
    print(f"\n[image] {GRAPH_IMAGE}: {info['Size'] / 1e9:.2f} GB\n{layers}")
    # torch is the CPU build, nothing of CUDA is installed, and every model the Bento names is inside
    probe = (
        "import importlib.metadata as m, pathlib, torch; "
        "print(torch.__version__); "
        "print(sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].startswith('nvidia-c'))); "
        "print(sorted(p.parent.name + ':' + p.name for p in pathlib.Path('/home/bentoml/bento/models').glob('*/*') "
        "if p.is_dir()))"
    )
    out = engine("run", "--rm", "--entrypoint", "python3.11", GRAPH_IMAGE, "-c", probe).stdout.splitlines()
    assert out[0] == "2.13.0+cpu", out
    assert out[1] == "[]", out
    models = eval(out[2])
    assert {m.split(":")[0] for m in models} == {
        "smollm2-135m-instruct",
        "gemma-3-270m",
        "smollm2-135m-instruct-onnx",
        "gemma-3-270m-onnx",
    }, models


def test_every_cpu_kind_finds_what_its_runtime_loads() -> None:
    """deploy/image/runtime_check.py in the image: per generator and CPU kind, the runtime `auto` picks and
    its files (torch weights, ONNX conversion, GGUF + llama.cpp's CPU variants) in the image's store."""
    if not image_exists(GRAPH_IMAGE):
        pytest.fail(f"{GRAPH_IMAGE} is missing: `make image` builds it")
    script = ROOT / "deploy" / "image" / "runtime_check.py"
    proc = engine(
        "run", "--rm", "-v", f"{script}:/tmp/runtime_check.py:ro", "--entrypoint", "python3.11", GRAPH_IMAGE,
        "/tmp/runtime_check.py", check=False, timeout=300,
    )  # fmt: skip
    print(f"\n[image] runtime per CPU kind:\n{proc.stdout}{proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {line.split("\t")[1] for line in proc.stdout.splitlines() if line.count("\t") == 4}
    assert kinds == {"amx", "avx512_bf16", "avx512", "avx2"}, proc.stdout


def test_ready_with_packed_models_and_healthy(graph: dict[str, Any]) -> None:
    log = logs(graph["name"])
    assert "[onnx] converting" not in log, "the image converted a model at start-up"
    assert "huggingface.co" not in log
    # the generators' bfloat16 weights written from their GGUF at start (deploy/image/gguf_weights.py)
    written = [line for line in log.splitlines() if line.startswith("graph-weights:")]
    print("\n[image] " + "\n[image] ".join(written))
    assert any("2 model(s) ready" in line for line in written), log[-4000:]
    assert sum("sha256 as built" in line for line in written) == 2, written
    # what `runtime: {backend: auto}` resolved to on this CPU, each generator's start-up line
    from graph.models.runtimes import cpu_kind

    for name in ("smollm2", "gemma3"):
        lines = [line for line in log.splitlines() if f"{name}: runtime auto for latency" in line]
        assert lines, f"no start-up line of {name}'s runtime:\n{log[-4000:]}"
        print(f"[image] {lines[0].strip()[:300]}")
        if cpu_kind() == "amx":  # the hybrid: onnx int8 for few rows, torch bfloat16 for many
            assert "hybrid" in lines[0] and "CPU kind amx" in lines[0], lines[0]
    with step("podman healthcheck run"):
        assert engine("healthcheck", "run", graph["name"], check=False).returncode == 0
    r = httpx.get(graph["url"] + "/readyz", timeout=5)
    assert r.status_code == 200 and r.json()["ready"] is True


def test_readme_first_request(graph: dict[str, Any]) -> None:
    with step("README's first request (POST /generate_score)"):
        results = check_generate_score(graph["url"])
    print(json.dumps(results)[:400])


def test_openai_sdk(graph: dict[str, Any]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=graph["url"] + "/v1", api_key="unused", timeout=300)
    with step("openai SDK: models.list + chat.completions.create"):
        ids = [m.id for m in client.models.list()]
        reply = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=12,
            seed=1,
        )
    assert {"smollm2", "gemma3", "graph", "classifier"} <= set(ids)
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0


def test_seed_grpc_client(graph: dict[str, Any], tmp_path: Path) -> None:
    """Stubs generated by the seed's protoc command, its client, the container's gRPC port."""
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "protos/text_generator.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gen.returncode == 0, gen.stderr
    with step("seed's gRPC client (Generate + GenerateStreamed)"):
        run = subprocess.run(
            [sys.executable, "-c", seed_client_script(graph["grpc_port"], "Once upon a time")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stderr
    unary, streamed = [eval(line) for line in run.stdout.splitlines()]
    assert unary.startswith("Once upon a time") and len(unary) > len("Once upon a time")
    assert streamed.startswith("Once upon a time") and len(streamed) > len("Once upon a time")


def test_memory_idle_and_under_load(graph: dict[str, Any]) -> None:
    idle = memory(graph["name"])[graph["name"]]
    done = threading.Event()
    peak: list[str] = []

    def sample() -> None:
        while not done.is_set():
            peak.append(memory(graph["name"])[graph["name"]])
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    with step("2 clients x 3 /generate_score (16 new tokens) under `podman stats`"):
        sampler.start()
        try:  # more at once got 429 "overloaded" (admission control, max_wait_s) on the shared 2 cores
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda _: check_generate_score(graph["url"], max_new_tokens=16), range(6)))
        finally:
            done.set()
            sampler.join(timeout=30)
    print(f"[image] memory idle: {idle}; under load: {peak}")
    assert peak


def test_podman_stop_drains_a_request_in_flight(graph: dict[str, Any]) -> None:
    """The module's last graph test: SIGTERM (podman stop) while a request runs; it is answered."""
    answers: list[Any] = []
    body = {"prompt": "Once upon a time", "model": "gemma3", "params": {"max_new_tokens": 200}}

    def in_flight() -> None:
        try:
            r = httpx.post(graph["url"] + "/generate", json=body, timeout=120)
            answers.append((r.status_code, r.json()))
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    thread = threading.Thread(target=in_flight, daemon=True)
    thread.start()
    time.sleep(1.0)
    with step("podman stop (SIGTERM) with a request in flight"):
        engine("stop", "-t", "60", graph["name"], timeout=120)
    thread.join(timeout=60)
    code = engine("inspect", "-f", "{{.State.ExitCode}}", graph["name"]).stdout.strip()
    print(f"[image] exit code {code}; the request in flight got {answers}")
    assert answers and answers[0][0] == 200, answers
    [item] = answers[0][1]
    assert item["model"] == "gemma3" and item["results"], answers
    assert code == "0", logs(graph["name"])[-3000:]


# ---- one container per node, wired as the Kubernetes manifests wire them ---------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every Deployment of `make k8s` as a container: its image, args, env, the ConfigMap's graph.yaml at
    its mount path, its Service name as a network alias on one podman network; the entry's HTTP port
    published."""
    renderer = Renderer(load_config(CONFIG), yaml.safe_load(CONFIG.read_text()), "configs/default.yaml")
    folder = tmp_path_factory.mktemp("cluster")
    graph_yaml = folder / "graph.yaml"
    graph_yaml.write_text(renderer.config_map()["data"]["graph.yaml"])
    graph_yaml.chmod(0o644)
    deployments = [d for docs in renderer.files().values() for d in docs if d["kind"] == "Deployment"]
    missing = [c["image"] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]]
    missing = [i for i in missing if not image_exists(i)]
    if missing:
        pytest.fail(f"images missing: {missing}; `make image image-nodes` builds them")
    network = f"{RUN}-net"
    engine("network", "create", network)
    names: dict[str, str] = {}  # node (or "entry") -> container name
    port = free_port()
    try:
        # All at once, the entry first, as a Kubernetes rollout starts them: the entry starts while its nodes
        # still load, answers /readyz 503 naming them, and 200 once they answer (services/remote_nodes.py;
        # it used to exit, "Application startup failed", and needed the nodes started and healthy first).
        deployments.sort(key=lambda d: "inference-graph/node" in d["metadata"]["labels"])
        with step(f"podman run x{len(deployments)} (the entry first, its nodes beside it) -> entry /readyz 200"):
            for d in deployments:
                pod = d["spec"]["template"]["spec"]
                container = pod["containers"][0]
                node = d["metadata"]["labels"].get("inference-graph/node", "entry")
                service = d["metadata"]["name"]  # each Deployment's Service has its name
                name = f"{RUN}-{service}"
                args = ["run", "-d", "--name", name, "--network", network, "--network-alias", service]
                for env in container["env"]:
                    if "value" in env:
                        args += ["-e", f"{env['name']}={env['value']}"]
                mount = container["volumeMounts"][0]
                args += ["-v", f"{graph_yaml}:{mount['mountPath']}:ro"]
                args += ["--stop-timeout", str(pod["terminationGracePeriodSeconds"])]
                if node == "entry":
                    args += ["-p", f"{port}:3000"]
                engine(*args, container["image"], *container["args"])
                names[node] = name
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, names["entry"])
        yield {"url": url, "names": names, "renderer": renderer}
    finally:
        for name in names.values():
            engine("rm", "-f", "-t", "0", name, check=False)
        engine("network", "rm", "-f", network, check=False)


def test_cluster_serves_from_node_containers(cluster: dict[str, Any]) -> None:
    with step("README's first request through the entry container"):
        check_generate_score(cluster["url"])
    entry_log = logs(cluster["names"]["entry"])
    assert "Service generator_smollm2 initialized" not in entry_log  # the entry runs no local node
    assert "Application startup failed" not in entry_log
    print(f"[image] memory per container, idle: {memory(*cluster['names'].values())}")


def test_node_call_longer_than_a_minute_is_answered(cluster: dict[str, Any]) -> None:
    """smollm2's container paused (cgroup freezer) for 65 s under a request: the entry's call to it waits (its
    client timeout is the node's resources.timeout_s, 300 s; BentoML's own was 60 s) and the request is answered."""
    victim = cluster["names"]["smollm2"]
    answers: list[Any] = []

    def request() -> None:
        body = {"original_sentence": "I have an idea!", "params": {"max_new_tokens": 8}}
        r = httpx.post(cluster["url"] + "/generate_score", json=body, timeout=300)
        answers.append((r.status_code, r.json()))

    if engine("pause", victim, check=False).returncode != 0:
        pytest.skip(f"`{ENGINE} pause` does not work here: {logs(victim)[-300:]}")
    thread = threading.Thread(target=request, daemon=True)
    with step("a request while smollm2's container is paused 65 s, then unpaused -> 200"):
        t0 = time.monotonic()
        try:
            thread.start()
            time.sleep(65)
        finally:
            engine("unpause", victim, check=False)
        thread.join(timeout=240)
        took = time.monotonic() - t0
    print(f"[image] answered after {took:.1f} s: {str(answers)[:300]}")
    assert answers and answers[0][0] == 200, answers
    assert took > 65


def test_node_container_killed_under_traffic_then_restarted(cluster: dict[str, Any]) -> None:
    url, victim = cluster["url"], cluster["names"]["smollm2"]
    outcomes: list[tuple[float, int, Any]] = []
    errors: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=300) as http:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"original_sentence": f"client {i} request {n}", "params": {"max_new_tokens": 4}}
                try:
                    r = http.post(url + "/generate_score", json=body)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                outcomes.append((time.monotonic(), r.status_code, r.json()))
                time.sleep(0.05 if r.status_code == 200 else 0.5)

    def wait_for(status: int, since: float, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(t > since and s == status for t, s, _ in outcomes):
            assert time.monotonic() < deadline, f"no {status} in {timeout_s}s: {[s for _, s, _ in outcomes][-20:]}"
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(200, 0.0, 120)
        with step("podman kill (smollm2's container) -> 503 naming it"):
            killed = time.monotonic()
            engine("kill", victim)
            wait_for(503, killed, 90)
        with step("podman start (same container, same Service name) -> 200 again"):
            restarted = time.monotonic()
            engine("start", victim)
            wait_for(200, restarted, READY_TIMEOUT_S)
        back = time.monotonic()
        wait_for(200, back, 120)  # and stays up
        print(f"[image] memory per container, under load: {memory(*cluster['names'].values())}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    statuses = {s for _, s, _ in outcomes}
    print(f"[image] statuses: { {s: sum(1 for _, x, _ in outcomes if x == s) for s in statuses} }")
    for other in [b for _, s, b in outcomes if s not in (200, 503)][:5]:
        print(f"[image] other answer: {other}")
    # 429 "overloaded" (admission control, with retry_after_s) is an answer a client backs off from: on the
    # shared 2 cores the restarted node's backlog was seen to exceed its max_wait_s
    overloaded = [b for _, s, b in outcomes if s == 429]
    assert all(b["error"] == "overloaded" and b["retry_after_s"] > 0 for b in overloaded), overloaded
    assert statuses <= {200, 503, 429}, [(s, b) for _, s, b in outcomes if s not in (200, 503, 429)]
    unavailable = [b for _, s, b in outcomes if s == 503]
    assert unavailable and all(b["node"] == "smollm2" and "smollm2" in b["message"] for b in unavailable)
    assert not [s for t, s, _ in outcomes if t > back and s not in (200, 429)]
    ok = [b for _, s, b in outcomes if s == 200]
    assert all({i["model"] for i in b} == {"smollm2", "gemma3"} for b in ok)
