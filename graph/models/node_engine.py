"""A generator node's engine from its config: the model loaded for the node's runtime, the engine around it.

Here, not in graph/engine/, so the engine never imports the model loaders (graph/models/ builds runners
on graph/engine/runners/: the dependency runs one way).
"""

from __future__ import annotations

from typing import Any

from graph.engine.generation import GenerationEngine
from graph.engine.spec.verify import Speculation


def engine_for_node(name: str, node: Any, *, threads: int | None = None, **lookups: Any) -> GenerationEngine:
    """The engine of generator node `name` (a graph.config.GeneratorNode), model loaded, not
    started. `lookups` go to graph.models.loading.load_causal_lm (store_lookup, embedded_lookup)."""
    from graph.models.loading import load_causal_lm, resolve_runtime

    runtime = resolve_runtime(node.runtime, name=name, model=node.model)
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
    engine = GenerationEngine(
        model,
        tokenizer,
        name=name,
        max_batch_size=sched.max_batch_size,
        max_queue=sched.max_queue,
        max_prompt_tokens=node.max_prompt_tokens,
        threads=threads,
        chat_template=node.chat_template,
        max_request_share=sched.max_request_share,
        max_wait_s=sched.max_wait_s,
        max_kv_mb=sched.max_kv_mb,
        prefix_cache_mb=sched.prefix_cache_mb,
        compile=runtime.compile,
        speculation=None
        if spec is None
        else Speculation(spec.ngram, spec.min_ngram, spec.draft_tokens, spec.max_rows, spec.adaptive),
    )
    if runtime.backend == "torch":
        quant = "" if runtime.quantize == "none" else f", {runtime.quantize}"
        engine.runtime_name = f"torch {runtime.dtype}{quant}" + (", compiled" if runtime.compile else "")
    return engine
