"""The BentoML model store for graph/: tag -> directory, embedded model name -> prepared directory."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from graph.config import GeneratorNode
from graph.errors import ConfigError, GraphError
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


def find_onnx(hf_dir: str, precision: str, accuracy_level: int | None) -> bentoml.Model | None:
    """The newest store entry holding the ONNX conversion of `hf_dir` with these options (labels match)."""
    from graph.models import onnx_model

    want = {k: str(v) for k, v in onnx_model._marker(hf_dir, precision, accuracy_level).items()}
    try:
        found = [m for m in bentoml.models.list(_onnx_store_name(hf_dir)) if m.info.labels.items() >= want.items()]
    except NotFound:
        return None
    return max(found, key=lambda m: m.creation_time, default=None)


def packed_onnx_tags(node: GeneratorNode) -> list[str]:
    """Store tags of the ONNX conversions generator `node` may load on some CPU kind (see
    graph.models.loading.onnx_variants) that are in the store now. The node's service declares them,
    so a Bento built from it carries them and its image never converts at start-up. Looks only:
    converts nothing (`make prepare` / `make bento` do)."""
    from graph.models.loading import onnx_variants, resolve_model_dir

    variants = onnx_variants(node.runtime, node.model)
    if not variants or node.model.hub:
        return []

    def prepared(name: str) -> str:
        if not embedded.needs_conversion(name):
            return str(embedded.folder_path(name))
        found = find_prepared(name)
        if found is None:
            raise LookupError(name)
        return found.path

    try:
        hf_dir = resolve_model_dir(node.model, store_lookup=store_lookup, embedded_lookup=prepared)
    except (GraphError, LookupError, OSError):
        return []  # not prepared yet: nothing to pack; the node converts (or says what is wrong) when it starts
    tags = []
    for precision, level in variants:
        found = find_onnx(hf_dir, precision, level)
        if found is not None:
            tags.append(str(found.tag))
    return tags


def onnx_lookup(
    hf_dir: str, precision: str, accuracy_level: int | None, *, progress: Callable[[str], None] | None = None
) -> str:
    """Directory of the ONNX conversion of transformers folder `hf_dir` (graph/models/onnx_model.py),
    kept in the BentoML store beside the torch copy as `<model>-onnx` with the source fingerprint
    and options as labels; converted now (logged) when missing."""
    from graph.models import onnx_model

    progress = progress or log.warning
    found = find_onnx(hf_dir, precision, accuracy_level)
    if found is not None:
        return found.path
    name = _onnx_store_name(hf_dir)
    want = onnx_model._marker(hf_dir, precision, accuracy_level)
    start = time.perf_counter()
    with bentoml.models.create(name, labels=want, metadata={"source_dir": str(hf_dir)}) as model:
        onnx_model.convert(hf_dir, model.path, precision=precision, accuracy_level=accuracy_level, progress=progress)
    progress(f"[onnx] saved to the BentoML store as {model.tag} ({time.perf_counter() - start:.1f} s)")
    return bentoml.models.get(model.tag).path
