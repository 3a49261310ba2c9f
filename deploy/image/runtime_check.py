"""Inside the image: for every generator of the Bento's config and every CPU kind of graph/models/runtimes.py's
table, the runtime `backend: auto` picks there (each side of a hybrid), and whether what it loads is in the image
(no conversion, no download at start). Exit code 1 when something a kind needs is missing. tests/image runs it:

    podman run --rm -v $PWD/deploy/image/runtime_check.py:/tmp/runtime_check.py:ro --entrypoint python3.11 \\
        localhost/inference_graph:latest /tmp/runtime_check.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path


def safetensors_dtypes(path: Path) -> list[str]:
    """The tensor dtypes a .safetensors file holds (from its JSON header)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sorted({v["dtype"] for k, v in header.items() if k != "__metadata__"})


def written_from_gguf(hf_dir: Path) -> str:
    """Where a folder's weights are kept as their GGUF and a recipe (deploy/image/gguf_weights.py): say so."""
    recipe = hf_dir / "weights-from-gguf.json"
    if not recipe.is_file():
        return ""
    return f", written at start from {json.loads(recipe.read_text())['source']['file']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bento", default=os.environ.get("BENTO_PATH", "/home/bentoml/bento"))
    parser.add_argument("--config", default="configs/default.yaml", help="relative to the Bento's src/")
    args = parser.parse_args()
    src = Path(args.bento) / "src"
    os.chdir(src)
    sys.path.insert(0, str(src))
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    BentoMLContainer.model_store.set(ModelStore(str(Path(args.bento) / "models")))  # as `bentoml serve` does
    # the generators' weights kept as their GGUF: written first, as the container's start does (init.sh), so
    # each row below reads the files a node loads (the ONNX lookups fingerprint the torch folder's weights too)
    gguf_dir = Path("/usr/local/lib/graph-image")
    if (gguf_dir / "gguf_weights.py").is_file():
        sys.path.insert(0, str(gguf_dir))
        import gguf_weights

        for line in gguf_weights.rebuild(Path(args.bento) / "models"):
            print(f"graph-weights: {line}")

    from graph.config import load_config
    from graph.models import embedded
    from graph.models.loading import _table_key, resolve_model_dir
    from graph.models.runtimes import AUTO_BACKENDS, TABLE, choose_for_kind
    from services.store import find_onnx, find_prepared, store_lookup

    def prepared(name: str) -> str:  # the store's copy only: never convert here
        if not embedded.needs_conversion(name):
            return str(embedded.folder_path(name))
        found = find_prepared(name)
        if found is None:
            raise LookupError(f"embedded model {name} is not in the image's store")
        return found.path

    config = load_config(args.config)
    missing = 0
    rows = []
    for name, node in config.generators.items():
        runtime = node.runtime
        key = _table_key(node.model)
        picks = [(kind, choose_for_kind(kind, key, runtime.optimize, AUTO_BACKENDS)) for kind in TABLE]
        # a hybrid (graph/engine/hybrid.py) loads both its sides: each gets its row
        sides = [(k, s) for k, c in picks for s in ((c.small, c.large) if c.backend == "hybrid" else (c,)) if s]
        for kind, choice in sides:
            try:
                hf_dir = Path(resolve_model_dir(node.model, store_lookup=store_lookup, embedded_lookup=prepared))
                if choice.backend == "torch":
                    weights = sorted(hf_dir.glob("*.safetensors"))
                    what = f"torch {choice.dtype} {choice.quantize}"
                    made = written_from_gguf(hf_dir)
                    have = f"{hf_dir.parent.name}: " + ", ".join(
                        f"{w.name} ({'/'.join(safetensors_dtypes(w))}{made})" for w in weights
                    )
                    ok = bool(weights)
                elif choice.backend == "onnx":
                    what = f"onnx {choice.onnx_precision}"
                    found = find_onnx(str(hf_dir), choice.onnx_precision, choice.onnx_accuracy_level)
                    ok = found is not None and (Path(found.path) / "model.onnx").is_file()
                    have = str(found.tag) if found is not None else "no conversion in the store"
                else:
                    what = "llamacpp (GGUF)"
                    spec = embedded.get_embedded(str(node.model.embedded))
                    gguf = embedded._package_dir(spec) / spec.gguf_file
                    lib = importlib.util.find_spec("llama_cpp")
                    variants = (
                        sorted(
                            p.stem.removeprefix("libggml-cpu-")
                            for p in Path(list(lib.submodule_search_locations or [])[0], "lib").glob("libggml-cpu-*.so")
                        )
                        if lib is not None
                        else []
                    )
                    ok = gguf.is_file() and bool(variants)
                    have = f"{gguf.name} {'present' if gguf.is_file() else 'MISSING'}; ggml CPU variants: {variants}"
            except Exception as exc:
                ok, what, have = False, choice.backend, f"{type(exc).__name__}: {exc}"
            missing += not ok
            rows.append((name, kind, what, "ok" if ok else "MISSING", have))
    for row in rows:
        print("\t".join(row))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
