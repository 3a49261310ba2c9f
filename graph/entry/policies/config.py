"""The config of named graphs: each a policy (best_of, cascade) over the config's nodes, or a step kind (switch,
split, fallback, sequence, guard) over branches that are nodes or other named graphs; checked at start-up."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Protocol

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
    """k candidates spread over nodes (distinct seeds); one classifier call scores them all; the best wins.
    An entry may name another graph (a sequence, a cascade...): each of its k runs is one candidate."""

    policy: Literal["best_of"]
    nodes: dict[str, int] = Field(
        min_length=1,
        description="Candidates per generator node (or named graph), e.g. {smollm2: 2, gemma3: 1}.",
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


BRANCH = "a generator node or another named graph"
StreamMode = Literal["tokens", "decided", "held"]
_HOLD = {"tokens": 0, "decided": 1, "held": 2}  # how much of a stream a mode holds back


class ZeroShot(_Strict):
    """Zero-shot labels of a switch or guard: label -> description, compared with the text by the classifier
    node's sentence embeddings (one classifier call per check; the descriptions are embedded once)."""

    labels: dict[str, str] = Field(
        min_length=2, description="label -> a sentence describing it, e.g. {code: 'A question about code.'}"
    )
    temperature: float = Field(default=0.05, gt=0.0, le=10.0, description="Softmax temperature over cosines.")

    @model_validator(mode="after")
    def _described(self) -> ZeroShot:
        for label, text in self.labels.items():
            if not text.strip():
                raise ValueError(f"labels.{label}: give a description (the text it is compared with)")
        return self


SwitchBy = Literal["label", "key", "user", "metadata", "prompt_chars", "json_schema"]


class Switch(_Strict):
    """One branch per request, chosen by a rule over the request; `default` when no case matches.

    by: label: the prompt's zero-shot label (cases: label -> branch; min_score below which `default` serves);
    key / user: the caller's API key id or the request's `user` (cases: value -> branch);
    metadata: the request's metadata[`field`] (cases: value -> branch);
    prompt_chars: cases: "N" -> branch, the first N (ascending) the prompt's length is at most;
    json_schema: cases `yes` / `no`: whether the request asked for structured output (response_format)."""

    policy: Literal["switch"]
    by: SwitchBy = Field(description="What the switch routes by (`on` would read as true in YAML).")
    cases: dict[str, str] = Field(min_length=1, description=f"value -> branch ({BRANCH}).")
    default: str = Field(description=f"Branch when no case matches ({BRANCH}).")
    zero_shot: ZeroShot | None = Field(default=None, description="by: label: the labels the prompt is sorted into.")
    min_score: float = Field(default=0.0, ge=0.0, le=1.0, description="by: label: below this, `default` serves.")
    field: str | None = Field(default=None, description="by: metadata: the metadata key routed on.")

    @model_validator(mode="after")
    def _rule(self) -> Switch:
        if self.by == "label":
            if self.zero_shot is None:
                raise ValueError("zero_shot: by: label needs zero_shot.labels (label -> description)")
            for case in self.cases:
                if case not in self.zero_shot.labels:
                    raise ValueError(f"cases.{case}: not a label of zero_shot.labels {sorted(self.zero_shot.labels)}")
        elif self.zero_shot is not None:
            raise ValueError(f"zero_shot: only for by: label (this switch is by: {self.by})")
        if (self.by == "metadata") != (self.field is not None):
            raise ValueError("field: give it with by: metadata (the metadata key), and only then")
        if self.by == "prompt_chars":
            for case in self.cases:
                if not case.isdigit() or int(case) < 1:
                    raise ValueError(f"cases.{case}: by: prompt_chars needs a whole number of characters >= 1")
        if self.by == "json_schema":
            for case in self.cases:
                if case not in ("yes", "no"):
                    raise ValueError(f"cases.{case}: by: json_schema has cases yes and no")
        return self

    def branches(self) -> dict[str, str]:
        return {**{f"cases.{k}": v for k, v in self.cases.items()}, "default": self.default}


class Split(_Strict):
    """Weighted traffic over branches (A/B, canary): a request's branch is drawn by weight, sticky per caller
    (the `user` field, else the API key id; a request with neither draws afresh)."""

    policy: Literal["split"]
    weights: dict[str, float] = Field(min_length=1, description=f"branch ({BRANCH}) -> weight (> 0).")
    sticky: bool = Field(default=True, description="One user (or key) stays on one branch; false = draw each time.")
    salt: str = Field(default="", description="Changes the sticky assignment (a new experiment).")

    @model_validator(mode="after")
    def _weights(self) -> Split:
        for branch, w in self.weights.items():
            if not (w > 0 and math.isfinite(w)):
                raise ValueError(f"weights.{branch}: {w}; give a weight above 0")
        return self

    def branches(self) -> dict[str, str]:
        return {f"weights.{b}": b for b in self.weights}


class Fallback(_Strict):
    """Branches in order: the first that answers serves. A branch fails over on a node failure or
    unavailability, an overload (429/503), its time share spent, a guard's refusal, or an answer without the
    valid tool call the request's tool_choice requires."""

    policy: Literal["fallback"]
    order: list[str] = Field(min_length=2, max_length=8, description=f"Branches ({BRANCH}), first preferred.")
    branch_timeout_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="A branch that has not answered in this long fails over."
    )

    def branches(self) -> dict[str, str]:
        return {f"order[{i}]": b for i, b in enumerate(self.order)}


class Step(_Strict):
    """One step of a sequence: its branch and the template of its prompt."""

    run: str = Field(description=f"The step ({BRANCH}).")
    template: str = Field(
        default="{previous}",
        description="This step's prompt: {prompt} = the request's prompt, {previous} = the previous step's answer.",
    )


class Sequence(_Strict):
    """Steps in order, each step's answer into the next step's prompt through its template (draft then refine,
    answer then translate). A stream streams the last step; earlier steps are reported as step events."""

    policy: Literal["sequence"]
    steps: list[Step] = Field(min_length=2, max_length=8)

    @model_validator(mode="after")
    def _templates(self) -> Sequence:
        if "{prompt}" not in self.steps[0].template and "{previous}" not in self.steps[0].template:
            raise ValueError("steps[0].template: the first step's template must use {prompt}")
        for i, s in enumerate(self.steps[1:], 1):
            if "{previous}" not in s.template and "{prompt}" not in s.template:
                raise ValueError(f"steps[{i}].template: use {{previous}} (the step before's answer) or {{prompt}}")
        return self

    def branches(self) -> dict[str, str]:
        return {f"steps[{i}].run": s.run for i, s in enumerate(self.steps)}


class Guard(_Strict):
    """The classifier checks the prompt and/or the answer against zero-shot labels and thresholds; on a hit:
    refuse (422, kind refused), regenerate (new seeds, up to `retries` times, then refuse), or route to
    another branch."""

    policy: Literal["guard"]
    run: str = Field(description=f"The guarded branch ({BRANCH}).")
    check: list[Literal["prompt", "output"]] = Field(default=["output"], min_length=1)
    zero_shot: ZeroShot
    block: dict[str, float] = Field(
        min_length=1, description="label -> threshold: a hit when the label's probability is at least this."
    )
    on_hit: Literal["refuse", "regenerate", "route"] = "refuse"
    retries: int = Field(default=2, ge=1, le=8, description="on_hit: regenerate: new attempts before refusing.")
    route_to: str | None = Field(default=None, description=f"on_hit: route: the branch that serves ({BRANCH}).")

    @model_validator(mode="after")
    def _rule(self) -> Guard:
        for label, t in self.block.items():
            if label not in self.zero_shot.labels:
                raise ValueError(f"block.{label}: not a label of zero_shot.labels {sorted(self.zero_shot.labels)}")
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"block.{label}: {t}; a probability threshold in 0..1")
        if (self.on_hit == "route") != (self.route_to is not None):
            raise ValueError("route_to: give it with on_hit: route, and only then")
        if len(set(self.check)) != len(self.check):
            raise ValueError(f"check: {self.check} names a side twice")
        return self

    def branches(self) -> dict[str, str]:
        return {"run": self.run, **({"route_to": self.route_to} if self.route_to is not None else {})}


NamedGraph = Annotated[BestOf | Cascade | Switch | Split | Fallback | Sequence | Guard, Field(discriminator="policy")]
Leaf = BestOf | Cascade
Composite = Switch | Split | Fallback | Sequence | Guard


class Policies(_Strict):
    """Named graphs over the config's nodes, and the one a request gets when it names none."""

    default: str = Field(
        default=ALL, description="Graph used when a request names none; `all` = every node, all returned."
    )
    graphs: dict[str, NamedGraph] = Field(default_factory=dict, description="name -> policy and its settings.")
    stream_tokens: list[str] = Field(
        default_factory=list,
        description="Graphs whose answer must stream token by token on every face's stream (their clients need "
        "it); start-up refuses one whose steps hold the answer back, naming the key that does.",
    )

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

    def nodes_of(self, name: str) -> list[str]:
        """Every generator node graph `name` may run, through its branches (in config order, once each)."""
        out: list[str] = []
        stack, seen = [name], set()
        while stack:
            item = stack.pop(0)
            if item in seen:
                continue
            seen.add(item)
            g = self.graphs.get(item)
            if g is None:
                out.append(item)  # a node branch
            elif isinstance(g, Cascade):
                out.extend(n for n in g.node_names() if n not in out)
            elif isinstance(g, BestOf):
                stack.extend(g.node_names())
            else:
                stack.extend(g.branches().values())
        return list(dict.fromkeys(out))

    def check_nodes(self, generators: set[str], labels: set[str] | None) -> None:
        """Every node a graph names is a generator of the config; every branch a node or a graph; no graph
        reaches itself; a gate's label is a classifier label (when the labels are known from the config:
        zero_shot). ValueError names the key."""
        for name, g in self.graphs.items():
            if isinstance(g, BestOf | Cascade):
                key = "nodes" if isinstance(g, BestOf) else "order"
                over_graphs = isinstance(g, BestOf) and any(n in self.graphs for n in g.nodes)
                if over_graphs and isinstance(g, BestOf) and g.prune is not None:
                    raise ValueError(f"policies.graphs.{name}.prune: pruning runs over nodes only, not over graphs")
                for node in g.node_names():
                    if node not in generators and not (over_graphs and node in self.graphs):
                        raise ValueError(
                            f"policies.graphs.{name}.{key}: unknown node {node!r}; generators: {sorted(generators)}"
                        )
            else:
                for key, branch in g.branches().items():
                    if branch not in generators and branch not in self.graphs:
                        raise ValueError(
                            f"policies.graphs.{name}.{key}: unknown branch {branch!r}; generators: "
                            f"{sorted(generators)}, graphs: {sorted(self.graphs)}"
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
        for name in self.graphs:
            cycle = self._cycle(name, [])
            if cycle:
                raise ValueError(f"policies.graphs.{name}: a cycle: {' -> '.join(cycle)}; a graph cannot reach itself")
        for i, name in enumerate(self.stream_tokens):
            if name != ALL and name not in self.graphs:
                raise ValueError(f"policies.stream_tokens[{i}]: unknown graph {name!r}; graphs: {self.names()}")
            mode, key, why = self.streaming(name)
            if mode != "tokens":
                raise ValueError(
                    f"policies.stream_tokens[{i}]: graph {name!r} cannot stream its answer token by token: {key}: "
                    f"{why}; take it out of stream_tokens, or change that step"
                )

    def _cycle(self, name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        g = self.graphs.get(name)
        if g is None or isinstance(g, Cascade):
            return None
        for branch in g.node_names() if isinstance(g, BestOf) else g.branches().values():
            found = self._cycle(branch, [*path, name])
            if found:
                return found
        return None

    def streaming(self, name: str) -> tuple[StreamMode, str, str]:
        """How graph `name`'s answer reaches a stream (the start-up check and the faces read this), the config
        key that decides it and why. The kinds, over the modes tokens < decided < held:

        - a node: `tokens`, as it generates them;
        - best_of, cascade: `decided`: the answer is known once the candidates are scored (a cascade: once
          a stage passes its gate), and comes at once then; their candidates stream as progress;
        - fallback: `decided` at least: a branch may fail halfway and another one serve;
        - switch, split, a guard that checks only the prompt: the most any branch holds back (one branch runs,
          and which one is known before it starts);
        - sequence: its last step's (the earlier steps are progress, as step events);
        - guard checking the output: `held`: nothing of its branch streams before the check has passed."""
        g = self.graphs.get(name)
        if g is None:  # a node (or `all`: every node)
            return "tokens", name, "a node streams as it generates"
        key = f"policies.graphs.{name}"
        if isinstance(g, Guard) and "output" in g.check:
            return "held", f"{key}.check", "a guard holds the answer back until it has checked the output"
        if isinstance(g, Sequence):
            return self.streaming(g.steps[-1].run)
        own: tuple[StreamMode, str, str] = ("tokens", key, "")
        if isinstance(g, BestOf):
            own = ("decided", f"{key}.policy", "best_of answers once every candidate is scored")
        elif isinstance(g, Cascade):
            return "decided", f"{key}.gate", "a cascade answers once a stage passes its gate"
        elif isinstance(g, Fallback):
            own = ("decided", f"{key}.order", "a fallback's branch may fail halfway and the next one serve")
        for branch in g.node_names() if isinstance(g, BestOf) else g.branches().values():
            if branch in self.graphs:
                sub = self.streaming(branch)
                if _HOLD[sub[0]] > _HOLD[own[0]]:
                    own = sub
        return own

    def holds_output(self, name: str) -> str | None:
        """The first guard on output graph `name` runs through (its answer's tokens are held back until the
        guard has checked them: it cannot stream them as generated), or None."""
        g = self.graphs.get(name)
        if g is None or isinstance(g, Cascade):
            return None
        if isinstance(g, Guard) and "output" in g.check:
            return name
        for branch in g.node_names() if isinstance(g, BestOf) else g.branches().values():
            found = self.holds_output(branch)
            if found:
                return found
        return None


def is_unbounded(margin: float) -> bool:
    return math.isinf(margin)


class WithPolicies(Protocol):
    """What the policies read of a graph config (graph.config.GraphConfig is one): the policies depend on
    this, not on graph.config, which imports this module."""

    @property
    def policies(self) -> Policies: ...
