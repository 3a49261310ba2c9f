"""The graph's shape as the playground draws it: nodes, their models and limits, and the edges between them.

Built from the validated `GraphConfig` only (no node is called): what `GET /graph` answers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from graph.config import GraphConfig
from graph.entry.policies.config import BestOf, Cascade
from graph.entry.policies.diagram import DiagramNode, diagram
from graph.entry.policies.schemas import Kind
from graph.params import GenerationParams

CLASSIFIER = "classifier"  # the scoring node's name in the graph (also its service name)
PROMPT = "prompt"  # the request entering the graph
OUTPUT = "output"  # the scored completions leaving it


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorInfo(_Frozen):
    """One text-generator node as the config declares it."""

    name: str = Field(description="Node name (the `model` of requests and stream events).")
    model: str = Field(description="Where its weights come from, e.g. `path:artifacts/tiny/causal_lm`.")
    remote_url: str | None = Field(
        default=None, description="Served by another Bento at this URL (else a local worker)."
    )
    chat_template: bool = Field(description="Prompts go through the tokenizer's chat template.")
    defaults: GenerationParams = Field(description="The node's generation defaults; a request overrides them.")
    max_new_tokens_limit: int = Field(description="Most max_new_tokens a request may ask of this node.")
    max_batch_size: int = Field(description="Rows decoded together at most.")
    max_queue: int = Field(description="Requests waiting beyond free batch rows before 429.")


class ClassifierInfo(_Frozen):
    """The scoring node."""

    name: str = CLASSIFIER
    model: str
    remote_url: str | None = None
    mode: Literal["sequence_classification", "zero_shot"]
    labels: list[str] = Field(description="zero_shot labels (empty: the fine-tuned head's own labels).")
    score_label: str = Field(description="The label whose probability is a completion's `score`.")


class Edge(_Frozen):
    """Data flowing from one node to another (`prompt` and `output` are the request's two ends)."""

    source: str
    target: str


class NamedGraphInfo(_Frozen):
    """A named graph of the config's policies (a request picks it with `graph`)."""

    name: str
    policy: Kind
    nodes: list[str] = Field(
        description="best_of: one entry per candidate; cascade: the stages in order; others: every node they may run."
    )
    branches: dict[str, str] = Field(
        default_factory=dict, description="A composite (switch, split, ...): its config key -> branch (node or graph)."
    )
    diagram: DiagramNode = Field(description="The graph as a tree, nested graphs nested (the playground draws it).")


class GraphInfo(_Frozen):
    """The whole graph: every generator runs the prompt at once, the classifier scores every completion."""

    name: str = Field(description="The config's name.")
    generators: list[GeneratorInfo]
    classifier: ClassifierInfo
    edges: list[Edge]
    graphs: list[NamedGraphInfo] = Field(default_factory=list, description="Named graphs (every kind).")
    refresh_ms: int = Field(description="How often a page should poll the nodes' state (config playground.refresh_ms).")


def describe(config: GraphConfig) -> GraphInfo:
    """The graph of `config`, in the config's node order."""
    gens = [
        GeneratorInfo(
            name=name,
            model=node.model.describe(),
            remote_url=node.url,
            chat_template=node.chat_template,
            defaults=node.defaults,
            max_new_tokens_limit=node.max_new_tokens_limit,
            max_batch_size=node.scheduler.max_batch_size,
            max_queue=node.scheduler.max_queue,
        )
        for name, node in config.generators.items()
    ]
    c = config.classifier
    classifier = ClassifierInfo(
        model=c.model.describe(),
        remote_url=c.url,
        mode=c.mode,
        labels=list(c.labels),
        score_label=c.score_label,
    )
    edges = [Edge(source=PROMPT, target=g.name) for g in gens]
    edges += [Edge(source=g.name, target=CLASSIFIER) for g in gens]
    edges.append(Edge(source=CLASSIFIER, target=OUTPUT))
    graphs = [
        NamedGraphInfo(
            name=name,
            policy=g.policy,
            nodes=[n for n, k in g.nodes.items() for _ in range(k)]
            if isinstance(g, BestOf)
            else list(g.order)
            if isinstance(g, Cascade)
            else config.policies.nodes_of(name),
            branches={} if isinstance(g, BestOf | Cascade) else g.branches(),
            diagram=diagram(config.policies, name),
        )
        for name, g in config.policies.graphs.items()
    ]
    return GraphInfo(
        name=config.name,
        generators=gens,
        classifier=classifier,
        edges=edges,
        graphs=graphs,
        refresh_ms=config.playground.refresh_ms,
    )
