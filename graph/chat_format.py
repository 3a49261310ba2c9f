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
With tools (`params.tools`), a template that knows tools gets them and the messages' calls and
results in Hugging Face's shape; any other prompt gets graph/tools.py's generic format.
When the prompt is over the token budget, the oldest messages go first (whole turns: the kept part
always starts at a user message); leading system messages and the last message always stay.


Top level: the node renders prompts with it; the entry counts and scores the same text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from graph.errors import InvalidRequest
from graph.params import MAX_STOP_STRINGS, GenerationParams
from graph.tools import ToolCall, ToolCalling, template_knows_tools, tool_prompt, tool_result_text

PLAIN_STOP = "\nUser:"
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who said it.", examples=["user"])
    content: str = Field(description="What was said.", examples=["Hello!"])
    tool_calls: list[ToolCall] = Field(default_factory=list, description="An assistant's calls of tools.")
    tool_call_id: str | None = Field(default=None, description="A tool message: the call it answers.")

    def template_dict(self) -> dict[str, Any]:
        """This message as Hugging Face chat templates with a tool format take it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    def generic(self) -> ChatMessage:
        """This message in the generic tool format: calls as blocks in the text, a result as a user message."""
        if self.role == "tool":
            return ChatMessage(role="user", content=tool_result_text(self.content))
        if self.tool_calls:
            blocks = "\n".join(c.block() for c in self.tool_calls)
            return ChatMessage(role=self.role, content=f"{self.content}\n{blocks}" if self.content else blocks)
        return self


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


def render(
    tokenizer: Any, messages: list[ChatMessage], *, template: bool, tools: ToolCalling | None = None
) -> list[int]:
    """The token ids of `messages` with the generation prompt for the assistant's next reply."""
    if template and template_knows_tools(tokenizer):
        text = tokenizer.apply_chat_template(
            [m.template_dict() for m in messages],
            tools=tools.template_tools() if tools is not None else None,
            tokenize=False,
            add_generation_prompt=True,
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    messages = generic_messages(messages, tools)
    if template:
        text = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    lines = [f"{PLAIN_NAMES[m.role]}: {m.content}" for m in messages]
    return list(tokenizer("\n".join([*lines, "Assistant:"]), add_special_tokens=True)["input_ids"])


def generic_messages(messages: list[ChatMessage], tools: ToolCalling | None) -> list[ChatMessage]:
    """Tools, calls and results in graph/tools.py's generic format: plain system/user/assistant
    messages (the tool instructions join the leading system message, or come first as one)."""
    out = [m.generic() for m in messages]
    if tools is None:
        return out
    prompt = tool_prompt(tools)
    if out and out[0].role == "system":
        return [ChatMessage(role="system", content=f"{out[0].content}\n\n{prompt}"), *out[1:]]
    return [ChatMessage(role="system", content=prompt), *out]


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
        ids = render(tokenizer, system + rest[start:], template=template, tools=params.tools)
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
