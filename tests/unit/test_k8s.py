"""graph/entry/k8s.py: the manifests of configs/default.yaml validate strictly against Kubernetes 1.37's schemas,
and every node and the entry has what a cluster needs (probes, Service, requests, HPA per generator)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from graph.config import load_config
from graph.entry.k8s import KEYS_SECRET_KEY, render

K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate==1.37.0 bundles


def documents(out: Path) -> dict[tuple[str, str], dict]:
    docs: dict[tuple[str, str], dict] = {}
    for path in sorted(out.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "Kustomization":
                continue
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict]:
    out = tmp_path_factory.mktemp("k8s")
    render("configs/default.yaml", out, registry="registry.example/graph", tag="v1")
    return documents(out)


def test_every_document_is_valid_kubernetes(rendered: dict[tuple[str, str], dict]) -> None:
    assert len(rendered) >= 15
    for doc in rendered.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError naming the path


def test_every_node_and_the_entry_is_deployed_with_probes_service_and_requests(
    rendered: dict[tuple[str, str], dict],
) -> None:
    config = load_config("configs/default.yaml")
    names = {f"default-{n}" for n in [*config.generators, "classifier", "entry"]}
    for name in names:
        deployment = rendered[("Deployment", name)]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] in ("/readyz", "/livez"), (name, probe)
        # a node is ready once its model is; the entry stays in its Service while a node is down (it answers 503)
        ready = "/livez" if name == "default-entry" else "/readyz"
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model loading
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        assert container["image"].startswith("registry.example/graph/") and container["image"].endswith(":v1")
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= config.shutdown_grace_s
        service = rendered[("Service", name)]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert rendered[("PodDisruptionBudget", name)]["spec"]["maxUnavailable"] == 1
    for gen in config.generators:
        hpa = rendered[("HorizontalPodAutoscaler", f"default-{gen}")]
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"default-{gen}"
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    queue = rendered[("HorizontalPodAutoscaler", "default-smollm2-queue")]
    assert queue["spec"]["metrics"][0]["pods"]["metric"]["name"] == "graph_node_queued_requests"


def test_the_entry_reaches_every_node_by_its_service(rendered: dict[tuple[str, str], dict]) -> None:
    cluster = yaml.safe_load(rendered[("ConfigMap", "default-config")]["data"]["graph.yaml"])
    assert cluster["generators"]["smollm2"]["url"] == "http://default-smollm2:3000"
    assert cluster["generators"]["gemma3"]["url"] == "http://default-gemma3:3000"
    assert cluster["classifier"]["url"] == "http://default-classifier:3000"
    policy = rendered[("NetworkPolicy", "default-nodes-from-entry")]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "node"
    (rule,) = policy["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "entry"


def test_api_keys_are_a_secret_reference_and_deploy_overrides_apply(tmp_path: Path) -> None:
    data = yaml.safe_load(Path("configs/default.yaml").read_text())
    data["auth"] = {"keys_env": "GRAPH_API_KEYS"}
    data["generators"]["gemma3"]["deploy"] = {"cpu": "3", "memory": "4Gi", "max_replicas": 9}
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    render(config, out)
    docs = documents(out)
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (entry,) = docs[("Deployment", "default-entry")]["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in entry["env"] if e["name"] == "GRAPH_API_KEYS"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "default-api-keys", "key": KEYS_SECRET_KEY}
    assert not any(d["kind"] == "Secret" for d in docs.values())  # never the keys themselves
    (gemma,) = docs[("Deployment", "default-gemma3")]["spec"]["template"]["spec"]["containers"]
    assert gemma["resources"]["requests"] == {"cpu": "3", "memory": "4Gi"}
    assert docs[("HorizontalPodAutoscaler", "default-gemma3")]["spec"]["maxReplicas"] == 9


def test_deploy_bounds_are_checked() -> None:
    from graph.config import parse_config
    from graph.errors import ConfigError

    data = yaml.safe_load(Path("configs/default.yaml").read_text())
    data["generators"]["gemma3"]["deploy"] = {"min_replicas": 5, "max_replicas": 2}
    with pytest.raises(ConfigError, match="deploy.min_replicas: 5 is above max_replicas 2"):
        parse_config(data)
