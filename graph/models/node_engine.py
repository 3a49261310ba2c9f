"""A generator node's engine from its config: the model loaded for the node's runtime, the engine around it.

Here, not in graph/engine/, so the engine never imports the model loaders (graph/models/ builds runners
on graph/engine/runners/: the dependency runs one way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graph.config import HYBRID_HOLD_S
from graph.engine.api import NodeEngine
from graph.engine.generation import GenerationEngine, planned_prompt
from graph.engine.hybrid import HybridEngine
from graph.engine.runners.base import Runner
from graph.engine.runners.torch_runner import ModelRunner
from graph.engine.spec.verify import Speculation

if TYPE_CHECKING:
    from graph.engine.runners.pinned_runner import ComputeThread


def engine_for_node(name: str, node: Any, *, threads: int | None = None, **lookups: Any) -> NodeEngine:
    """The engine of generator node `name` (a graph.config.GeneratorNode), model loaded, not
    started. `lookups` go to graph.models.loading.load_causal_lm (store_lookup, embedded_lookup).
    `runtime: {backend: hybrid}`, or `auto` where graph/models/runtimes.py's table picks a hybrid for this CPU
    kind and model, gives a HybridEngine over one engine per side (graph/engine/hybrid.py)."""
    from graph.models.loading import resolve_runtime

    runtime = resolve_runtime(node.runtime, name=name, model=node.model)  # backend auto may resolve to hybrid
    if runtime.backend != "hybrid":
        return _engine(name, node, runtime, threads, **lookups)
    from graph.engine.runners.pinned_runner import ComputeThread
    from graph.memory import default_kv_budget

    sched = node.scheduler
    # The node's memory is split between the sides: the kept prompts half each; the KV budget three quarters to
    # the small side, whose rows share one rectangular buffer (onnx: every row reserves the longest row's span;
    # served, 8 streams beside an 8,000-token prompt on SmolLM2 need 3.3 GB, above half the default budget, and
    # their restarts were refused for KV memory), a quarter to the large side (its rows start at the crossover,
    # short prompts in a burst: 64 rows x 1,000 positions of SmolLM2's bfloat16 KV take 1.4 GB).
    node_kv_mb = sched.max_kv_mb or default_kv_budget() / 2**20
    kv_share = {"small": 0.75, "large": 0.25}
    keep_mb = None if sched.prefix_cache_mb is None else sched.prefix_cache_mb / 2
    # Every forward of both sides runs on one thread with `threads` threads (one OpenMP pool); each side's
    # decode thread keeps its own torch work (sampling) on one thread (graph/engine/runners/pinned_runner.py).
    compute = ComputeThread(threads, name=f"compute-{name}")
    sides = {}
    try:
        for key in ("small", "large"):
            side = resolve_runtime(getattr(runtime, key), name=f"{name}.{key}", model=node.model)
            sides[key] = _engine(
                name,
                node,
                side,
                threads,
                torch_threads=1,
                kv_mb=node_kv_mb * kv_share[key],
                keep_mb=keep_mb,
                compute=compute,
                **lookups,
            )
    except BaseException:
        compute.close()
        raise
    return HybridEngine(
        sides["small"],
        sides["large"],
        name=name,
        crossover_rows=runtime.crossover_rows,
        crossover_source="runtime auto: measured, graph/models/runtimes.py" if node.runtime.backend == "auto" else None,
        max_new_tokens_limit=node.max_new_tokens_limit,
        on_close=compute.close,
        hold_s=HYBRID_HOLD_S if runtime.crossover_hold_s is None else runtime.crossover_hold_s,
    )


def _engine(
    name: str,
    node: Any,
    runtime: Any,
    threads: int | None,
    *,
    torch_threads: int | None = None,
    kv_mb: float | None = None,
    keep_mb: float | None = None,
    compute: ComputeThread | None = None,
    **lookups: Any,
) -> GenerationEngine:
    """One engine on one resolved runtime: `threads` for the backend's kernels, `torch_threads` for the
    engine's own torch work (default: `threads`); `kv_mb`/`keep_mb` override the node's scheduler budgets;
    with `compute`, the runner's forward passes run on that thread."""
    from graph.models.loading import load_causal_lm

    if runtime.backend == "onnx":
        from graph.models.onnx_model import load

        model, tokenizer = load(node.model, runtime, threads=threads, **lookups)
    elif runtime.backend == "llamacpp":
        from graph.models import gguf_model

        model, tokenizer = gguf_model.load(
            node.model,
            runtime,
            threads=threads,
            max_batch_size=node.scheduler.max_batch_size,
            # Positions each row's llama.cpp sequence holds (allocated up front): the node's prompt and
            # completion limits, or 2048 where max_prompt_tokens is unset (prompts are cut to fit).
            max_positions=(node.max_prompt_tokens or 2048 - node.max_new_tokens_limit) + node.max_new_tokens_limit,
            **lookups,
        )
    else:
        lookups.pop("onnx_lookup", None)
        model, tokenizer = load_causal_lm(node.model, runtime, **lookups)
    sched = node.scheduler
    spec = sched.speculative
    if runtime.backend == "onnx" and "speculative" not in sched.model_fields_set:
        # On onnx, speculation is on only when the config asks for it: it changed greedy text on free writing
        # (its multi-position forward rounds differently) and slowed it (docs/performance.md).
        spec = None
    if compute is not None:
        from graph.engine.runners.pinned_runner import PinnedRunner

        if not isinstance(model, Runner):  # a transformers model: the runner GenerationEngine would make
            if runtime.compile:
                from graph.engine.runners.torch_compiled import CompiledRunner

                limit = planned_prompt(node.max_prompt_tokens)
                model = CompiledRunner(model, max_batch_size=sched.max_batch_size, max_length=limit)
            else:
                model = ModelRunner(model)
        model = PinnedRunner(model, compute)
    engine = GenerationEngine(
        model,
        tokenizer,
        name=name,
        max_batch_size=sched.max_batch_size,
        max_queue=sched.max_queue,
        max_prompt_tokens=node.max_prompt_tokens,
        threads=threads if torch_threads is None else torch_threads,
        chat_template=node.chat_template,
        max_request_share=sched.max_request_share,
        max_wait_s=sched.max_wait_s,
        admission_margin=sched.admission_margin,
        max_kv_mb=sched.max_kv_mb if kv_mb is None else kv_mb,
        prefix_cache_mb=sched.prefix_cache_mb if keep_mb is None else keep_mb,
        compile=runtime.compile,
        prefill_step_share=sched.prefill_step_share,
        prefill_lane=sched.prefill_lane,
        speculation=None
        if spec is None
        else Speculation(spec.ngram, spec.min_ngram, spec.draft_tokens, spec.max_rows, spec.adaptive),
    )
    if runtime.backend == "torch":
        quant = "" if runtime.quantize == "none" else f", {runtime.quantize}"
        engine.runtime_name = f"torch {runtime.dtype}{quant}" + (", compiled" if runtime.compile else "")
    return engine
