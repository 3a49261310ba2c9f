"""Kubernetes manifests from a graph config: per node a Deployment, Service, PDB (and HPA); the entry wired by URL.

    python -m graph.entry.k8s --config configs/default.yaml --out artifacts/k8s/default    (make k8s CONFIG=default)

Plain YAML and a kustomization.yaml, rendered with no cluster and no network. Each node runs its own
Bento (bentofile.node.yaml, built with `--arg config=configs/NAME.yaml --arg node=NODE`), the entry runs
`make bento`'s Bento; the graph config travels as a ConfigMap mounted over the Bento's own copy of
configs/NAME.yaml, with every node's `url:` set to its Service, so one file serves both sides (a node
ignores its own `url:`). docs/kubernetes.md shows build, push, render, apply, scale and observe.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from graph.config import CONFIG_DIR, DeployConfig, GraphConfig, load_config, parse_config

PORT = 3000  # bentoml serve's port in a Bento image
BENTO_SRC = "/home/bentoml/bento/src"  # where a Bento image keeps the project (the serve process's cwd)
KEYS_DIR = "/etc/graph-keys"  # auth.keys_file: the Secret is mounted here
KEYS_SECRET_KEY = "keys"  # the Secret's key holding the API keys
# Measured defaults per role (README "Soak", configs/default.yaml on jemalloc): generator worker RSS peaks
# 1.6 GB (gemma3; smollm2 idle 0.74 GB + its 1.08 GB KV buffer), the classifier 0.62 GB, the entry 0.16 GB.
ROLE_DEFAULTS: dict[str, DeployConfig] = {
    "generator": DeployConfig(
        cpu="2",
        memory="2Gi",
        memory_limit="3Gi",
        min_replicas=1,
        max_replicas=4,
        target_cpu_utilization=70,
        startup_s=600,
    ),
    "classifier": DeployConfig(
        cpu="1",
        memory="1Gi",
        memory_limit="1536Mi",
        min_replicas=1,
        max_replicas=2,
        target_cpu_utilization=70,
        startup_s=300,
    ),
    "entry": DeployConfig(
        cpu="500m",
        memory="256Mi",
        memory_limit="512Mi",
        min_replicas=1,
        max_replicas=1,
        target_cpu_utilization=70,
        startup_s=120,
    ),
}


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors, multi-line strings (the ConfigMap's file) as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


def dns_name(*parts: str) -> str:
    """A Kubernetes object name (RFC 1035 label: lowercase, digits, '-', at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if not name[:1].isalpha():  # a label starts with a letter
        name = f"g-{name}"
    return name[:63].rstrip("-")


def deploy_of(role: str, own: DeployConfig) -> DeployConfig:
    """A node's `deploy:` with the role's measured default in every field it leaves out."""
    given = own.model_dump(exclude_none=True)
    merged = ROLE_DEFAULTS[role].model_copy(update=given)
    if (
        merged.max_replicas is not None
        and merged.min_replicas is not None
        and merged.max_replicas < merged.min_replicas
    ):
        merged = merged.model_copy(update={"max_replicas": merged.min_replicas})
    return merged


def cpu_threads(cpu: str) -> int:
    """torch threads for a pod with this CPU request (a pod sees the host's cores, not its share)."""
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.ceil(cores))


class Renderer:
    """Every manifest of one graph config, as a {file name: [documents]} mapping."""

    def __init__(
        self, config: GraphConfig, data: dict[str, Any], config_file: str, registry: str = "", tag: str = "latest"
    ) -> None:
        self.config, self.data, self.config_file = config, data, config_file
        self.prefix = dns_name(config.name)
        self.registry, self.tag = registry.rstrip("/"), tag

    # ---- names ----------------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        return [*self.config.generators, "classifier"]

    def service(self, node: str) -> str:
        return dns_name(self.prefix, node)

    def url(self, node: str) -> str:
        return f"http://{self.service(node)}:{PORT}"

    def bento(self, node: str | None) -> str:
        """The Bento (and image) name: `make bento`'s inference_graph, or bentofile.node.yaml's per node."""
        return "inference_graph" if node is None else ("classifier" if node == "classifier" else f"generator_{node}")

    def image(self, node: str | None) -> str:
        name = self.bento(node)
        return f"{self.registry}/{name}:{self.tag}" if self.registry else f"{name}:{self.tag}"

    def labels(self, component: str, node: str | None = None) -> dict[str, str]:
        out = {
            "app.kubernetes.io/name": "inference-graph",
            "app.kubernetes.io/instance": self.prefix,
            "app.kubernetes.io/component": component,
        }
        if node is not None:
            out["inference-graph/node"] = node
        return out

    # ---- the graph config -----------------------------------------------------------------------
    def cluster_config(self) -> dict[str, Any]:
        """The config as the cluster reads it: every node at its Service, keys_file at the Secret's mount."""
        data = yaml.safe_load(yaml.safe_dump(self.data, sort_keys=False))
        for name in self.config.generators:
            data["generators"][name]["url"] = self.url(name)
        data["classifier"]["url"] = self.url("classifier")
        if self.config.auth.keys_file:
            data["auth"]["keys_file"] = f"{KEYS_DIR}/{KEYS_SECRET_KEY}"
        parse_config(data, source="the cluster's config")  # still a valid graph config
        return data

    def config_map(self) -> dict[str, Any]:
        text = yaml.dump(self.cluster_config(), Dumper=_Dumper, sort_keys=False)
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": dns_name(self.prefix, "config"), "labels": self.labels("config")},
            "data": {"graph.yaml": text},
        }

    # ---- one workload ---------------------------------------------------------------------------
    def probes(self, startup_s: int, *, entry: bool) -> dict[str, Any]:
        """A node: ready on /readyz (its model loaded), live on /livez, and a start-up probe that gives
        the model its load time before liveness counts. The entry: /livez for all three, since its
        /readyz asks every node: one node down would take the whole graph out of its Service, where
        the entry should answer 503 naming that node and keep serving the others."""

        def get(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
            return {
                "httpGet": {"path": path, "port": "http"},
                "periodSeconds": period,
                "timeoutSeconds": timeout,
                "failureThreshold": failures,
            }

        return {
            "startupProbe": get("/livez" if entry else "/readyz", 5, 3, max(1, startup_s // 5)),
            "livenessProbe": get("/livez", 10, 5, 3),
            "readinessProbe": get("/livez" if entry else "/readyz", 5, 3, 2),
        }

    def workload(self, component: str, node: str | None, deploy: DeployConfig) -> list[dict[str, Any]]:
        """Deployment, Service and PodDisruptionBudget of the entry (node None) or of one node."""
        name = dns_name(self.prefix, "entry") if node is None else self.service(node)
        labels = self.labels(component, node)
        ports = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
        if node is None and self.config.grpc.enabled:
            ports.append({"name": "grpc", "containerPort": self.config.grpc.port, "protocol": "TCP"})
        assert deploy.cpu and deploy.memory and deploy.startup_s and deploy.min_replicas
        resources: dict[str, Any] = {
            "requests": {"cpu": deploy.cpu, "memory": deploy.memory},
            "limits": {"memory": deploy.memory_limit or deploy.memory},
        }
        if deploy.cpu_limit:
            resources["limits"]["cpu"] = deploy.cpu_limit
        env = [
            {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
            {"name": "OMP_NUM_THREADS", "value": str(cpu_threads(deploy.cpu))},
        ]
        mounts: list[dict[str, Any]] = [
            {"name": "graph-config", "mountPath": f"{BENTO_SRC}/{self.config_file}", "subPath": "graph.yaml"},
        ]
        volumes: list[dict[str, Any]] = [
            {"name": "graph-config", "configMap": {"name": dns_name(self.prefix, "config")}},
        ]
        if node is None:
            env.extend(self.key_env())
            if self.config.auth.keys_file:
                mounts.append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
                volumes.append({"name": "api-keys", "secret": {"secretName": self.keys_secret()}})
        checksum = hashlib.sha256(yaml.safe_dump(self.cluster_config()).encode()).hexdigest()[:16]
        container = {
            "name": "bento" if node is None else "node",
            "image": self.image(node),
            "imagePullPolicy": "IfNotPresent",
            "args": ["serve", "--port", str(PORT)],
            "ports": ports,
            "env": env,
            "resources": resources,
            **self.probes(deploy.startup_s, entry=node is None),
            "volumeMounts": mounts,
        }
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": deploy.min_replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(PORT),
                            "prometheus.io/path": "/metrics",
                            "inference-graph/config-sha256": checksum,  # a config change rolls the pods
                        },
                    },
                    "spec": {
                        # the entry's drain (shutdown_grace_s) plus time for the workers to exit
                        "terminationGracePeriodSeconds": self.config.shutdown_grace_s + 10,
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]} for p in ports],
            },
        }
        pdb = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "labels": labels},
            # one pod at a time may be evicted (a drain never blocks, even at one replica)
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        }
        return [deployment, service, pdb]

    def hpa(self, node: str, deploy: DeployConfig) -> dict[str, Any]:
        """CPU-utilisation autoscaler of one node (docs/kubernetes.md: the queue-depth variant)."""
        name = self.service(node)
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "labels": self.labels("node", node)},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": deploy.min_replicas,
                "maxReplicas": deploy.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": deploy.target_cpu_utilization},
                        },
                    }
                ],
                # a new pod loads its model for a minute or more: scale down slowly
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            },
        }

    def queue_depth_hpa(self, node: str, deploy: DeployConfig, per_pod: int = 8) -> dict[str, Any]:
        """Example: scale on the node's waiting requests (graph_node_queued_requests, through a
        Prometheus adapter that serves it as a pods metric). Not in the kustomization."""
        doc = self.hpa(node, deploy)
        doc["metadata"]["name"] = dns_name(self.service(node), "queue")
        doc["spec"]["metrics"] = [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "graph_node_queued_requests"},
                    "target": {"type": "AverageValue", "averageValue": str(per_pod)},
                },
            }
        ]
        return doc

    def keys_secret(self) -> str:
        return dns_name(self.prefix, "api-keys")

    def key_env(self) -> list[dict[str, Any]]:
        """auth.keys_env as a reference to the Secret's key (the keys themselves never appear here)."""
        if not self.config.auth.keys_env:
            return []
        ref = {"secretKeyRef": {"name": self.keys_secret(), "key": KEYS_SECRET_KEY}}
        return [{"name": self.config.auth.keys_env, "valueFrom": ref}]

    def network_policy(self) -> dict[str, Any]:
        """Only the entry's pods reach the nodes' pods."""
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": dns_name(self.prefix, "nodes-from-entry"), "labels": self.labels("network")},
            "spec": {
                "podSelector": {"matchLabels": self.labels("node")},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": self.labels("entry")}}],
                        "ports": [{"protocol": "TCP", "port": PORT}],
                    }
                ],
            },
        }

    # ---- everything -----------------------------------------------------------------------------
    def files(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"configmap.yaml": [self.config_map()]}
        for name, node in self.config.generators.items():
            deploy = deploy_of("generator", node.deploy)
            out[f"node-{dns_name(name)}.yaml"] = [*self.workload("node", name, deploy), self.hpa(name, deploy)]
        deploy = deploy_of("classifier", self.config.classifier.deploy)
        docs = self.workload("node", "classifier", deploy)
        if deploy.max_replicas and deploy.min_replicas and deploy.max_replicas > deploy.min_replicas:
            docs.append(self.hpa("classifier", deploy))
        out["node-classifier.yaml"] = docs
        deploy = deploy_of("entry", self.config.deploy)
        out["entry.yaml"] = self.workload("entry", None, deploy)
        out["networkpolicy.yaml"] = [self.network_policy()]
        return out

    def examples(self) -> dict[str, list[dict[str, Any]]]:
        first = next(iter(self.config.generators))
        deploy = deploy_of("generator", self.config.generators[first].deploy)
        return {"examples/hpa-queue-depth.yaml": [self.queue_depth_hpa(first, deploy)]}

    def kustomization(self, files: list[str]) -> dict[str, Any]:
        images = [self.image(None), *(self.image(n) for n in self.node_names())]
        return {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": files,
            # `kustomize edit set image generator_smollm2=REGISTRY/generator_smollm2:TAG` re-points one
            "images": [{"name": img.rsplit(":", 1)[0], "newTag": self.tag} for img in images],
        }


def render(config_path: str | Path, out: Path, registry: str = "", tag: str = "latest") -> list[Path]:
    """Write every manifest of the config under `out`; the paths written."""
    path = Path(config_path)
    config = load_config(path)
    resolved = path if path.exists() else CONFIG_DIR.parent / path
    data = yaml.safe_load(resolved.read_text())
    # the Bento packs configs/*.yaml: the ConfigMap is mounted over the copy of this file it holds
    resolved = resolved.resolve()
    rel = (
        resolved.relative_to(CONFIG_DIR.parent).as_posix()
        if resolved.is_relative_to(CONFIG_DIR.parent)
        else (f"configs/{resolved.name}")
    )
    renderer = Renderer(config, data, rel, registry=registry, tag=tag)
    files = renderer.files()
    written: list[Path] = []
    for name, docs in {**files, **renderer.examples()}.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dump(docs))
        written.append(target)
    kustomization = out / "kustomization.yaml"
    kustomization.write_text(dump([renderer.kustomization(list(files))]))
    return [*written, kustomization]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graph.entry.k8s", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml", help="graph config (YAML)")
    parser.add_argument("--out", type=Path, help="folder for the manifests")
    parser.add_argument("--registry", default="", help="image registry prefix, e.g. ghcr.io/me (empty: none)")
    parser.add_argument("--tag", default="latest", help="image tag of every Bento image")
    parser.add_argument("--list-nodes", action="store_true", help="print the node names (one a line) and exit")
    args = parser.parse_args(argv)
    if args.list_nodes:
        config = load_config(args.config)
        print("\n".join([*config.generators, "classifier"]))
        return 0
    if args.out is None:
        parser.error("--out is required")
    for path in render(args.config, args.out, args.registry, args.tag):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
