"""Typed requests, replies and stream events of the chat endpoints (/infer, /chat, history, delete)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from graph.entry.schemas import NOT_BLANK, StrictRequest, Usage, not_blank
from graph.params import GenerationOverrides, Int
from graph.results import FinishReason


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000): conversations are stored as text")
    return value


class _Request(StrictRequest):
    user_id: str = Field(
        min_length=1,
        max_length=256,
        json_schema_extra=NOT_BLANK,
        description="Whose conversation: any string the caller chooses (not a secret: docs/operations.md, API keys).",
        examples=["alice"],
    )

    _user_id_not_blank = field_validator("user_id")(not_blank)
    _user_id_no_nul = field_validator("user_id")(no_nul)


class UserRequest(_Request):
    """Names one user's conversation (read its history, or delete it)."""


class InferRequest(_Request):
    """The seed's chat API: one user message in, the model's reply out; the history is kept."""

    message: str = Field(
        min_length=1, description="The user's message.", examples=["Hello! How are you?"], json_schema_extra=NOT_BLANK
    )
    model: str | None = Field(default=None, description="Generator node; omit for the config's chat.default_model.")
    graph: str | None = Field(
        default=None,
        description="A named graph of the config (best_of, cascade) that answers instead of one node.",
        examples=[None],
    )
    params: GenerationOverrides | None = Field(default=None, description="Overrides of the node's generation defaults.")

    _message_not_blank = field_validator("message")(not_blank)
    _message_no_nul = field_validator("message")(no_nul)


class ChatRequest(InferRequest):
    """/chat and /chat_stream: like /infer, with a richer reply."""

    intermediate_result_interval_ms: Int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="chat_stream only: send fragments no more often than this; 0 = every token.",
    )


class InferReply(BaseModel):
    """The seed's reply shape."""

    message: str = Field(description="The model's reply.")


class ChatReply(BaseModel):
    """One answered turn."""

    user_id: str
    message: str = Field(description="The model's reply.")
    turn: int = Field(description="This turn's number in the user's conversation (1 = first).")
    model: str = Field(description="The generator node that answered.")
    finish_reason: FinishReason
    usage: Usage
    graph: str | None = Field(default=None, description="The named graph that decided (its winner's node is `model`).")
    candidate: str | None = Field(
        default=None, description="The named graph's winning candidate (usage: all candidates')."
    )
    context_turns: int | None = Field(
        default=None,
        description="Past turns the node kept in the prompt (after max_turns, then its token budget).",
    )


class StoredMessage(BaseModel):
    """One message of a kept conversation."""

    turn: int
    role: Literal["user", "assistant"]
    content: str
    model: str | None = Field(default=None, description="The node that wrote it (assistant messages).")
    created: float = Field(description="Unix time it was stored.")


class History(BaseModel):
    """A user's conversation, oldest message first."""

    user_id: str
    turns: int
    messages: list[StoredMessage]


class Forgotten(BaseModel):
    """What deleting a user's history removed."""

    user_id: str
    deleted_messages: int


class TurnEvent(BaseModel):
    """chat_stream's last event before [DONE]: the turn was stored (ChatReply's fields)."""

    type: Literal["turn"] = "turn"
    reply: ChatReply
