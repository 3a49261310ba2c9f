"""Sample generations at every evaluation, appended with their parameters to the run's generated.jsonl."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from graph.training.config import SampleParams

GENERATED_LOG = "generated.jsonl"


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def generate_samples(model: Any, tokenizer: Any, prompts: list[str], params: SampleParams) -> list[str]:
    """One continuation per prompt, sampled with a fixed seed (the caller's RNG state is left as it was)."""
    import torch

    was_training = model.training
    model.eval()
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(params.seed)
            for prompt in prompts:
                ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) or [start_id]
                input_ids = torch.tensor([ids], device=model.device)
                sampling = (
                    dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
                    if params.do_sample
                    else {}
                )
                gen = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=params.max_new_tokens,
                    do_sample=params.do_sample,
                    repetition_penalty=params.repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id,
                    **sampling,
                )
                out.append(tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


class SampleLogger(TrainerCallback):
    """On every evaluation: validation loss, perplexity and sample generations -> generated.jsonl."""

    def __init__(self, run_dir: Path, tokenizer: Any, prompts: list[str], params: SampleParams) -> None:
        self.path = Path(run_dir) / GENERATED_LOG
        self.tokenizer, self.prompts, self.params = tokenizer, prompts, params

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, model: Any = None, **kwargs: Any
    ) -> None:
        loss = float((metrics or {}).get("eval_loss", float("nan")))
        texts = generate_samples(model, self.tokenizer, self.prompts, self.params) if self.prompts and model else []
        record = {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "time": time.time(),
            "eval_loss": loss,
            "eval_perplexity": perplexity(loss),
            "generator_params": self.params.model_dump(),
            "samples": [{"prompt": p, "text": t} for p, t in zip(self.prompts, texts)],
        }
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
