"""OpenAI request bodies, validated once at the edge: typed models, refused fields, and the mapping of
OpenAI's controls onto the graph's GenerationOverrides (the one place OpenAI names meet ours).

A field this server does not serve (`functions`, `audio`, ...) is refused with InvalidRequest naming
it, never dropped: a neutral value (`None`, `{}`, `best_of: 1`) is accepted, as it changes nothing.
`response_format` (text, json_object, json_schema) constrains decoding (graph/response_format.py);
`tools`, `tool_choice` and `parallel_tool_calls` become one `ToolCalling` (graph/tools.py), whose
grammar holds every call to its tool's schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from graph.chat_format import ChatMessage, ChatPrompt
from graph.errors import InvalidRequest
from graph.field_errors import describe, field_errors
from graph.params import MAX_LOGIT_BIAS, MAX_NEW_TOKENS, GenerationOverrides
from graph.response_format import ResponseFormat
from graph.tools import FunctionDef, ToolCall, ToolCalling

MAX_STOP = 4  # OpenAI's limit on stop sequences

MAX_N = 8  # GenerationParams.num_return_sequences' bound
MAX_PROMPTS = 64  # as /generate's `prompts`

# Fields of the OpenAI API this server does not serve, each with the values that change nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "store": (None, False),
    "metadata": (None, {}),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "web_search_options": (None,),
    "verbosity": (None,),
    "prompt_cache_key": (None,),
    "safety_identifier": (None,),
    "best_of": (None, 1),
    "suffix": (None, ""),
}

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(description="The arguments object as JSON text.")

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ValueError("must be a JSON object as text") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object as text")
        return value


class MessageToolCall(_Strict):
    """An assistant message's call of a function (as the server sent it)."""

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    """A chat message: system / developer / user / assistant / tool, content a string or text parts.
    An assistant message may carry `tool_calls` (content then may be null); a tool message answers
    one of them (`tool_call_id`)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _roles(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (null only in an assistant message with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls: only in an assistant message (role is {self.role})")
        if (self.tool_call_id is None) == (self.role == "tool"):
            raise ValueError("tool_call_id: required in a tool message, and only there")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"only text parts are supported (got type {kind!r})")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def message(self) -> ChatMessage:
        """This message for the nodes (a `developer` message is a system message to them)."""
        calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in self.tool_calls or []]
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=self.text(), tool_calls=calls, tool_call_id=self.tool_call_id)


class ChatTool(_Strict):
    """One of `tools`: a function."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    """tool_choice naming the function the model must call."""

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class _Controls(_Strict):
    """The controls both endpoints share, with OpenAI's ranges where ours are no tighter."""

    model: str = Field(min_length=1, description="A generator node, or `graph` (every node, each choice scored).")
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="0 = greedy; omitted = the node's default."
    )
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(default=None, description=f"Up to {MAX_STOP} stop sequences.")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) -> bias from -100 (ban) to 100 (force)."
    )
    min_p: float | None = Field(
        default=None, ge=0.0, le=1.0, description="(vLLM's) drop tokens under min_p x the best's probability."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        default=None, max_length=256, description="The caller's end-user id (logged; a split sticks to it)."
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None,
        max_length=16,
        description="Up to 16 key-value pairs (OpenAI's field); a named graph's switch may route on one.",
    )
    response_format: ResponseFormat | None = Field(default=None, description="text, json_object, or json_schema.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens")
        for key, bias in value.items():
            if not key.isdigit():
                raise ValueError(f"{key!r}: keys are token ids (digits)")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"{key!r}: a bias is from -100 to 100 (got {bias})")
        return value

    @model_validator(mode="after")
    def _rules(self) -> _Controls:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream=true")
        if self.temperature == 0.0 and self.n > 1:
            raise ValueError("n: temperature 0 (greedy) gives the same text each time; set n=1 or temperature > 0")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def top_logprobs_count(self) -> int | None:
        """None: no logprobs; else alternatives per token (0 = the chosen token only)."""
        return None

    def overrides(self) -> GenerationOverrides:
        """These controls as overrides of each node's defaults (omitted: the node's default).
        temperature 0 is greedy; a temperature above 0, top_p or n > 1 turn sampling on."""
        sample: bool | None = None
        if self.temperature == 0.0:
            sample = False
        elif self.temperature is not None or self.top_p is not None or self.n > 1:
            sample = True
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        top = self.top_logprobs_count()
        # GenerationOverrides comes from pydantic's create_model (GenerationParams' fields, each optional),
        # which type checkers see as GenerationParams: validate the mapping of the fields set here.
        try:
            return GenerationOverrides.model_validate(
                {
                    "max_new_tokens": self.new_tokens(),
                    "temperature": self.temperature or None,
                    "top_p": self.top_p,
                    "do_sample": sample,
                    "num_return_sequences": self.n,
                    "seed": self.seed,
                    "stop": stop,
                    "logprobs": None if top is None else True,
                    "top_logprobs": top,
                    "response_format": self.response_format,
                    "frequency_penalty": self.frequency_penalty,
                    "presence_penalty": self.presence_penalty,
                    "min_p": self.min_p,
                    "logit_bias": {int(k): float(v) for k, v in self.logit_bias.items()} if self.logit_bias else None,
                    "tools": self.tool_calling(),
                }
            )
        except ValidationError as exc:  # a bound of the graph's params (named in the request's terms by the face)
            raise _invalid(exc) from None

    def tool_calling(self) -> ToolCalling | None:
        return None

    def names(self) -> dict[str, str]:
        """The graph's param names -> this request's field names (for error messages)."""
        return {"max_new_tokens": "max_tokens", "num_return_sequences": "n", "do_sample": "temperature"}


class ChatCompletionRequest(_Controls):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ChatTool] | None = Field(default=None, max_length=64, description="Functions the model may call.")
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = Field(
        default=None, description="auto (the default with tools), none, required, or a named function."
    )
    parallel_tool_calls: bool | None = Field(default=None, description="More than one call per answer (default true).")
    _calling: ToolCalling | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("max_completion_tokens: give max_tokens or max_completion_tokens, not both")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs=true")
        if not self.tools and self.tool_choice not in (None, "none"):
            raise ValueError("tool_choice: needs tools")
        if self.tools and self.response_format is not None and self.response_format.constrained():
            raise ValueError("response_format: not with tools here (the calls' grammar holds the answer)")
        self._calling = self._tool_calling()  # checked here, at the edge: a bad tool is a 400 now
        return self

    def tool_calling(self) -> ToolCalling | None:
        """tools + tool_choice + parallel_tool_calls as one ToolCalling (None without tools)."""
        return self._calling

    def _tool_calling(self) -> ToolCalling | None:
        if not self.tools:
            return None
        choice = self.tool_choice if isinstance(self.tool_choice, str) else None
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        try:
            return ToolCalling(
                tools=[t.function for t in self.tools],
                choice=choice or "auto",
                function=named,
                parallel=self.parallel_tool_calls is not False,
            )
        except ValidationError as exc:
            raise InvalidRequest(_tool_message(exc), field=_tool_field(exc)) from None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def names(self) -> dict[str, str]:
        tokens = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        return {**super().names(), "max_new_tokens": tokens, "prompt": "messages", "message": "messages"}

    def prompt(self) -> ChatPrompt:
        """The conversation for the nodes (a `developer` message is a system message to them)."""
        return ChatPrompt(messages=[m.message() for m in self.messages])


def _tool_message(exc: ValidationError) -> str:
    """ToolCalling's errors in the request's terms (`tools[0].function.name: ...`)."""
    return describe(field_errors(exc.errors(), path=_tool_loc), root="tools")


def _tool_field(exc: ValidationError) -> str:
    return field_errors(exc.errors(), path=_tool_loc)[0][0] or "tools"


def _tool_loc(parts: tuple[Any, ...]) -> str:
    if len(parts) >= 2 and parts[0] == "tools" and isinstance(parts[1], int):
        return _loc(("tools", parts[1], "function", *parts[2:]))
    return _loc(parts)


class CompletionRequest(_Controls):
    """POST /v1/completions."""

    prompt: str | list[str] = Field(description="Text, or a list of texts (one completion set each).")
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5, description="Alternatives per token (legacy logprobs).")

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(p, str) for p in value):
            raise ValueError("token-id prompts are not supported; send text")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_count(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not 1 <= len(texts) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        if any(not t.strip() for t in texts):
            raise ValueError("must not be empty or only whitespace")
        return value

    @model_validator(mode="after")
    def _completion_rules(self) -> CompletionRequest:
        if self.stream and len(self.prompts()) > 1:
            raise ValueError("prompt: stream=true takes one prompt")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo: not supported with logprobs (prompt tokens have no logprobs here)")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def top_logprobs_count(self) -> int | None:
        return self.logprobs


def parse_request(model: type[_Controls], body: Any) -> Any:
    """A JSON body -> a validated request of `model`, or InvalidRequest naming the field and rule."""
    return parse_body(model, body, _NEUTRAL, _invalid)


def parse_body(
    model: type[M], body: Any, neutral: Mapping[str, Collection[Any]], invalid: Callable[[ValidationError], Exception]
) -> M:
    """A JSON body -> a validated `model` (the OpenAI, Messages and Responses faces alike): a body that is no
    object, or a `neutral` field (one this server does not serve) at a value other than its neutral ones, is
    an InvalidRequest naming it; a neutral field at a neutral value is dropped; pydantic's errors go through
    the face's `invalid`."""
    if not isinstance(body, dict):
        raise InvalidRequest("body: must be a JSON object", field="body")
    for name, values in neutral.items():
        if name in body and body[name] not in values:
            raise InvalidRequest(f"{name}: not supported by this server", field=name)
    try:
        return model.model_validate({k: v for k, v in body.items() if k not in neutral})
    except ValidationError as exc:
        raise invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    """pydantic's errors as one InvalidRequest naming each field and rule (the first field in `field`)."""
    unknown = "unknown field (this server serves the OpenAI fields listed in docs/faces/openai.md)"
    errors = field_errors(exc.errors(), unknown=unknown, path=_loc)
    return InvalidRequest(describe(errors, root="body"), field=errors[0][0] or "body")


def _loc(parts: tuple[Any, ...]) -> str:
    """pydantic's error location as the JSON path a caller reads: messages[0].content."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "list[str]", "list[TextPart]", "function-after[_prompt_count(), union[str,list[str]]]"):
            continue  # union branch names, not fields
        else:
            out += f".{p}" if out else str(p)
    return out
