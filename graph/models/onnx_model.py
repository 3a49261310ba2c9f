"""Converts a transformers causal-LM folder to an ONNX Runtime model once (ORT GenAI's builder) for onnx_runner.

    out = convert(hf_dir, out_dir, precision="int4", progress=print)

What it does, in order:
1. Config adapter (Gemma 3 under transformers 5): the builder's rope reader expects a flat
   `rope_parameters` with a `rope_type`, and Gemma 3's reader a `rope_local_base_freq`; transformers
   5 writes `rope_parameters` keyed by layer type. The adapter writes an adapted config.json into a
   temporary copy of the folder (weights symlinked) and gives the config class the
   `rope_local_base_freq` attribute inside the conversion process only (transformers 5 folds that
   key into `rope_parameters` on load, so a config.json alone cannot carry it). The library itself
   is not patched.
2. `onnxruntime_genai.models.builder.create_model(...)` in a child process (its output goes to
   `build.log` in the output folder; a failure raises ConfigError with its last lines).
3. One graph change: an input `logits_index` (int64, one flat row*seq index per row) gathers the
   final hidden states before the vocabulary projection, so logits are [rows, 1, vocab] for a
   prefill as for a decode step (graph/engine/runners/onnx_runner.py feeds it).
4. Tied embeddings shared (`share_embedding`, int8 conversions): where the model ties its input embedding
   to the vocabulary projection (SmolLM2, Gemma 3), the builder quantizes the projection to int8 but keeps
   the embedding table float32 (its int8 export has no quantized Gather); the token lookup now reads the
   projection's int8 weights (com.microsoft GatherBlockQuantized) and the float32 table is dropped:
   Gemma 3's 262k x 640 table is 671 MB of its 1.04 GB. The rows it gives are the projection's own
   rows dequantized, within half a quantization step of the float32 ones (a whole one where the top
   code clips; checked before the swap).
5. The tokenizer files the builder copies beside the model are removed: the runner loads the tokenizer
   from the transformers folder (the same files).
6. A `graph-onnx.json` marker (source fingerprint, precision, builder version): `find` trusts a
   folder only when the marker matches.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from graph.errors import ConfigError

CONVERTER_VERSION = "2"  # bump when convert() writes something different (2: tied embeddings shared, no tokenizer copy)
MARKER = "graph-onnx.json"
PRECISIONS = ("int4", "int8", "fp32")
BUILDER_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja")


def source_fingerprint(hf_dir: str | Path) -> str:
    """Identity of a transformers folder: its config.json and each weight file's size and first MiB."""
    hf_dir = Path(hf_dir)
    h = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")) + sorted(hf_dir.glob("*.bin")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(2**20))
    return h.hexdigest()[:16]


def _marker(hf_dir: str | Path, precision: str, accuracy_level: int | None) -> dict[str, str]:
    import importlib.metadata

    return {
        "source": source_fingerprint(hf_dir),
        "precision": precision,
        "accuracy_level": str(accuracy_level or "default"),
        "builder": importlib.metadata.version("onnxruntime-genai"),
        "converter": CONVERTER_VERSION,
    }


def is_current(out_dir: str | Path, hf_dir: str | Path, precision: str, accuracy_level: int | None = None) -> bool:
    """True when `out_dir` holds a finished conversion of `hf_dir` with these options."""
    path = Path(out_dir) / MARKER
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()) == _marker(hf_dir, precision, accuracy_level)
    except (OSError, ValueError):
        return False


def _adapted_source(hf_dir: Path, workdir: Path) -> Path:
    """`hf_dir` itself, or a copy (weights symlinked) whose config.json the builder can read."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    rope = cfg.get("rope_parameters")
    if not (isinstance(rope, dict) and "rope_type" not in rope and rope):
        return hf_dir
    full = rope.get("full_attention") or next(iter(rope.values()))
    adapted = workdir / "source"
    adapted.mkdir()
    for f in hf_dir.iterdir():
        if f.name != "config.json":
            (adapted / f.name).symlink_to(f.resolve())
    # Flat keys for the builder's rope reader; transformers keeps the per-layer-type entries beside them.
    cfg["rope_parameters"] = {**rope, "rope_type": full.get("rope_type", "default"), "rope_theta": full["rope_theta"]}
    (adapted / "config.json").write_text(json.dumps(cfg, indent=1))
    return adapted


def _build_child(src: str, out: str, precision: str, accuracy_level: str, cache: str) -> None:
    """Runs in the child process: the builder, with Gemma 3's rope_local_base_freq provided."""
    from transformers import Gemma3TextConfig

    def local_theta(self):
        rope = self.rope_parameters or {}
        return (rope.get("sliding_attention") or {}).get("rope_theta", getattr(self, "rope_theta", 10000.0))

    if not hasattr(Gemma3TextConfig, "rope_local_base_freq"):
        Gemma3TextConfig.rope_local_base_freq = property(local_theta)  # pyright: ignore[reportAttributeAccessIssue]  added for the builder, which reads it
    import runpy

    argv = [
        "builder",
        "-i",
        src,
        "-o",
        out,
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        cache,
        "--extra_options",
        "hf_token=false",
    ]
    if accuracy_level != "default":
        argv.append(f"int4_accuracy_level={accuracy_level}")
    sys.argv = argv
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


def add_logits_index(model_path: Path) -> None:
    """Insert Reshape + Gather before the vocabulary projection, driven by a new `logits_index` input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=False)
    g = model.graph
    if any(i.name == "logits_index" for i in g.input):
        return
    head = next(
        (n for n in g.node if n.name.startswith("/lm_head/") and n.op_type in ("MatMul", "MatMulNBits", "Gemm")), None
    )
    if head is None:
        raise ConfigError(f"{model_path}: no /lm_head/ MatMul found to gather before", field="runtime.backend")
    hidden = head.input[0]
    hidden_size = next(
        (i.type.tensor_type.shape.dim[-1].dim_value for i in g.value_info if i.name == hidden), 0
    ) or _hidden_size(model_path)
    g.input.append(helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["batch_size"]))
    g.initializer.append(helper.make_tensor("/graph/flat_shape", TensorProto.INT64, [2], [-1, hidden_size]))
    g.initializer.append(helper.make_tensor("/graph/axis1", TensorProto.INT64, [1], [1]))
    nodes = [
        helper.make_node("Reshape", [hidden, "/graph/flat_shape"], ["/graph/flat_hidden"], name="/graph/Reshape"),
        helper.make_node(
            "Gather", ["/graph/flat_hidden", "logits_index"], ["/graph/last_hidden"], name="/graph/Gather", axis=0
        ),
        helper.make_node(
            "Unsqueeze", ["/graph/last_hidden", "/graph/axis1"], ["/graph/last_hidden3"], name="/graph/Unsqueeze"
        ),
    ]
    head.input[0] = "/graph/last_hidden3"
    at = list(g.node).index(head)
    for k, node in enumerate(nodes):
        g.node.insert(at + k, node)
    for out in g.output:
        if out.name == "logits":
            out.type.tensor_type.shape.dim[1].dim_param = ""
            out.type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(model, str(model_path))


def share_embedding(model_path: Path, *, check_rows: int = 4096) -> str:
    """Swap the float32 token-embedding Gather for a GatherBlockQuantized over the vocabulary projection's
    quantized weights (MatMulNBits) when the two are the same matrix (tied), and drop the float32 table.
    Rewrites `model_path` and its external data file; returns what it did (or why not), for the log.

    Tied is checked, not assumed: `check_rows` rows spread over the vocabulary, dequantized, must lie within
    half a quantization step of the float32 table's rows (a whole step at the top code, which clips)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    gather = next(
        (n for n in g.node if n.op_type == "Gather" and n.input[0] in inits and n.name.endswith("embed_tokens/Gather")),
        None,
    )
    head = next((n for n in g.node if n.name.startswith("/lm_head/") and n.op_type == "MatMulNBits"), None)
    if gather is None or head is None or len(head.input) > 3 and head.input[3]:
        return "embedding not shared: no float32 embedding Gather, or no symmetric quantized lm_head"
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    table, weight, scales = inits[gather.input[0]], inits[head.input[1]], inits[head.input[2]]
    bits, block, k, n = int(attrs["bits"]), int(attrs["block_size"]), int(attrs["K"]), int(attrs["N"])
    # int8 only: the int4 conversions (never picked by `auto`: outside the perplexity bound) keep their table.
    if table.data_type != TensorProto.FLOAT or list(table.dims) != [n, k] or k % block or bits != 8:
        return f"embedding not shared: table {list(table.dims)} vs lm_head N={n} K={k} block {block} bits {bits}"

    base = model_path.parent
    data_name = next((e.value for e in weight.external_data if e.key == "location"), model_path.name + ".data")
    onnx.load_external_data_for_model(model, str(base))
    emb = numpy_helper.to_array(table)
    q = numpy_helper.to_array(weight).reshape(n, k)
    sc = numpy_helper.to_array(scales).reshape(n, k // block).astype(np.float32)
    rows = np.unique(np.linspace(0, n - 1, min(check_rows, n)).astype(np.int64))
    codes = q[rows].astype(np.int32)
    zero = 1 << (bits - 1)  # MatMulNBits' default zero point when none is given (symmetric)
    step = np.repeat(sc[rows], block, axis=1)
    deq = (codes - zero) * step
    err = np.abs(deq - emb[rows])
    # Round to nearest, except the top code: the quantizer's scale is amax / 2^(bits-1), so +amax clips one step.
    bound = np.where(codes == (1 << bits) - 1, 1.0, 0.5) * np.abs(step) * 1.001 + 1e-6 * np.abs(emb[rows]) + 1e-7
    if not np.all(err <= bound):
        return f"embedding not shared: lm_head rows differ from the embedding table (max error {err.max():.3g})"

    name = gather.name
    swap = [
        helper.make_node(
            "Reshape", [head.input[1], f"{name}/shared_shape"], [f"{name}/shared_weight"], name=f"{name}/Reshape"
        )
    ]
    g.initializer.append(helper.make_tensor(f"{name}/shared_shape", TensorProto.INT64, [2], [n, k * bits // 8]))
    scales_in = head.input[2]
    if len(scales.dims) != 2:  # MatMulNBits also takes them flat; GatherBlockQuantized wants [N, K / block]
        g.initializer.append(helper.make_tensor(f"{name}/scales_shape", TensorProto.INT64, [2], [n, k // block]))
        swap.append(
            helper.make_node(
                "Reshape", [scales_in, f"{name}/scales_shape"], [f"{name}/scales"], name=f"{name}/ReshapeScales"
            )
        )
        scales_in = f"{name}/scales"
    swap.append(
        helper.make_node(
            "GatherBlockQuantized",
            [f"{name}/shared_weight", gather.input[1], scales_in],
            list(gather.output),
            name=f"{name}/GatherBlockQuantized",
            domain="com.microsoft",
            bits=bits,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        )
    )
    at = list(g.node).index(gather)
    g.node.remove(gather)
    for i, node in enumerate(swap):
        g.node.insert(at + i, node)
    g.initializer.remove(table)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    # Every tensor is in memory now: the data file is written anew (onnx appends to an existing one).
    (base / data_name).unlink(missing_ok=True)
    onnx.save_model(
        model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
    )
    return f"embedding shared with the lm_head's int{bits} weights: {emb.nbytes / 1e6:.1f} MB of float32 table dropped"


def _hidden_size(model_path: Path) -> int:
    return int(json.loads((model_path.parent / "genai_config.json").read_text())["model"]["decoder"]["hidden_size"])


def convert(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "int4",
    accuracy_level: int | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Convert `hf_dir` into `out_dir` (created; must be empty or absent). Returns `out_dir`."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"runtime.onnx_precision: {precision!r} is not one of {PRECISIONS}", field="runtime.onnx_precision"
        )
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    start = time.perf_counter()
    progress(f"[onnx] converting {hf_dir} to ONNX ({precision}, CPU) with onnxruntime-genai's builder ...")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graph-onnx-") as tmp:
        src = _adapted_source(hf_dir, Path(tmp))
        if src != hf_dir:
            progress("[onnx] config adapter: flat rope_parameters + rope_local_base_freq for the builder")
        log_path = out_dir / "build.log"
        code = "import sys; from graph.models.onnx_model import _build_child; _build_child(*sys.argv[1:])"
        args = [sys.executable, "-c", code, str(src), str(out_dir), precision, str(accuracy_level or "default"), tmp]
        root = str(Path(__file__).resolve().parents[2])
        with log_path.open("w") as log:
            rc = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, cwd=root, check=False).returncode
        if rc != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            raise ConfigError(
                f"runtime.backend: onnx: converting {hf_dir} failed (exit {rc}): {' | '.join(tail)}",
                field="runtime.backend",
            )
    progress(f"[onnx] built in {time.perf_counter() - start:.1f} s; adding the logits_index input")
    add_logits_index(out_dir / "model.onnx")
    progress(f"[onnx] {share_embedding(out_dir / 'model.onnx')}")
    # The tokenizer files the builder copies (Gemma 3's tokenizer.json is 33 MB): the runner reads the source folder's.
    for name in BUILDER_TOKENIZER_FILES:
        (out_dir / name).unlink(missing_ok=True)
    (out_dir / MARKER).write_text(json.dumps(_marker(hf_dir, precision, accuracy_level)))
    progress(f"[onnx] ready: {out_dir} ({time.perf_counter() - start:.1f} s)")
    return out_dir


def local_dir(hf_dir: str | Path, cache_dir: str | Path, precision: str, accuracy_level: int | None = None) -> Path:
    """Where `prepare_local` keeps the conversion of `hf_dir` (outside the BentoML store)."""
    key = f"{source_fingerprint(hf_dir)}-{precision}-{accuracy_level or 'default'}"
    return Path(cache_dir) / key


def prepare_local(
    hf_dir: str | Path,
    cache_dir: str | Path,
    *,
    precision: str = "int4",
    accuracy_level: int | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """The conversion of `hf_dir` under `cache_dir`, converted now if missing (tests, scripts)."""
    out = local_dir(hf_dir, cache_dir, precision, accuracy_level)
    if is_current(out, hf_dir, precision, accuracy_level):
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    convert(hf_dir, tmp, precision=precision, accuracy_level=accuracy_level, progress=progress)
    tmp.rename(out)
    progress(f"[onnx] kept in {out}")
    return out


DEFAULT_ONNX_CACHE = Path(__file__).resolve().parents[2] / "artifacts" / "onnx"


def load(ref, runtime, *, threads: int | None = None, onnx_lookup=None, **lookups):
    """(runner, tokenizer) of `ref` on the onnx backend: the tokenizer from the transformers folder
    the torch backend loads, the model from its conversion. `onnx_lookup(hf_dir, precision,
    accuracy_level) -> dir` finds or makes the conversion (services pass the BentoML store's);
    without one it lives under artifacts/onnx/."""
    import logging

    from graph.engine.runners.onnx_runner import OnnxRunner
    from graph.models.loading import load_generator_tokenizer, resolve_model_dir

    source = resolve_model_dir(ref, **lookups)
    if not Path(source).is_dir():
        raise ConfigError(
            f"runtime.backend: onnx needs a local model folder; {ref.describe()} is a hub id not in a local folder "
            "(download it to a folder and use model: {path: ...}, or use backend: torch)",
            field="runtime.backend",
        )
    tokenizer = load_generator_tokenizer(ref, source)
    precision, level = runtime.onnx_precision, runtime.onnx_accuracy_level
    if onnx_lookup is not None:
        onnx_dir = Path(onnx_lookup(source, precision, level))
    else:
        log = logging.getLogger(__name__)
        onnx_dir = prepare_local(
            source, DEFAULT_ONNX_CACHE, precision=precision, accuracy_level=level, progress=log.warning
        )
    runner = OnnxRunner(onnx_dir, threads=threads, source_dir=source, precision=precision, accuracy_level=level)
    return runner, tokenizer
