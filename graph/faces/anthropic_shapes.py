"""Anthropic Messages API request bodies, validated once at the edge, and the face's one error mapping.

A request becomes the OpenAI face's ChatCompletionRequest (`to_chat`), so a Messages call runs through
the same routes (nodes, `graph:<name>`), metering and structured decoding as a chat completion. A field
this server does not serve is refused with a 400 naming it; a neutral value is accepted. Errors answer
in Anthropic's shape, with the graph's HTTP status:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: ..."}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graph.errors import GraphError, InvalidRequest
from graph.faces.openai_errors import rename
from graph.faces.openai_requests import ChatCompletionRequest
from graph.field_errors import describe, field_errors
from graph.params import MAX_NEW_TOKENS, MAX_STOP_STRINGS, GenerationOverrides

# Fields of the Messages API this server does not serve, each with the values that change nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, {"type": "none"}, {"type": "auto"}),
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


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _text_blocks_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for block in value:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind != "text":
                    raise ValueError(f"only text blocks are supported (got type {kind!r})")
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)


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
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_STRINGS)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0, description="0 = greedy; omitted = the node's.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    stream: bool = False
    metadata: Metadata | None = None
    output_config: OutputConfig | None = Field(default=None, description="`format`: a JSON Schema the answer follows.")
    cache_control: dict[str, Any] | None = Field(default=None, description="Accepted; prefixes are reused anyway.")

    @model_validator(mode="after")
    def _rules(self) -> MessagesRequest:
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must be the user's (assistant prefill is not supported)")
        if any(not s for s in self.stop_sequences or []):
            raise ValueError("stop_sequences: a stop sequence must not be empty")
        return self

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "".join(b.text for b in self.system) or None

    def to_chat(self, *, stream: bool) -> ChatCompletionRequest:
        """This request as the OpenAI face's chat completion (one choice; usage reported when streamed)."""
        system = self.system_text()
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": m.role, "content": m.text()} for m in self.messages
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
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
            chat = _Chat.model_validate({k: v for k, v in body.items() if v is not None})
        except ValidationError as exc:
            raise invalid(exc, NAMES) from None
        return chat.with_top_k(self.top_k)


class _Chat(ChatCompletionRequest):
    """A chat completion with Anthropic's `top_k` (OpenAI has none)."""

    top_k: int | None = None

    def with_top_k(self, top_k: int | None) -> _Chat:
        return self if top_k is None else self.model_copy(update={"top_k": top_k})

    def overrides(self) -> GenerationOverrides:
        base = super().overrides()
        if self.top_k is None:
            return base
        sample = None if self.temperature == 0.0 else True  # top_k samples, unless greedy was asked for
        try:
            return GenerationOverrides.model_validate(
                {**base.model_dump(exclude_none=True), "top_k": self.top_k, "do_sample": sample}
            )
        except ValidationError as exc:
            raise invalid(exc, NAMES) from None

    def names(self) -> dict[str, str]:
        return {**super().names(), **NAMES}


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
    if not isinstance(body, dict):
        raise InvalidRequest("body: must be a JSON object", field="body")
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise InvalidRequest(f"{name}: not supported by this server", field=name)
    try:
        return model.model_validate({k: v for k, v in body.items() if k not in _NEUTRAL})
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError, names: Mapping[str, str] | None = None) -> InvalidRequest:
    unknown = "unknown field (this server serves the Messages fields listed in docs/faces/anthropic.md)"
    errors = field_errors(exc.errors(), unknown=unknown, path=_loc)
    errors = [(rename(f, names or {}), rename(m, names or {})) for f, m in errors]
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
