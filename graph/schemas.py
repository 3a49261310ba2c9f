"""Typed requests and responses of the entry service's HTTP API (root-level JSON fields)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from graph.results import Classification  # noqa: F401  (part of the API's schema)
from graph.params import GenerationOverrides


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class GenerateScoreRequest(_Request):
    """Fan a sentence out to every generator, score every completion."""

    original_sentence: str = Field(
        "I have an idea!", min_length=1, description="Prompt given to every generator.",
        examples=["I have an idea!"],
    )
    params: Optional[GenerationOverrides] = Field(  # type: ignore[valid-type]
        None, description="Overrides of the generators' defaults (same for every node)."
    )

    _blank = field_validator("original_sentence")(_not_blank)


class GenerateRequest(_Request):
    """Generate from one prompt (or a batch of prompts) on one node or on all of them."""

    prompt: Optional[str] = Field(None, min_length=1, examples=["Once upon a time"])
    prompts: Optional[list[str]] = Field(
        None, min_length=1, max_length=64, description="A batch of prompts instead of `prompt`."
    )
    model: Optional[str] = Field(None, description="Generator node name; omit for every node.")
    params: Optional[GenerationOverrides] = None  # type: ignore[valid-type]

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _not_blank(v)

    @field_validator("prompts")
    @classmethod
    def _prompts_not_blank(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None:
            for i, p in enumerate(v):
                if not p.strip():
                    raise ValueError(f"prompts[{i}] must not be empty or only whitespace")
        return v

    def prompt_list(self) -> list[str]:
        if (self.prompt is None) == (self.prompts is None):
            from graph.errors import InvalidRequest

            raise InvalidRequest("give exactly one of `prompt` or `prompts`", field="prompt")
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])


class StreamRequest(_Request):
    """Streamed generation as server-sent events."""

    prompt: str = Field("I have an idea!", min_length=1, examples=["I have an idea!"])
    model: Optional[str] = Field(None, description="Generator node name; omit for every node.")
    params: Optional[GenerationOverrides] = None  # type: ignore[valid-type]
    intermediate_result_interval_ms: int = Field(
        0, ge=0, le=60_000, description="Send fragments no more often than this; 0 = every token."
    )

    _blank = field_validator("prompt")(_not_blank)


class ClassifyRequest(_Request):
    """Score texts with the classifier node."""

    texts: list[str] = Field(min_length=1, max_length=256, examples=[["What a lovely day!"]])


class ScoredCompletion(BaseModel):
    """One completion of /generate_score with its score (seed contract: `generated`, `score`)."""

    model: str
    index: int
    generated: str = Field(description="Prompt + completion, as in the seed tutorial.")
    completion: str = Field(description="The new text only.")
    score: float = Field(ge=0.0, le=1.0)
    label: str
    labels: dict[str, float]
    finish_reason: Literal["stop", "length", "time", "cancelled"]
    prompt_tokens: int
    completion_tokens: int
