"""The config of named graphs: each a policy (best_of, cascade) over the config's nodes, validated at start-up."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ALL = "all"  # the built-in graph: every generator answers, every completion is scored, all returned
GRAPH_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prune(_Strict):
    """Pruning while generating: every `every_tokens` tokens the classifier scores the text so far of
    every live candidate in one call; a candidate trailing the leader by more than `margin` stops."""

    every_tokens: int = Field(default=8, ge=1, le=4096, description="Tokens between pruning rounds.")
    margin: float = Field(
        default=0.1, ge=0.0, description="Score gap to the leader beyond which a candidate is cancelled; .inf = never."
    )


class BestOf(_Strict):
    """k candidates spread over nodes (distinct seeds); one classifier call scores them all; the best wins."""

    policy: Literal["best_of"]
    nodes: dict[str, int] = Field(
        min_length=1, description="Candidates per generator node, e.g. {smollm2: 2, gemma3: 1}."
    )
    return_candidates: bool = Field(
        default=True, description="Return every candidate with its score, not only the answer."
    )
    prune: Prune | None = Field(default=None, description="Prune trailing candidates while generating; none = off.")

    @model_validator(mode="after")
    def _counts(self) -> BestOf:
        for node, k in self.nodes.items():
            if not 1 <= k <= 16:
                raise ValueError(f"nodes.{node}: {k} candidates; give 1 to 16")
        if sum(self.nodes.values()) > 32:
            raise ValueError(f"nodes: {sum(self.nodes.values())} candidates in all; at most 32")
        return self

    def node_names(self) -> list[str]:
        return list(self.nodes)


class Gate(_Strict):
    """When a cascade stage's completion is good enough; every condition given must hold."""

    label: str | None = Field(default=None, description="Classifier label whose probability is gated (with min_score).")
    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Pass when the label's probability >= this."
    )
    min_mean_logprob: float | None = Field(
        default=None, le=0.0, description="Pass when the completion's mean token log-probability >= this."
    )
    tool_call: bool = Field(
        default=False,
        description="Pass only when a request with tools got a finished, valid tool call (ignored without tools).",
    )

    @model_validator(mode="after")
    def _some_condition(self) -> Gate:
        if self.min_score is None and self.min_mean_logprob is None and not self.tool_call:
            raise ValueError("gate: give min_score (with label), min_mean_logprob or tool_call: true")
        if (self.label is None) != (self.min_score is None):
            raise ValueError("gate: label and min_score go together")
        return self


class Cascade(_Strict):
    """Nodes in order; the first completion whose gate passes is the answer, else the best of all."""

    policy: Literal["cascade"]
    order: list[str] = Field(min_length=1, max_length=16, description="Generator nodes, cheapest first.")
    gate: Gate

    @model_validator(mode="after")
    def _unique(self) -> Cascade:
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"order: a node appears twice in {self.order}")
        return self

    def node_names(self) -> list[str]:
        return list(self.order)


NamedGraph = Annotated[BestOf | Cascade, Field(discriminator="policy")]


class Policies(_Strict):
    """Named graphs over the config's nodes, and the one a request gets when it names none."""

    default: str = Field(
        default=ALL, description="Graph used when a request names none; `all` = every node, all returned."
    )
    graphs: dict[str, NamedGraph] = Field(default_factory=dict, description="name -> policy and its settings.")

    @model_validator(mode="after")
    def _names(self) -> Policies:
        for name in self.graphs:
            if name == ALL:
                raise ValueError(f"graphs.{ALL}: `{ALL}` is the built-in graph; pick another name")
            if not GRAPH_NAME.match(name):
                raise ValueError(f"graphs.{name}: graph names must match {GRAPH_NAME.pattern}")
        if self.default not in self.names():
            raise ValueError(f"default: unknown graph {self.default!r}; graphs: {self.names()}")
        return self

    def names(self) -> list[str]:
        """Every graph a request may name: `all`, then the config's (the OpenAI face lists `graph:<name>`)."""
        return [ALL, *self.graphs]

    def sampling(self) -> list[str]:
        """Graphs that run several candidates on one node (a request may not make them greedy)."""
        return [n for n, g in self.graphs.items() if isinstance(g, BestOf) and max(g.nodes.values()) > 1]

    def check_nodes(self, generators: set[str], labels: set[str] | None) -> None:
        """Every node a graph names is a generator of the config; a gate's label is a classifier label
        (when the labels are known from the config: zero_shot). ValueError names the key."""
        for name, g in self.graphs.items():
            key = "nodes" if isinstance(g, BestOf) else "order"
            for node in g.node_names():
                if node not in generators:
                    raise ValueError(
                        f"policies.graphs.{name}.{key}: unknown node {node!r}; generators: {sorted(generators)}"
                    )
            if (
                isinstance(g, Cascade)
                and g.gate.label is not None
                and labels is not None
                and g.gate.label not in labels
            ):
                raise ValueError(
                    f"policies.graphs.{name}.gate.label: {g.gate.label!r} is not a classifier label {sorted(labels)}"
                )


def is_unbounded(margin: float) -> bool:
    return math.isinf(margin)
