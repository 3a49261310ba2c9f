"""deploy/grafana/inference-graph.json queries only metrics the nodes export (services/generator.py), per node."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "inference-graph.json"
METRIC = re.compile(r"\b(graph_node_[a-z_]+|bentoml_[a-z_]+)\b")


def exported() -> set[str]:
    """Prometheus names of the generator node's counters (`_total` added by the client) and gauges."""
    from services.generator import ENGINE_COUNTERS, ENGINE_GAUGES

    return {f"graph_node_{k}" for k in ENGINE_COUNTERS} | {f"graph_node_{k}" for k in ENGINE_GAUGES}


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def test_every_queried_metric_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported()
    used = {m for expr in queries(dashboard) for m in METRIC.findall(expr)}
    assert used, "the dashboard queries no metric"
    assert used <= names, f"not exported by services/generator.py: {sorted(used - names)}"
    for gauge in ("graph_node_queued_requests", "graph_node_active_rows", "graph_node_step_ms"):
        assert gauge in used
    assert {"graph_node_generated_tokens_total", "graph_node_rejected_total"} <= used  # tokens/s, 429s


def test_every_panel_is_per_node() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert "by (node)" in target["expr"] and 'node=~"$node"' in target["expr"], panel["title"]
            assert target["legendFormat"] == "{{node}}"
