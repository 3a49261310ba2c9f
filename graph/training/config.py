"""TrainConfig: every argument of a fine-tuning run, validated once (pydantic, extra="forbid")."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph.config import ROOT, ModelRef
from graph.errors import ConfigError
from graph.field_errors import describe, field_errors

STORE_NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"  # BentoML's model-name rule (lowercase)
REF_KINDS = ("embedded", "hub", "path", "bentoml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleParams(_Strict):
    """Sample generations written to the run's generated.jsonl at every evaluation."""

    num_samples: int = Field(
        default=3, ge=0, le=32, description="Prompts sampled (control prefixes of validation documents; 0 = none)."
    )
    max_new_tokens: int = Field(default=48, ge=1, le=512)
    do_sample: bool = True
    temperature: float = Field(default=0.7, gt=0.0, le=10.0, description="1.0 = no change.")
    top_k: int = Field(default=0, ge=0, le=1000, description="0 = off.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="1.0 = off.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0, description="1.0 = off.")
    seed: int = Field(default=0, ge=0, description="Same seed at every evaluation, so samples are comparable.")


class TrainConfig(_Strict):
    """One fine-tuning run of a causal LM on a train and a validation document file."""

    base: ModelRef = Field(description="The generator to start from (embedded, hub, path or bentoml tag).")
    train_file: Path = Field(description='Documents, one JSON object per line: {"body": str, "meta": str?}.')
    valid_file: Path
    output_dir: Path = Field(description="The run's folder: checkpoints, generated.jsonl, tb/, final/.")
    name: str = Field(default="finetuned", pattern=STORE_NAME, description="Model-store name of the result.")
    control_format: str = Field(
        default="<meta>{meta}</meta>\n",
        description="How `meta` becomes the control prefix in front of the body ({meta} is replaced).",
    )
    resume: bool = Field(
        default=False, description="Continue from the last checkpoint in output_dir (same step count)."
    )
    ignore_meta_prob: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Chance a training document goes in without its prefix."
    )
    max_meta_len: int = Field(default=16, ge=0, le=4096, description="Meta tokens kept (0 = never a prefix).")
    max_body_len: int = Field(
        default=128, ge=1, le=32768, description="Body tokens kept (then an end-of-sequence token)."
    )
    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0)
    warmup_steps: int = Field(
        default=10, ge=0, description="Linear warm-up from 0 to learning_rate, then linear decay."
    )
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    epochs: float = Field(default=1.0, gt=0.0, le=1000.0, description="Used when max_steps is not set.")
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps in all; overrides epochs.")
    batch_size: int = Field(default=4, ge=1, le=1024)
    grad_accum: int = Field(default=1, ge=1, le=1024, description="Batches per optimizer step.")
    unlikelihood_alpha: float = Field(
        default=0.0, ge=0.0, le=100.0, description="Weight of the token-level unlikelihood loss (0 = off)."
    )
    eval_steps: int = Field(
        default=20, ge=1, description="Evaluate (loss, perplexity, samples) every this many steps, and at the start."
    )
    save_steps: int = Field(default=20, ge=1, description="Checkpoint every this many steps (resume from the last).")
    save_total_limit: int = Field(default=2, ge=1, le=100, description="Checkpoints kept.")
    samples: SampleParams = Field(default_factory=SampleParams)
    seed: int = Field(default=0, ge=0)
    threads: int | None = Field(default=None, ge=1, le=256, description="torch threads (None = torch's default).")
    progress: bool = Field(default=True, description="Show a progress bar.")

    @field_validator("control_format")
    @classmethod
    def _has_meta(cls, v: str) -> str:
        if v.count("{meta}") != 1:
            raise ValueError("must contain {meta} exactly once")
        return v

    @field_validator("train_file", "valid_file")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not resolve(v).is_file():
            raise ValueError(f"file not found: {resolve(v)}")
        return v

    def control_prefix(self, meta: str) -> str:
        return self.control_format.replace("{meta}", meta)

    def path(self, key: str) -> Path:
        """An absolute path field (relative paths are taken from the repository root when not found here)."""
        return resolve(getattr(self, key))


def resolve(path: Path) -> Path:
    if path.is_absolute() or path.exists():
        return path.absolute()
    return ROOT / path


def parse_ref(text: str) -> ModelRef:
    """'embedded:NAME', 'hub:ID', 'path:DIR' or 'bentoml:TAG' (a bare existing directory = path)."""
    kind, sep, ref = text.partition(":")
    if sep and kind in REF_KINDS and ref:
        return ModelRef(**{kind: ref})
    if Path(text).is_dir():
        return ModelRef(path=text)
    raise ValueError(f"give one of {', '.join(k + ':...' for k in REF_KINDS)} (got {text!r})")


def parse_train_config(data: dict, *, flags: bool = False) -> TrainConfig:
    """Validate; ConfigError names each wrong argument (as --flag-name when `flags`)."""
    data = dict(data)
    if isinstance(data.get("base"), str):
        try:
            data["base"] = parse_ref(data["base"])
        except ValueError as exc:
            raise ConfigError(f"{_name('base', flags)}: {exc}", field="base") from None
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), unknown="unknown argument")
        named = [(_name(key, flags), msg) for key, msg in errors]
        message = "invalid training arguments:\n  " + describe(named, sep="\n  ")
        raise ConfigError(message, field=errors[0][0] or None) from None


def _name(key: str, flags: bool) -> str:
    if not flags:
        return key
    return "--" + key.replace("samples.", "sample-").replace("_", "-")
