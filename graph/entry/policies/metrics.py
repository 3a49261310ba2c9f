"""Counters per named graph and branch (what each step chose, served, failed or refused), kept in-process and
handed to a sink: the entry service turns them into Prometheus counters (`graph_branch_total`), tests read them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

Key = tuple[str, str, str, str]  # graph, kind, branch, outcome
Sink = Callable[[str, str, str, str], None]

counts: Counter[Key] = Counter()
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Also send every count to `sink(graph, kind, branch, outcome)` (services/graph.py: Prometheus)."""
    _sinks.append(sink)


def count(graph: str, kind: str, branch: str, outcome: str) -> None:
    counts[(graph, kind, branch, outcome)] += 1
    for sink in _sinks:
        sink(graph, kind, branch, outcome)
