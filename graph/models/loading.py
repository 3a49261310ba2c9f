"""Model resolution and loading: a ModelRef becomes a directory (or hub id), then a float32 eval model."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from graph.config import ROOT, ClassifierNode, ModelRef, RuntimeConfig
from graph.errors import ConfigError
from graph.models import embedded

log = logging.getLogger(__name__)
Lookup = Callable[[str], str]
T = TypeVar("T")
DEFAULT_EMBEDDED_CACHE = ROOT / "artifacts" / "embedded"
HUB_PROBE_TIMEOUT_S = 3.0


def resolve_model_dir(
    ref: ModelRef,
    *,
    store_lookup: Lookup | None = None,
    embedded_lookup: Lookup | None = None,
    embedded_cache: str | Path | None = None,
) -> str:
    """What to give `from_pretrained`: the hub id as-is, or a local directory that exists.

    store_lookup(tag) -> dir resolves BentoML tags (graph/ never imports bentoml; services pass
    services.store.store_lookup). Embedded models come from embedded_lookup(name) -> dir when given,
    else are converted once into embedded_cache (default artifacts/embedded/).
    """
    if ref.hub:
        return ref.hub
    if ref.path:
        path = Path(ref.path)
        path = path if path.is_absolute() else ROOT / path
        return _checked_dir(path, f"model.path {ref.path!r}", "build or copy the model there first", "model.path")
    if ref.bentoml:
        if store_lookup is None:
            raise ConfigError(
                f"model.bentoml {ref.bentoml!r}: BentoML tags are resolved by the services layer "
                "(pass store_lookup=services.store.store_lookup)",
                field="model.bentoml",
            )
        found = Path(store_lookup(ref.bentoml))
        return _checked_dir(found, f"model.bentoml {ref.bentoml!r}", "re-save it", "model.bentoml")
    name = str(ref.embedded)
    embedded.get_embedded(name)  # unknown name -> ConfigError listing the known ones
    if embedded_lookup is not None:
        found = Path(embedded_lookup(name))
    else:
        found = embedded.prepare_local(name, embedded_cache or DEFAULT_EMBEDDED_CACHE, progress=log.warning)
    return _checked_dir(found, f"model.embedded {name!r}", "run `make prepare`", "model.embedded")


def _checked_dir(path: Path, what: str, fix: str, field: str) -> str:
    if not path.is_dir():
        raise ConfigError(f"{what}: directory {path} does not exist; {fix}", field=field)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{what}: {path} has no config.json, so it is not a transformers model folder", field=field)
    return str(path)


def _hub_error(ref: ModelRef, why: str) -> ConfigError:
    return ConfigError(
        f"model.hub {ref.hub!r}: the Hugging Face hub could not be reached ({why}) and the model is "
        "not in the local cache. Use a model that works offline instead: "
        "model: {embedded: smollm2-135m-instruct} (see graph/models/embedded.py) or model: {path: <dir>}",
        field="model.hub",
    )


def _check_hub(ref: ModelRef) -> None:
    """Fail in milliseconds, not after a minute of retries, when the hub is unreachable."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(str(ref.hub), "config.json", revision=ref.revision), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise _hub_error(ref, "HF_HUB_OFFLINE is set")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # behind a proxy a direct probe proves nothing; let transformers try
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise _hub_error(ref, f"{host}:{port}: {exc}") from None


def load_with(ref: ModelRef, source: str, loader: Callable[..., T], **kwargs: Any) -> T:
    """Call a from_pretrained-like loader, turning its OSErrors into a ConfigError naming the model."""
    if ref.hub:
        _check_hub(ref)
        if ref.revision:
            kwargs["revision"] = ref.revision
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as exc:  # missing files, unknown architecture, bad config
        if ref.hub and "couldn't connect" in str(exc):
            raise _hub_error(ref, str(exc).splitlines()[0]) from None
        raise ConfigError(f"model {ref.describe()}: could not load from {source}: {exc}", field="model") from None


def load_generator_tokenizer(ref: ModelRef, source: str) -> Any:
    """A generator's tokenizer as both backends batch with it: padded on the left, with a pad token
    (its eos token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = load_with(ref, source, AutoTokenizer.from_pretrained)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"model {ref.describe()}: its tokenizer has neither a pad nor an eos token", field="model"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def native_dtype(cpuinfo: str = "/proc/cpuinfo") -> str:
    """ "bfloat16" where the CPU computes it natively (x86 AMX or AVX512-BF16), else "float32"."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "float32"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return "bfloat16" if flags & {"amx_bf16", "avx512_bf16"} else "float32"


def resolve_runtime(
    runtime: RuntimeConfig | None = None, *, name: str = "model", model: ModelRef | None = None
) -> RuntimeConfig:
    """A runtime with nothing left on auto: backend auto (and quantize auto on the torch backend)
    from graph.models.runtimes' table (logged with the reason; `compile: true` is kept), dtype auto
    from native_dtype(). Backend auto may resolve to backend hybrid (both sides named, its crossover
    from the table: `crossover_rows` set)."""
    runtime = runtime or RuntimeConfig()
    updates: dict[str, Any] = {}
    if runtime.backend == "auto" or (runtime.backend == "torch" and runtime.quantize == "auto"):
        from graph.models.runtimes import AUTO_BACKENDS, choose, cpu_description

        key = _table_key(model)
        backends = AUTO_BACKENDS if runtime.backend == "auto" else ("torch",)
        kind, choice = choose(model=key, goal=runtime.optimize, backends=backends)
        log.warning(
            "%s: runtime auto for %s on %s (CPU kind %s): %s -- %s",
            name,
            runtime.optimize,
            cpu_description(),
            kind,
            _describe(choice),
            choice.why,
        )
        if choice.backend == "hybrid":
            assert choice.small is not None and choice.large is not None, "a hybrid choice names both sides"
            return RuntimeConfig(
                backend="hybrid",
                threads=runtime.threads,
                small=RuntimeConfig(**_choice_fields(choice.small, compile=False)),
                large=RuntimeConfig(**_choice_fields(choice.large, compile=runtime.compile)),
                crossover_rows=choice.crossover_rows,
            )
        updates = _choice_fields(choice, compile=runtime.compile)
    elif runtime.dtype == "auto":
        updates["dtype"] = "float32" if runtime.quantize == "int8" else native_dtype()
    return runtime.model_copy(update=updates) if updates else runtime


def _choice_fields(choice: Any, *, compile: bool) -> dict[str, Any]:
    """The RuntimeConfig fields of one (non-hybrid) choice of graph.models.runtimes' table; `compile`:
    the configured compile flag (kept on torch, where the table may also ask for it)."""
    if choice.backend == "llamacpp":
        return dict(backend="llamacpp", compile=False)
    if choice.backend == "onnx":
        return dict(
            backend="onnx",
            compile=False,
            onnx_precision=choice.onnx_precision,
            onnx_accuracy_level=choice.onnx_accuracy_level,
        )
    return dict(backend="torch", dtype=choice.dtype, quantize=choice.quantize, compile=compile or choice.compile)


def _describe(choice: Any) -> str:
    """A table choice as the start-up log names it."""
    if choice.backend == "hybrid":
        return (
            f"backend hybrid (small: {_describe(choice.small)}; large: {_describe(choice.large)}; "
            f"crossover {choice.crossover_rows} rows)"
        )
    if choice.backend == "llamacpp":
        return "backend llamacpp (the model's GGUF file on llama.cpp)"
    if choice.backend == "onnx":
        return f"backend onnx, precision {choice.onnx_precision}, accuracy_level {choice.onnx_accuracy_level}"
    return f"backend torch, dtype {choice.dtype}, quantize {choice.quantize}, compile {choice.compile}"


def _table_key(model: ModelRef | None) -> str:
    """The name graph.models.runtimes' table admits models by: an embedded name or a store tag's name."""
    return "" if model is None else (model.ref if model.kind == "embedded" else model.ref.split(":")[0])


def onnx_variants(runtime: RuntimeConfig | None, model: ModelRef) -> list[tuple[str, int | None]]:
    """(onnx_precision, onnx_accuracy_level) of each ONNX conversion a node may load, on any CPU: its
    own with backend onnx; with backend auto, what the runtime table picks on each CPU kind where it
    picks onnx (so a Bento built on one CPU kind carries what another kind's hosts load); none on torch."""
    runtime = runtime or RuntimeConfig()
    if runtime.backend == "hybrid":  # what either side loads
        return list(dict.fromkeys(v for side in (runtime.small, runtime.large) for v in onnx_variants(side, model)))
    if runtime.backend == "onnx":
        return [(runtime.onnx_precision, runtime.onnx_accuracy_level)]
    if runtime.backend != "auto":
        return []
    from graph.models.runtimes import AUTO_BACKENDS, TABLE, choose_for_kind

    choices = [choose_for_kind(kind, _table_key(model), runtime.optimize, AUTO_BACKENDS) for kind in TABLE]
    sides = [s for c in choices for s in ((c.small, c.large) if c.backend == "hybrid" else (c,)) if s is not None]
    return list(dict.fromkeys((c.onnx_precision, c.onnx_accuracy_level) for c in sides if c.backend == "onnx"))


def load_causal_lm(ref: ModelRef, runtime: RuntimeConfig | None = None, **lookups: Any) -> tuple[Any, Any]:
    """(model, tokenizer): eval mode, left padding, pad token set (eos when it has none).

    runtime (validated by graph.config.RuntimeConfig; float32, no quantization if None; auto values
    resolved by resolve_runtime): dtype float32, bfloat16 (half the memory traffic per step; fast on
    CPUs with AVX512-BF16/AMX, slow elsewhere; logits differ slightly); quantize int8: dynamic int8
    quantization of the Linear layers (float32 only; slightly different logits); int8_weight /
    int4_weight: weight-only quantization (graph.models.quantize). `compile` is the engine's business.
    lookups: store_lookup, embedded_lookup, embedded_cache as in resolve_model_dir.
    """
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model_dir(ref, **lookups)
    tokenizer = load_generator_tokenizer(ref, source)
    runtime = resolve_runtime(runtime, name=ref.describe(), model=ref)
    model = load_with(ref, source, AutoModelForCausalLM.from_pretrained, dtype=getattr(torch, runtime.dtype)).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if runtime.quantize == "int8":
        model = quantize_int8(model)
    elif runtime.quantize in ("int8_weight", "int4_weight"):
        from graph.models.quantize import quantize_weights

        model = quantize_weights(model, "int8" if runtime.quantize == "int8_weight" else "int4", runtime.group_size)
    return model, tokenizer


def load_classifier(node: ClassifierNode, **lookups: Any):
    """The node's classifier (graph.models.classifier), loaded as its `mode` says."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from graph.models.classifier import SequenceClassifier, ZeroShotEmbeddingClassifier

    ref = node.model
    source = resolve_model_dir(ref, **lookups)
    if node.mode == "sequence_classification":
        return load_with(
            ref,
            source,
            SequenceClassifier.from_pretrained,
            score_label=node.score_label,
            max_batch_size=node.max_batch_size,
            max_length=node.max_length,
        )
    tokenizer = load_with(ref, source, AutoTokenizer.from_pretrained)
    model = load_with(ref, source, AutoModel.from_pretrained, dtype=torch.float32)
    return ZeroShotEmbeddingClassifier(
        model,
        tokenizer,
        labels=dict(node.labels),
        score_label=node.score_label,
        temperature=node.temperature,
        max_batch_size=node.max_batch_size,
        max_length=node.max_length,
    )


def quantize_int8(model: Any) -> Any:
    """int8 dynamic quantization of every nn.Linear (`torch.ao.quantization.quantize_dynamic`).

    Faster on CPU, but activations are quantized with one scale per call, i.e. per batch: with it,
    a row's text depends slightly on the rows it shares a batch with, and quality drops somewhat.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
