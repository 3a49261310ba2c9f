"""deploy/image/context.py's bfloat16 step on the tiny causal LM: the image's copy of a generator's weights is
bfloat16 (the same bits as casting the float32 file at load), and the ONNX conversion of that model is still
found by its lookup (its source fingerprint relabelled); the original file is left alone."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from graph.models.onnx_model import source_fingerprint
from tests.server import ROOT


def _context_module():
    spec = importlib.util.spec_from_file_location("image_context", ROOT / "deploy" / "image" / "context.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_weights_cast_to_bfloat16_and_onnx_relabelled(tiny_dir: Path, tmp_path: Path) -> None:
    source = tiny_dir / "causal_lm"
    models = tmp_path / "models"
    torch_copy = models / "tiny-lm" / "v1"
    shutil.copytree(source, torch_copy)
    linked = torch_copy / "model.safetensors"
    linked.unlink()
    linked.hardlink_to(source / "model.safetensors")  # as a store copy may be: the original must survive
    before = source_fingerprint(torch_copy)
    onnx_copy = models / "tiny-lm-onnx" / "v1"
    onnx_copy.mkdir(parents=True)
    (onnx_copy / "model.yaml").write_text(f"name: tiny-lm-onnx\nlabels:\n  source: {before}\n  precision: int8\n")
    (onnx_copy / "graph-onnx.json").write_text(json.dumps({"source": before, "precision": "int8"}))
    float32 = load_file(source / "model.safetensors")

    notes = _context_module().to_bfloat16(models)

    cast = load_file(torch_copy / "model.safetensors")
    assert {t.dtype for t in cast.values()} == {torch.bfloat16}
    assert all(torch.equal(cast[k], t.to(torch.bfloat16)) for k, t in float32.items())
    assert {t.dtype for t in load_file(source / "model.safetensors").values()} == {torch.float32}
    after = source_fingerprint(torch_copy)
    assert after != before
    assert f"source: {after}" in (onnx_copy / "model.yaml").read_text()
    assert json.loads((onnx_copy / "graph-onnx.json").read_text())["source"] == after
    assert any("float32 -> bfloat16" in n for n in notes) and any("relabelled" in n for n in notes)
