"""Chat messages -> one node's prompt tokens: its chat template (or the plain transcript), cut to fit.

Shared by every face that talks in messages (chat sessions; the OpenAI face sends a `ChatPrompt`
through the graph's fan-out, and the engine fits it the same way). It runs on the
generator node, which holds the tokenizer: the entry sends messages, the node formats them and
counts tokens, so a remote node works the same and the entry never loads a tokenizer.

A node with `chat_template: true` renders the messages with its tokenizer's template (with the
generation prompt). A node without one uses the plain transcript, one line per message:

    System: You are terse.
    User: Hello
    Assistant: Hi there.
    User: How are you?
    Assistant:

and its reply ends at the next "\\nUser:" (added as a stop string; `clean_reply` drops it).
When the prompt is over the token budget, the oldest messages go first (whole turns: the kept part
always starts at a user message); leading system messages and the last message always stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from graph.errors import InvalidRequest
from graph.params import MAX_STOP_STRINGS, GenerationParams

PLAIN_STOP = "\nUser:"
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"] = Field(description="Who said it.", examples=["user"])
    content: str = Field(description="What was said.", examples=["Hello!"])


@dataclass(frozen=True)
class FittedChat:
    ids: list[int]  # the prompt's token ids, ready for the engine (no further templating)
    kept: int  # how many of the given messages are in it
    params: GenerationParams  # the request's params, plus the plain transcript's stop string


def chat_params(params: GenerationParams, *, template: bool) -> GenerationParams:
    """A plain-transcript reply ends where the model starts the user's next line."""
    if template or PLAIN_STOP in params.stop or len(params.stop) >= MAX_STOP_STRINGS:
        return params
    return params.model_copy(update={"stop": [*params.stop, PLAIN_STOP]})


def render(tokenizer: Any, messages: list[ChatMessage], *, template: bool) -> list[int]:
    """The token ids of `messages` with the generation prompt for the assistant's next reply."""
    if template:
        text = tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    lines = [f"{PLAIN_NAMES[m.role]}: {m.content}" for m in messages]
    return list(tokenizer("\n".join([*lines, "Assistant:"]), add_special_tokens=True)["input_ids"])


def fit_chat(
    tokenizer: Any, messages: list[ChatMessage], params: GenerationParams, *, template: bool, max_tokens: int
) -> FittedChat:
    """The longest recent part of `messages` whose prompt fits in `max_tokens`; InvalidRequest
    (field `message`) when even the system messages and the last message alone do not fit."""
    if not messages:
        raise InvalidRequest("messages: at least one message is needed", field="messages")
    head = 0
    while head < len(messages) - 1 and messages[head].role == "system":
        head += 1
    system, rest = messages[:head], messages[head:]
    starts = [i for i, m in enumerate(rest) if i == len(rest) - 1 or m.role == "user"]
    ids: list[int] = []
    for start in starts:  # oldest first: the first fit keeps the most history
        ids = render(tokenizer, system + rest[start:], template=template)
        if len(ids) <= max_tokens:
            return FittedChat(ids, len(system) + len(rest) - start, chat_params(params, template=template))
    raise InvalidRequest(
        f"message: {len(ids)} prompt tokens even without history, above this node's budget of "
        f"{max_tokens} tokens (max_prompt_tokens, and the context less max_new_tokens); send a shorter message",
        field="message",
    )


def clean_reply(text: str) -> str:
    """A reply as kept in the history: without the plain transcript's next-speaker tag, trimmed, and
    each NUL character (a byte token a model can sample; PostgreSQL text cannot hold it) as U+FFFD."""
    return text.removesuffix(PLAIN_STOP).strip().replace("\x00", "\ufffd")


# ---- a conversation as a prompt of the graph's fan-out (the OpenAI face) ----------------------------


class ChatPrompt(BaseModel):
    """A conversation sent through the graph's generate/stream fan-out in place of a text prompt;
    each node turns it into its own prompt ids with `fit_chat` (template or transcript), exactly once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far, oldest first.")

    def chars(self) -> int:
        return sum(len(m.content) for m in self.messages)

    def last_user_text(self) -> str:
        """The newest user message (what a reply answers; the scored text starts with it)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


# What crosses the node boundary as a prompt of generate/generate_stream: text (/generate), or a chat.
Prompt = str | ChatPrompt


def prompt_chars(prompt: Prompt) -> int:
    return len(prompt) if isinstance(prompt, str) else prompt.chars()


def score_text(prompt: Prompt, completion: str) -> str:
    """The text the classifier scores for a completion: the prompt (a chat's last user message) + it."""
    return (prompt if isinstance(prompt, str) else prompt.last_user_text()) + completion
