"""Fine-tuned generators into the BentoML model store: a training run's final/ folder plus its metadata."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import bentoml

SOURCE_LABEL = "finetuned"


def _plain(value: Any) -> Any:
    """BentoML metadata takes basic types only: drop None values, recurse into dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value if v is not None]
    return value


def save_trained(name: str, final_dir: str | Path, metadata: dict[str, Any]) -> str:
    """Copy a trained model folder into the store as `name:<new version>`; returns the tag.

    Labels: source=finetuned and the base model, so `bentoml models list` tells them apart;
    metadata: everything the run recorded (base, data sha256, steps, losses, arguments).
    """
    base = str(metadata.get("base_model", "unknown"))
    labels = {"source": SOURCE_LABEL, "base": base.replace(":", "-").replace("/", "-")[:63]}
    with bentoml.models.create(name, labels=labels, metadata=_plain(metadata)) as model:
        shutil.copytree(final_dir, model.path, dirs_exist_ok=True)
        for f in Path(model.path).rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)  # safetensors writes 0600; services may run as another user
    return str(model.tag)
