"""Anthropic Messages API request bodies, validated once at the edge, and the face's one error mapping.

A request becomes the OpenAI face's ChatCompletionRequest (`to_chat`), so a Messages call runs through
the same routes (nodes, `graph:<name>`), metering and structured decoding as a chat completion. A field
this server does not serve is refused with a 400 naming it; a neutral value is accepted. Errors answer
in Anthropic's shape, with the graph's HTTP status:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: ..."}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graph.chat_format import ChatMessage
from graph.entry.faces.chat_run import ChatRun, text_view
from graph.entry.faces.openai_errors import rename
from graph.entry.faces.openai_requests import MAX_STOP, parse_body
from graph.errors import GraphError, InvalidRequest
from graph.field_errors import describe, field_errors
from graph.params import MAX_NEW_TOKENS
from graph.tools import FunctionDef, ToolCall, ToolCalling

# Fields of the Messages API this server does not serve, each with the values that change nothing.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "thinking": (None, {"type": "disabled"}),
    "service_tier": (None, "auto", "standard_only"),
    "container": (None,),
    "mcp_servers": (None, []),
    "context_management": (None,),
    "inference_geo": (None,),
    "diagnostics": (None,),
    "speed": (None, "standard"),
}
# Anthropic's error `type` for each HTTP status the graph answers with.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TextBlock(_Strict):
    """A text content block (`cache_control` and `citations` are accepted: they change nothing here)."""

    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[Any] | None = None


class ToolUseBlock(_Strict):
    """An assistant's call of a tool (sent back in the history of a tool round trip)."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=128)
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(_Strict):
    """A tool's result, in a user message, answering the tool_use of id `tool_use_id`."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=128)
    content: str | list[TextBlock] = ""
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None

    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        return f"Error: {text}" if self.is_error else text


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _known_blocks(cls, value: Any) -> Any:
        if isinstance(value, list):
            for block in value:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind not in ("text", "tool_use", "tool_result"):
                    raise ValueError(f"only text, tool_use and tool_result blocks are supported (got type {kind!r})")
        return value

    @model_validator(mode="after")
    def _blocks_of_the_role(self) -> InputMessage:
        wrong, rule = (
            (ToolResultBlock, "a tool_result block goes in a user message")
            if self.role == "assistant"
            else (ToolUseBlock, "a tool_use block goes in an assistant message")
        )
        if isinstance(self.content, list) and any(isinstance(b, wrong) for b in self.content):
            raise ValueError(f"content: {rule}")
        return self

    def chat_messages(self) -> list[ChatMessage]:
        """This message as the conversation's messages: an assistant's text and calls; a user's tool
        results (one `tool` message each, in order) and then its text."""
        if isinstance(self.content, str):
            return [ChatMessage(role=self.role, content=self.content)]
        text = "".join(b.text for b in self.content if isinstance(b, TextBlock))
        if self.role == "assistant":
            calls = [
                ToolCall(id=b.id, name=b.name, arguments=json.dumps(b.input))
                for b in self.content
                if isinstance(b, ToolUseBlock)
            ]
            return [ChatMessage(role="assistant", content=text, tool_calls=calls)]
        results = [
            ChatMessage(role="tool", content=b.text(), tool_call_id=b.tool_use_id)
            for b in self.content
            if isinstance(b, ToolResultBlock)
        ]
        return [*results, ChatMessage(role="user", content=text)] if text or not results else results


class Tool(_Strict):
    """A client tool: its name, what it does, and the JSON Schema of its input."""

    name: str = Field(description="The tool's name (letters, digits, _ and -; at most 64).")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(_Strict):
    """auto: text or calls; any: at least one call; tool: a call of `name`; none: text."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class JsonOutputFormat(_Strict):
    """`output_config.format`: the answer is an instance of `schema` (structured output)."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class OutputConfig(_Strict):
    format: JsonOutputFormat | None = None
    effort: None = Field(default=None, description="Not served (no reasoning models here); null only.")


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


class MessagesRequest(_Strict):
    """POST /v1/messages (and, without max_tokens, /v1/messages/count_tokens)."""

    model: str = Field(min_length=1, description="A generator node or a named graph (`graph:<name>`).")
    messages: list[InputMessage] = Field(min_length=1, description="The conversation; the last one is the user's.")
    max_tokens: int = Field(ge=1, le=MAX_NEW_TOKENS, description="Most tokens to generate.")
    system: str | list[TextBlock] | None = Field(default=None, description="The system prompt.")
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0, description="0 = greedy; omitted = the node's.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    stream: bool = False
    metadata: Metadata | None = None
    output_config: OutputConfig | None = Field(default=None, description="`format`: a JSON Schema the answer follows.")
    cache_control: dict[str, Any] | None = Field(default=None, description="Accepted; prefixes are reused anyway.")
    tools: list[Tool] | None = Field(default=None, description="Client tools; every call follows its input_schema.")
    tool_choice: ToolChoice | None = None

    @model_validator(mode="after")
    def _rules(self) -> MessagesRequest:
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must be the user's (assistant prefill is not supported)")
        if any(not s for s in self.stop_sequences or []):
            raise ValueError("stop_sequences: a stop sequence must not be empty")
        if self.tool_choice is not None and not self.tools and self.tool_choice.type != "none":
            raise ValueError("tool_choice: needs tools")
        if self.tool_choice is not None and (self.tool_choice.type == "tool") != (self.tool_choice.name is not None):
            raise ValueError("tool_choice: name goes with type tool, and type tool needs a name")
        return self

    def calling(self) -> ToolCalling | None:
        """The request's tools as graph/tools.py's ToolCalling (None: no tools)."""
        if not self.tools:
            return None
        choice = self.tool_choice or ToolChoice(type="auto")
        mode = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}[choice.type]
        try:
            return ToolCalling(
                tools=[
                    FunctionDef(name=t.name, description=t.description, parameters=t.input_schema) for t in self.tools
                ],
                choice=mode,  # pyright: ignore[reportArgumentType]  one of ToolChoiceMode's values
                function=choice.name,
                parallel=not choice.disable_parallel_tool_use,
            )
        except ValidationError as exc:
            raise invalid(exc, {"function": "tool_choice", "parameters": "input_schema"}, root="tools") from None

    def conversation(self) -> list[ChatMessage]:
        system = self.system_text()
        head = [ChatMessage(role="system", content=system)] if system else []
        return head + [c for m in self.messages for c in m.chat_messages()]

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "".join(b.text for b in self.system) or None

    def to_chat(self, *, stream: bool) -> ChatRun:
        """This request as the OpenAI face's chat completion (one choice; usage reported when streamed)."""
        conversation = self.conversation()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": text_view(conversation),
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop_sequences,
            "stream": stream,
            "user": self.metadata.user_id if self.metadata else None,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.output_config is not None and self.output_config.format is not None:
            schema = {"name": "output", "schema": self.output_config.format.schema_, "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        try:
            chat = ChatRun.model_validate({k: v for k, v in body.items() if v is not None})
        except ValidationError as exc:
            raise invalid(exc, NAMES) from None
        return chat.carrying(conversation, self.calling())


# The graph's and the OpenAI face's names -> this API's (for error messages).
NAMES = {
    "max_new_tokens": "max_tokens",
    "stop": "stop_sequences",
    "prompt": "messages",
    "message": "messages",
    "response_format": "output_config",
    "json_schema": "format",
}


class CountTokensRequest(MessagesRequest):
    """POST /v1/messages/count_tokens: a Messages request without max_tokens."""

    max_tokens: int = Field(default=1, ge=1, le=MAX_NEW_TOKENS)


class TokenCount(BaseModel):
    input_tokens: int


def parse_messages(model: type[MessagesRequest], body: Any) -> Any:
    """A JSON body -> a validated request, or InvalidRequest naming the field and the rule."""
    return parse_body(model, body, NEUTRAL, invalid)


def invalid(exc: ValidationError, names: Mapping[str, str] | None = None, root: str = "") -> InvalidRequest:
    unknown = "unknown field (this server serves the Messages fields listed in docs/faces/anthropic.md)"
    errors = field_errors(exc.errors(), unknown=unknown, path=_loc)
    errors = [(rename(f, names or {}) or root, rename(m, names or {})) for f, m in errors]
    return InvalidRequest(describe(errors, root="body"), field=errors[0][0] or "body")


def _loc(parts: tuple[Any, ...]) -> str:
    """pydantic's error location as the JSON path a caller reads: messages[0].content."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "list[TextBlock]", "list[str]"):
            continue  # union branch names, not fields
        else:
            out += f".{p}" if out else str(p)
    return out


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    """Anthropic's error body."""

    type: Literal["error"] = "error"
    error: ErrorDetail


def error_type(status: int) -> str:
    return _TYPES.get(status, "api_error")


def anthropic_error(err: GraphError, names: Mapping[str, str] | None = None) -> ErrorResponse:
    """The one place a GraphError becomes this face's body (its status stays the graph's)."""
    message = rename(err.message, {**NAMES, **(names or {})})
    return ErrorResponse(error=ErrorDetail(type=error_type(err.status), message=message))
