"""Chat messages -> a node's prompt text: its tokenizer's chat template, or the plain transcript format.

A chat reaches a generator node as a `ChatPrompt` (the messages, not yet formatted); the node formats
it exactly once with `render_chat`, because only the node holds the tokenizer:

- a node with `chat_template: true` uses its tokenizer's chat template (with the generation prompt);
- any other node (a base model such as Gemma 3 270M, the tiny test models) gets the transcript format:

      System: You are terse.
      User: Name a colour.
      Assistant: Red.
      User: Another one.
      Assistant:

  one `Role: content` line per message ("developer" shows as "System"; a message's own newlines are
  kept), then `Assistant:` for the model to continue. The model's reply is whatever follows.

A plain string prompt (`/generate`) is unchanged: a `chat_template` node sends it as one user message
through the template, as before; other nodes take it as it is.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant"]
TRANSCRIPT_NAMES: dict[str, str] = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


class ChatMessage(BaseModel):
    """One turn of a conversation, its content as plain text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class ChatPrompt(BaseModel):
    """A conversation for a generator node to format with its own template (see `render_chat`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far, oldest first.")

    def chars(self) -> int:
        return sum(len(m.content) for m in self.messages)

    def last_user_text(self) -> str:
        """The newest user message (what a chat reply answers; the scored text starts with it)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


# What crosses the node boundary as a prompt: raw text (/generate), or a conversation to format.
Prompt = Union[str, ChatPrompt]


def transcript(messages: list[ChatMessage]) -> str:
    """The plain transcript format of nodes without a chat template (module docstring)."""
    lines = [f"{TRANSCRIPT_NAMES[m.role]}: {m.content}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def render_chat(messages: list[ChatMessage], tokenizer: Any, use_template: bool) -> str:
    """`messages` as prompt text for a node: the tokenizer's chat template when `use_template`
    (the node's `chat_template: true`), else the transcript format. The template's text already
    holds its special tokens; tokenize it with add_special_tokens=False."""
    if not use_template:
        return transcript(messages)
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return str(text)


def prompt_chars(prompt: Prompt) -> int:
    return len(prompt) if isinstance(prompt, str) else prompt.chars()


def score_text(prompt: Prompt, completion: str) -> str:
    """The text the classifier scores for a completion: the prompt (a chat's last user message) + it."""
    return (prompt if isinstance(prompt, str) else prompt.last_user_text()) + completion
