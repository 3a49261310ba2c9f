"""What a generator node returns: completions, per-token log-probabilities and stream events.

Top level: the node returns these and the entry reads them (the node boundary's types)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "time", "cancelled"]


class TopLogprob(BaseModel):
    """One alternative token at a position and its log-probability."""

    model_config = ConfigDict(frozen=True)

    token: str = Field(description="The token's text.")
    logprob: float = Field(description="Natural log of its probability under the model (<= 0).")


class TokenLogprob(TopLogprob):
    """The generated token at one position, its log-probability and the most likely alternatives."""

    top_logprobs: list[TopLogprob] = Field(
        default_factory=list, description="The `top_logprobs` most likely tokens at this position."
    )


class GenerationResult(BaseModel):
    """One finished completion of a prompt."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="Which of the request's num_return_sequences this is (0-based).")
    text: str = Field(description="The completion only, without the prompt.")
    finish_reason: FinishReason = Field(
        description="stop: end-of-sequence token or a stop string; length: max_new_tokens reached; "
        "time: max_time_ms reached; cancelled: the request was cancelled."
    )
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(
        description="Tokens the model generated for this completion (an end-of-sequence token counts; "
        "tokens after a stop string count too)."
    )
    logprobs: list[TokenLogprob] | None = Field(
        default=None, description="One entry per generated token when logprobs=true."
    )
    prompt_messages: int | None = Field(
        default=None,
        description="For a chat prompt: the messages the node kept after cutting the oldest to fit its "
        "prompt-token budget.",
    )
    created: float = Field(description="Unix time when the completion finished.")
    queue_ms: float | None = Field(
        default=None, description="Time the request waited for batch rows (ms); None if never run."
    )
    first_token_ms: float | None = Field(default=None, description="Time from arrival to its first token (ms).")


class StreamEvent(BaseModel):
    """A text fragment of one sequence; the last event of each sequence carries its result."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="Sequence index (0-based).")
    text: str = Field(description="New text since the previous event of this sequence; may be empty.")
    result: GenerationResult | None = Field(default=None, description="Set on the final event of this sequence.")
    tokens: int | None = Field(
        default=None,
        description="Tokens generated in this sequence so far (pruning reads it); final: completion_tokens.",
    )


class Classification(BaseModel):
    """One text's result: the winning label, the score_label's probability, and every label's."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="The most likely label.", examples=["positive"])
    score: float = Field(ge=0.0, le=1.0, description="Probability of the node's score_label.")
    labels: dict[str, float] = Field(description="Probability of every label; they sum to 1.")


class Embedding(BaseModel):
    """One text's sentence embedding from the classifier node's encoder (mean-pooled, L2-normalised)."""

    model_config = ConfigDict(frozen=True)

    vector: list[float] = Field(description="Unit-length embedding (cosine similarity = dot product).")
    tokens: int = Field(ge=0, description="Tokens the text took in the encoder (after truncation).")
