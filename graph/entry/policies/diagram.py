"""A named graph as a tree the playground draws: each step kind with its branches, nested graphs drawn nested,
generator nodes as leaves; built from the validated config only (GET /graph carries it).

Each child carries the config key that names it under its parent (`order[0]`, `cases.code`, `steps[1].run`)
and `scope`: a regular expression over one segment of a candidate id (graph/entry/policies/steps.py gives each
branch's candidates a prefix: `f0.` for a fallback's first branch, `s1.` for a sequence's second step...),
so a page can tell which branch a streamed candidate belongs to while the request runs."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from graph.entry.policies.config import BestOf, Cascade, Fallback, Guard, Policies, Sequence, Split, Switch
from graph.entry.policies.schemas import Kind

MAX_DEPTH = 16  # start-up refuses cycles; this only bounds a diagram of a very deep (acyclic) config


class DiagramNode(BaseModel):
    """One box of the diagram: a named graph (its kind, its branches) or a generator node (kind `node`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The graph's or the generator node's name.")
    kind: Kind
    key: str | None = Field(default=None, description="The config key naming it under its parent (none: the root).")
    scope: str | None = Field(
        default=None,
        description="Regular expression over the candidate-id segment of this branch under its parent "
        "(none: candidates are told apart by their node, as in best_of and cascade).",
    )
    note: str = Field(default="", description="What its parent says of this branch: its weight, case, template...")
    detail: str = Field(default="", description="What the config says of this graph itself: its rule, gate, order...")
    children: list[DiagramNode] = Field(default_factory=list)


def diagram(policies: Policies, name: str) -> DiagramNode:
    """The tree of named graph `name` (a generator node's name gives a `node` leaf)."""
    return _node(policies, name, None, None, "", 0)


def _node(policies: Policies, name: str, key: str | None, scope: str | None, note: str, depth: int) -> DiagramNode:
    g = policies.graphs.get(name)
    if g is None or depth >= MAX_DEPTH:
        return DiagramNode(name=name, kind="node", key=key, scope=scope, note=note)
    children: list[DiagramNode] = []

    def add(child: str, ckey: str, cscope: str | None, cnote: str = "") -> None:
        children.append(_node(policies, child, ckey, cscope, cnote, depth + 1))

    if isinstance(g, BestOf):
        over_graphs = any(n in policies.graphs for n in g.nodes)
        i = 0
        for entry, k in g.nodes.items():
            # over graphs, entry run j of all entries is candidate prefix b{j}. (steps.best_of_graphs)
            scope_of = "|".join(f"b{j}" for j in range(i, i + k)) if over_graphs else None
            add(entry, f"nodes.{entry}", scope_of, f"×{k}" if k > 1 else "")
            i += k
        detail = "pruned while generating" if g.prune is not None else "every candidate scored"
    elif isinstance(g, Cascade):
        for i, n in enumerate(g.order):
            add(n, f"order[{i}]", None)
        gate = g.gate
        conds = [f"P({gate.label}) ≥ {gate.min_score}"] if gate.label is not None else []
        conds += [f"mean logprob ≥ {gate.min_mean_logprob}"] if gate.min_mean_logprob is not None else []
        conds += ["a valid tool call"] if gate.tool_call else []
        detail = "gate: " + " and ".join(conds)
    elif isinstance(g, Switch):
        for case, target in g.cases.items():
            add(target, f"cases.{case}", re.escape(target), f"{g.by} {case}")
        add(g.default, "default", re.escape(g.default), "no case")
        detail = f"by {g.by}" + (f" ({g.field})" if g.field else "")
    elif isinstance(g, Split):
        total = sum(g.weights.values())
        for target, w in g.weights.items():
            add(target, f"weights.{target}", re.escape(target), f"{w / total:.0%}")
        detail = "sticky per user or key" if g.sticky else "drawn per request"
    elif isinstance(g, Fallback):
        for i, target in enumerate(g.order):
            add(target, f"order[{i}]", f"f{i}", "first choice" if i == 0 else f"if {i} failed")
        detail = f"branch_timeout_ms {g.branch_timeout_ms}" if g.branch_timeout_ms else "in order"
    elif isinstance(g, Sequence):
        for i, step in enumerate(g.steps):
            add(step.run, f"steps[{i}].run", f"s{i}", step.template)
        detail = f"{len(g.steps)} steps"
    else:
        assert isinstance(g, Guard)
        add(g.run, "run", r"a\d+", "checked" if "output" in g.check else "")
        if g.route_to is not None:
            add(g.route_to, "route_to", "r", "on a hit")
        detail = f"checks {' and '.join(g.check)}; on a hit: {g.on_hit}"
    return DiagramNode(name=name, kind=g.policy, key=key, scope=scope, note=note, detail=detail, children=children)
