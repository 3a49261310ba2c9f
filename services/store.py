"""The BentoML model store for graph/: tag -> directory, embedded model name -> prepared directory."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from graph.errors import ConfigError
from graph.models import embedded

log = logging.getLogger("graph")


def store_lookup(tag: str) -> str:
    """Directory of a model in the local BentoML store, or ConfigError naming the tag."""
    try:
        return bentoml.models.get(tag).path
    except NotFound:
        raise ConfigError(
            f"model.bentoml {tag!r}: not in the BentoML model store (see `bentoml models list`)",
            field="model.bentoml",
        ) from None


def find_prepared(name: str) -> bentoml.Model | None:
    """The newest store entry for an embedded model whose fingerprint matches the installed package."""
    try:
        models = bentoml.models.list(name)
    except NotFound:
        return None
    fp = embedded.fingerprint(name)
    matching = [m for m in models if m.info.labels.get("fingerprint") == fp]
    return max(matching, key=lambda m: m.creation_time, default=None)


def prepare(name: str, *, force: bool = False, progress: Callable[[str], None] = print) -> tuple[str, bool]:
    """Convert an embedded GGUF model into the store once; returns (directory, converted_now)."""
    if not embedded.needs_conversion(name):
        return str(embedded.folder_path(name)), False
    found = None if force else find_prepared(name)
    if found is not None:
        return found.path, False
    spec = embedded.get_embedded(name)
    labels = {"fingerprint": embedded.fingerprint(name), "source": "embedded"}
    metadata = {"package": f"{spec.distribution}=={embedded.package_version(name)}", "description": spec.description}
    start = time.perf_counter()
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        embedded.convert_embedded(name, model.path, progress=progress)
    progress(f"[{name}] saved to the BentoML store as {model.tag} ({time.perf_counter() - start:.1f} s)")
    return bentoml.models.get(model.tag).path, True


def embedded_lookup(name: str) -> str:
    """Directory of a prepared embedded model; prepares it now (slow) when the store lacks it."""
    if not embedded.needs_conversion(name):
        return str(embedded.folder_path(name))
    found = find_prepared(name)
    if found is not None:
        return found.path
    log.warning(
        "embedded model %s is not in the BentoML store yet: converting it now (~30-90 s). "
        "`make prepare` (run by `make serve`) does this ahead of time.",
        name,
    )
    return prepare(name, progress=log.warning)[0]


def _onnx_store_name(hf_dir: str) -> str:
    """`<model>-onnx`: the torch copy's store name when `hf_dir` is in the store, else the folder's name."""
    path = Path(hf_dir).resolve()
    base = path.parent.name if (path / "model.yaml").is_file() else path.name  # a store entry: <name>/<version>
    return re.sub(r"[^a-z0-9_.-]+", "-", base.lower()).strip("-.")[:50] + "-onnx"


def onnx_lookup(
    hf_dir: str, precision: str, accuracy_level: int | None, *, progress: Callable[[str], None] | None = None
) -> str:
    """Directory of the ONNX conversion of transformers folder `hf_dir` (graph/models/onnx_model.py),
    kept in the BentoML store beside the torch copy as `<model>-onnx` with the source fingerprint
    and options as labels; converted now (logged) when missing."""
    from graph.models import onnx_model

    progress = progress or log.warning
    name = _onnx_store_name(hf_dir)
    want = {k: str(v) for k, v in onnx_model._marker(hf_dir, precision, accuracy_level).items()}
    try:
        found = [m for m in bentoml.models.list(name) if all(m.info.labels.get(k) == v for k, v in want.items())]
    except NotFound:
        found = []
    if found:
        return max(found, key=lambda m: m.creation_time).path
    start = time.perf_counter()
    with bentoml.models.create(name, labels=want, metadata={"source_dir": str(hf_dir)}) as model:
        onnx_model.convert(hf_dir, model.path, precision=precision, accuracy_level=accuracy_level, progress=progress)
    progress(f"[onnx] saved to the BentoML store as {model.tag} ({time.perf_counter() - start:.1f} s)")
    return bentoml.models.get(model.tag).path
