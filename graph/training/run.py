"""A fine-tuning run: check every input, load the base model, train with transformers' Trainer, save final/."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graph.config import RuntimeConfig
from graph.errors import ConfigError
from graph.training.config import TrainConfig
from graph.training.documents import DocumentFile, read_documents

log = logging.getLogger(__name__)
FINAL_DIR = "final"
RESULT_FILE = "result.json"
CONFIG_FILE = "train_config.json"


@dataclass(frozen=True)
class Inputs:
    """What a run needs, checked before any model is loaded."""

    train: DocumentFile
    valid: DocumentFile
    source: str  # the base model's directory (or hub id)
    resume_from: str | None


@dataclass
class TrainResult:
    """What the run did; `metadata()` is what goes into the model store."""

    final_dir: str
    base_model: str
    steps: int
    epochs: float
    initial_eval_loss: float
    final_eval_loss: float
    wall_s: float
    train_sha256: str
    valid_sha256: str
    args: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None

    @property
    def final_perplexity(self) -> float:
        from graph.training.samples import perplexity

        return perplexity(self.final_eval_loss)

    def metadata(self) -> dict[str, Any]:
        from graph.training.samples import perplexity

        return {
            **asdict(self),
            "initial_perplexity": perplexity(self.initial_eval_loss),
            "final_perplexity": self.final_perplexity,
        }


def check_inputs(cfg: TrainConfig, **lookups: Any) -> Inputs:
    """Documents parsed line by line, the base model found, the resume state consistent; else ConfigError."""
    from graph.models.loading import resolve_model_dir

    train = read_documents(cfg.path("train_file"), what="train_file")
    valid = read_documents(cfg.path("valid_file"), what="valid_file")
    try:
        source = resolve_model_dir(cfg.base, **lookups)
    except ConfigError as exc:
        raise ConfigError(f"base: {exc.message}", field="base") from None
    run_dir = cfg.path("output_dir")
    last = _last_checkpoint(run_dir)
    if cfg.resume and last is None:
        raise ConfigError(f"resume: no checkpoint-* folder in {run_dir} to resume from (--output-dir?)", field="resume")
    if not cfg.resume and last is not None:
        raise ConfigError(
            f"output_dir: {run_dir} already holds {Path(last).name}; continue it with resume "
            "(--resume) or choose another output_dir (--output-dir)",
            field="output_dir",
        )
    return Inputs(train, valid, source, last if cfg.resume else None)


def _last_checkpoint(run_dir: Path) -> str | None:
    if not run_dir.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir))


def train(cfg: TrainConfig, inputs: Inputs | None = None, **lookups: Any) -> TrainResult:
    """Run the training (resuming if cfg.resume) and save the model and tokenizer to output_dir/final/."""
    inputs = inputs or check_inputs(cfg, **lookups)  # before the heavy imports: bad input fails at once
    import torch

    from graph.models.loading import load_causal_lm
    from graph.training.dataset import DocumentDataset, DocumentEncoder, collate
    from graph.training.samples import SampleLogger
    from graph.training.trainer import DocumentTrainer, tensorboard_callbacks, training_arguments

    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = cfg.path("output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2))

    model, tokenizer = load_causal_lm(cfg.base, RuntimeConfig(dtype="float32"), **lookups)
    model.train()
    tokenizer.padding_side = "right"
    encoder = DocumentEncoder(
        tokenizer, control_prefix=cfg.control_prefix, max_meta_len=cfg.max_meta_len, max_body_len=cfg.max_body_len
    )
    train_set = DocumentDataset(
        [encoder.encode(d) for d in inputs.train.documents],
        ignore_meta_prob=cfg.ignore_meta_prob,
        seed=cfg.seed,
        fixed=False,
    )
    valid_set = DocumentDataset(
        [encoder.encode(d) for d in inputs.valid.documents],
        ignore_meta_prob=cfg.ignore_meta_prob,
        seed=cfg.seed + 1,
        fixed=True,
    )
    prompts = sample_prompts(encoder, inputs.valid, cfg.samples.num_samples)
    trainer = DocumentTrainer(
        model=model,
        args=training_arguments(cfg, run_dir),
        train_dataset=train_set,
        eval_dataset=valid_set,
        data_collator=collate(tokenizer.pad_token_id),
        callbacks=[SampleLogger(run_dir, tokenizer, prompts, cfg.samples), *tensorboard_callbacks(run_dir)],
        unlikelihood_alpha=cfg.unlikelihood_alpha,
    )
    trainer.train(resume_from_checkpoint=inputs.resume_from)
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals[-1]["step"] != trainer.state.global_step:  # the last step was not an evaluation step
        evals.append({**trainer.evaluate(), "step": trainer.state.global_step})

    final_dir = run_dir / FINAL_DIR
    tokenizer.padding_side = "left"
    model.eval()
    model.save_pretrained(final_dir, safe_serialization=True)
    tokenizer.save_pretrained(final_dir)
    result = TrainResult(
        final_dir=str(final_dir),
        base_model=cfg.base.describe(),
        steps=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0.0),
        initial_eval_loss=float(evals[0]["eval_loss"]),
        final_eval_loss=float(evals[-1]["eval_loss"]),
        wall_s=round(time.perf_counter() - start, 1),
        train_sha256=inputs.train.sha256,
        valid_sha256=inputs.valid.sha256,
        args=cfg.model_dump(mode="json"),
        resumed_from=inputs.resume_from,
    )
    (run_dir / RESULT_FILE).write_text(json.dumps(result.metadata(), indent=2))
    (final_dir / "training.json").write_text(json.dumps(result.metadata(), indent=2))
    return result


def sample_prompts(encoder: Any, valid: DocumentFile, n: int) -> list[str]:
    """Control prefixes of the first n distinct validation metas, then the bare prompt to fill up."""
    if n == 0:
        return []
    prompts = list(dict.fromkeys(encoder.prompt(d.meta) for d in valid.documents if d.meta))[:n]
    if len(prompts) < n:
        prompts.append("")
    return prompts
