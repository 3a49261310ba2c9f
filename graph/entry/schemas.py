"""Typed requests and responses of the entry service's HTTP API (root-level JSON fields)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from graph.params import GenerationOverrides, Int
from graph.results import Classification, FinishReason, GenerationResult, TokenLogprob

DEFAULT_PROMPT = "I have an idea!"  # the seed tutorial's example sentence, the default of every prompt field


class StrictRequest(BaseModel):
    """Base of every request body: unknown fields refused, values strict."""

    # strict: a number is a number and a flag a flag (no "8", no false for 0)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# A prompt must hold one character that is not white space. The class spells out Python's and
# ECMAScript's white space alike, so the schema's pattern (read by JSON Schema tools with ECMAScript
# regexes) and this check (Python) agree on every string.
_SPACE = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680"
    "\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
)
_NOT_BLANK_PATTERN = f"[^{_SPACE}]"  # JSON Schema patterns search: "somewhere a non-space"
NOT_BLANK: JsonDict = {"pattern": _NOT_BLANK_PATTERN}
_VISIBLE = re.compile(_NOT_BLANK_PATTERN)
Text = Annotated[str, Field(min_length=1, json_schema_extra=NOT_BLANK)]
# bounds first: the schema shows them
RouteUser = Annotated[str, Field(min_length=1, max_length=256)]
RouteMetadata = dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=512)]]
DeadlineMs = Annotated[int, Field(ge=1, le=600_000), *Int.__metadata__]  # pyright: ignore[reportAttributeAccessIssue]  Annotated aliases carry __metadata__


def not_blank(value: str) -> str:
    if not _VISIBLE.search(value):
        raise ValueError("must not be empty or only whitespace")
    return value


class GenerateScoreRequest(StrictRequest):
    """Fan a sentence out to every generator, score every completion."""

    original_sentence: str = Field(
        default=DEFAULT_PROMPT,
        min_length=1,
        description="Prompt given to every generator.",
        examples=[DEFAULT_PROMPT],
        json_schema_extra=NOT_BLANK,
    )
    params: GenerationOverrides | None = Field(
        default=None, description="Overrides of the generators' defaults (same for every node)."
    )
    graph: str | None = Field(
        default=None,
        description="Named graph of the config (`all`, best_of, cascade, switch, split...); omit for the default.",
        examples=["all"],
    )
    deadline_ms: DeadlineMs | None = Field(
        default=None,
        description="Answer within this time with what the graph has (finish_reason `time`).",
    )
    user: RouteUser | None = Field(default=None, description="The end user: a named graph's split sticks to it.")
    metadata: RouteMetadata | None = Field(
        default=None, description="Up to 16 key-value pairs: a named graph's switch may route on one.", max_length=16
    )

    _blank = field_validator("original_sentence")(not_blank)


class GenerateRequest(StrictRequest):
    """Generate from one prompt (or a batch of prompts) on one node or on all of them."""

    # The schema says what prompt_list() checks: exactly one of `prompt` and `prompts`.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["prompt"],
                    "properties": {"prompt": {"type": "string"}},
                    "not": {"required": ["prompts"], "properties": {"prompts": {"type": "array"}}},
                },
                {
                    "required": ["prompts"],
                    "properties": {"prompts": {"type": "array"}},
                    "not": {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                },
            ],
        },
    )

    prompt: str | None = Field(default=None, min_length=1, examples=["Once upon a time"], json_schema_extra=NOT_BLANK)
    prompts: list[Text] | None = Field(
        default=None, min_length=1, max_length=64, description="A batch of prompts instead of `prompt`."
    )
    model: str | None = Field(default=None, description="Generator node name; omit for every node.")
    params: GenerationOverrides | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str | None) -> str | None:
        return None if v is None else not_blank(v)

    @field_validator("prompts")
    @classmethod
    def _prompts_not_blank(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for i, p in enumerate(v):
                if not _VISIBLE.search(p):
                    raise ValueError(f"prompts[{i}] must not be empty or only whitespace")
        return v

    def prompt_list(self) -> list[str]:
        if (self.prompt is None) == (self.prompts is None):
            from graph.errors import InvalidRequest

            raise InvalidRequest("give exactly one of `prompt` or `prompts`", field="prompt")
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])


class StreamRequest(StrictRequest):
    """Streamed generation as server-sent events."""

    prompt: str = Field(default=DEFAULT_PROMPT, min_length=1, examples=[DEFAULT_PROMPT], json_schema_extra=NOT_BLANK)
    model: str | None = Field(default=None, description="Generator node name; omit for every node.")
    params: GenerationOverrides | None = None
    intermediate_result_interval_ms: Int = Field(
        default=0, ge=0, le=60_000, description="Send fragments no more often than this; 0 = every token."
    )

    _blank = field_validator("prompt")(not_blank)


class ScoreStreamRequest(StreamRequest):
    """generate_score_stream: like StreamRequest, on a named graph, within a deadline."""

    graph: str | None = Field(default=None, description="Named graph of the config; omit for the config's default.")
    deadline_ms: DeadlineMs | None = Field(default=None, description="Answer within this time (finish_reason `time`).")
    user: RouteUser | None = Field(default=None, description="The end user: a named graph's split sticks to it.")
    metadata: RouteMetadata | None = Field(
        default=None, description="Up to 16 key-value pairs: a named graph's switch may route on one.", max_length=16
    )


class ClassifyRequest(StrictRequest):
    """Score texts with the classifier node."""

    texts: list[Text] = Field(min_length=1, max_length=256, examples=[["What a lovely day!"]])

    @field_validator("texts")
    @classmethod
    def _texts_not_blank(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            if not _VISIBLE.search(t):
                raise ValueError(f"texts[{i}] must not be empty or only whitespace")
        return v


class ScoredCompletion(BaseModel):
    """One completion of /generate_score with its score (seed contract: `generated`, `score`)."""

    model: str
    index: int
    generated: str = Field(description="Prompt + completion, as in the seed tutorial.")
    completion: str = Field(description="The new text only.")
    score: float = Field(ge=0.0, le=1.0)
    label: str
    labels: dict[str, float]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, node: str, prompt: str, result: GenerationResult, c: Classification) -> ScoredCompletion:
        return cls(
            model=node,
            index=result.index,
            generated=prompt + result.text,
            completion=result.text,
            score=c.score,
            label=c.label,
            labels=c.labels,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )


class GenerateItem(BaseModel):
    """One model's completions of one prompt (/generate)."""

    model: str = Field(description="Generator node name.")
    prompt: str
    results: list[GenerationResult] = Field(description="num_return_sequences completions, in index order.")


class NodeStats(BaseModel):
    """One generator node's engine counters (since start) and gauges."""

    model_config = ConfigDict(extra="allow")  # engines may add counters; they pass through

    generated_tokens_total: float
    prompt_tokens_total: float
    requests_total: float
    batch_steps_total: float
    prefill_steps_total: float
    cancelled_total: float
    rejected_total: float
    active_rows: float
    queued_requests: float


# ---- events of the graph's SSE streams (one JSON object per `data:` line, then `[DONE]`) ----------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class TokenEvent(BaseModel):
    """New text of one completion (fragments of a completion concatenate to its final text)."""

    type: Literal["token"] = "token"
    model: str
    index: int
    text: str


class FinalEvent(BaseModel):
    """The last fragment of one completion, with why it ended and its token counts."""

    type: Literal["final"] = "final"
    model: str
    index: int
    text: str
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[TokenLogprob] | None = Field(
        default=None, description="With logprobs=true: one entry per generated token of this completion."
    )


class ScoreEvent(Classification):
    """The classifier's verdict on one finished completion (generate_score_stream)."""

    type: Literal["score"] = "score"
    model: str
    index: int


class ErrorEvent(BaseModel):
    """A node failed mid-stream; the other nodes' events go on."""

    type: Literal["error"] = "error"
    error: str
    message: str
    field: str | None = None
    node: str | None = None
    retry_after_s: int | None = None


GraphEvent = Annotated[TokenEvent | FinalEvent | ScoreEvent | ErrorEvent, Field(discriminator="type")]
