"""transformers' Trainer for documents: optional unlikelihood term, perplexity beside every validation loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainingArguments

from graph.training.config import TrainConfig
from graph.training.losses import unlikelihood_loss
from graph.training.samples import perplexity

TENSORBOARD_DIR = "tb"


class DocumentTrainer(Trainer):
    """Trainer whose training loss adds unlikelihood_alpha * the unlikelihood loss (evaluation
    stays plain cross-entropy, so perplexity is comparable), and whose logs carry eval_perplexity."""

    def __init__(self, *args: Any, unlikelihood_alpha: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unlikelihood_alpha = unlikelihood_alpha

    def compute_loss(
        self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if not (self.unlikelihood_alpha and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        # Same normalisation as the cross-entropy above: by the accumulated batch's target count when
        # the model took num_items_in_batch, else per batch (Trainer then divides by grad_accum).
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        logits = outputs.logits  # pyright: ignore[reportAttributeAccessIssue]  return_outputs=True: a ModelOutput
        loss = loss + self.unlikelihood_alpha * unlikelihood_loss(logits, inputs["labels"], items)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
        super().log(logs, start_time)


def training_arguments(cfg: TrainConfig, run_dir: Path) -> TrainingArguments:
    """TrainConfig -> TrainingArguments (linear warm-up then decay; evaluation at the start too)."""
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_strategy="steps",
        logging_steps=max(1, min(cfg.eval_steps, 10)),
        logging_first_step=True,
        report_to="none",  # TensorBoard is added as an explicit callback writing to run_dir/tb
        disable_tqdm=not cfg.progress,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def tensorboard_callbacks(run_dir: Path) -> list[Any]:
    """A TensorBoard writer into run_dir/tb when tensorboard or tensorboardX is installed."""
    if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        return []
    from transformers.integrations import TensorBoardCallback  # pyright: ignore[reportPrivateImportUsage]  its public home

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter
    log_dir = str(run_dir / TENSORBOARD_DIR)
    callback = TensorBoardCallback(tb_writer=SummaryWriter(log_dir=log_dir))
    callback.logging_dir = log_dir  # where it reopens a writer (an evaluation after training ends)
    return [callback]
