"""Fine-tune a generator on document files, then save it to the BentoML model store (`make train`).

Every TrainConfig field (graph/training/config.py) is a flag (--learning-rate, --sample-top-p, ...)
and a key of the optional --config YAML; flags win. Inputs are checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from graph.errors import GraphError
from graph.training.config import SampleParams, TrainConfig, parse_train_config


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _add_fields(parser: argparse.ArgumentParser, model: type, prefix: str = "") -> None:
    for key, info in model.model_fields.items():
        if key == "samples":
            _add_fields(parser, SampleParams, "sample_")
            continue
        dest = prefix + key
        help_ = info.description or ""
        if info.annotation is bool:
            parser.add_argument(_flag(dest), dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(_flag(dest), dest=dest, default=None, metavar=key.upper(), help=help_)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML with TrainConfig keys (flags override it)")
    parser.add_argument("--no-store", action="store_true", help="train only; do not save into the model store")
    _add_fields(parser, TrainConfig)
    return parser


def collect(args: argparse.Namespace) -> dict:
    """The YAML's keys, then every flag given (samples.* from --sample-*)."""
    data: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise GraphError(f"--config: file not found: {path}", field="config")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise GraphError(f"--config: {path} must be a mapping of TrainConfig keys", field="config")
    samples = dict(data.get("samples") or {})
    for key, value in vars(args).items():
        if value is None or key in ("config", "no_store"):
            continue
        if key.startswith("sample_"):
            samples[key.removeprefix("sample_")] = value
        else:
            data[key] = value
    if samples:
        data["samples"] = samples
    return data


def main(argv: typing.Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = parse_train_config(collect(args), flags=True)
        from graph.training.run import check_inputs, train
        from services.store import embedded_lookup, store_lookup

        lookups = dict(store_lookup=store_lookup, embedded_lookup=embedded_lookup)
        inputs = check_inputs(cfg, **lookups)
        print(
            f"train: {len(inputs.train.documents)} documents, valid: {len(inputs.valid.documents)}; "
            f"base {cfg.base.describe()} -> {inputs.source}"
            + (f"; resuming from {inputs.resume_from}" if inputs.resume_from else ""),
            flush=True,
        )
        result = train(cfg, inputs, **lookups)
    except GraphError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"steps {result.steps}, validation loss {result.initial_eval_loss:.4f} -> {result.final_eval_loss:.4f} "
        f"(perplexity {result.metadata()['initial_perplexity']:.2f} -> {result.final_perplexity:.2f}), "
        f"{result.wall_s:.0f} s; model in {result.final_dir}",
        flush=True,
    )
    if args.no_store:
        return 0
    from services.trained import save_trained

    tag = save_trained(cfg.name, result.final_dir, result.metadata())
    print(json.dumps({"tag": tag}))
    print(
        f"saved to the BentoML model store as {tag}; serve it with a generator node "
        f'`model: {{bentoml: "{cfg.name}:latest"}}` (see configs/finetuned.yaml)'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
