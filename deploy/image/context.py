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


def make_context(tag: str, out: Path) -> list[str]:
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
    # The store keeps model folders private to their owner (0700); the image's are root's, read-only,
    # and readable by the non-root user that serves them.
    for path in [out / "models", *(out / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bento", help="Bento tag, e.g. inference_graph:latest")
    parser.add_argument("out", type=Path, help="folder for the context (replaced)")
    args = parser.parse_args()
    tags = make_context(args.bento, args.out)
    print(f"context {args.out}: {args.bento} and its models {', '.join(tags)}")


if __name__ == "__main__":
    main()
