"""OpenAI Responses API request bodies (POST /v1/responses), validated once at the edge.

A request becomes the OpenAI face's ChatCompletionRequest (`to_chat`): `instructions` is the system
message, the stored conversation of `previous_response_id` comes next, then `input` (a string is one user
message; message items keep their roles, `developer` is a system message). `text.format` is structured
output (graph/response_format.py). A field this server does not serve is a 400 naming it; a neutral value
is accepted.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph.chat_format import ChatMessage
from graph.entry.faces.chat_run import ChatRun, text_view
from graph.entry.faces.openai_requests import parse_body
from graph.errors import InvalidRequest
from graph.field_errors import describe, field_errors
from graph.params import MAX_NEW_TOKENS
from graph.tools import FunctionDef, ToolCall, ToolCalling

NEUTRAL: dict[str, tuple[Any, ...]] = {
    "max_tool_calls": (None,),
    "reasoning": (None,),
    "include": (None, []),
    "background": (None, False),
    "truncation": (None, "disabled"),
    "service_tier": (None, "auto", "default"),
    "top_logprobs": (None, 0),
    "conversation": (None,),
    "prompt": (None,),
    "prompt_cache_key": (None,),
    "prompt_cache_retention": (None,),
    "safety_identifier": (None,),
    "stream_options": (None, {}, {"include_obfuscation": False}, {"include_obfuscation": True}),
}
_UNION_BRANCHES = {"str", "InputMessage", "FunctionCallItem", "FunctionCallOutputItem", "NamedFunction"}
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
NAMES = {"max_new_tokens": "max_output_tokens", "max_tokens": "max_output_tokens", "prompt": "input"}


class ResponseNotFound(InvalidRequest):
    """No stored response of this id under the caller's key (another key's is not found either). 404."""

    status = 404
    kind = "not_found"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class InputMessage(_Strict):
    """A message input item (the SDK's EasyInputMessage and ResponseInputItem message)."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("input_text", "output_text"):
                    raise ValueError(f"only input_text and output_text parts are supported (got type {kind!r})")
        return value

    def message(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class FunctionCallItem(_Strict):
    """An earlier answer's call, sent back in the input (as the SDK's output item)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    """A call's result: `output` answers the call of id `call_id`."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem


class FunctionToolDef(_Strict):
    """A function tool: its name, what it does, the JSON Schema of its arguments."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str


class TextFormat(_Strict):
    """`text.format`: text, json_object, or json_schema (name, schema, strict, description)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    def response_format(self) -> dict[str, Any]:
        """As the chat completion's `response_format`."""
        if self.type != "json_schema":
            return {"type": self.type}
        if self.schema_ is None:
            raise InvalidRequest("text.format.schema: required with type json_schema", field="text.format.schema")
        member = {"name": self.name or "response", "schema": self.schema_, "strict": self.strict}
        if self.description is not None:
            member["description"] = self.description
        return {"type": "json_schema", "json_schema": member}


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


class ResponsesRequest(_Strict):
    """POST /v1/responses."""

    model: str = Field(min_length=1, description="A generator node or a named graph (`graph:<name>`).")
    input: str | list[InputItem] = Field(description="Text (one user message), or message and function call items.")
    instructions: str | None = Field(default=None, description="The system message (not carried to the next).")
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = Field(default=True, description="Keep the response (for GET and previous_response_id).")
    previous_response_id: str | None = Field(default=None, description="Continue a stored response's conversation.")
    text: TextConfig | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=256)
    tools: list[FunctionToolDef] | None = Field(default=None, description="Function tools; calls follow parameters.")
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: str | list[InputItem]) -> str | list[InputItem]:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty or only whitespace")
        if isinstance(value, list) and not value:
            raise ValueError("give at least one item")
        return value

    def messages(self) -> list[ChatMessage]:
        """This request's input as chat messages (without instructions or history): calls join the
        assistant message before them (or make one), an output is a `tool` message."""
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        out: list[ChatMessage] = []
        for item in self.input:
            if isinstance(item, InputMessage):
                out.append(item.message())
            elif isinstance(item, FunctionCallOutputItem):
                out.append(ChatMessage(role="tool", content=item.text(), tool_call_id=item.call_id))
            else:
                call = ToolCall(id=item.call_id, name=item.name, arguments=_arguments(item))
                if out and out[-1].role == "assistant":
                    out[-1] = out[-1].model_copy(update={"tool_calls": [*out[-1].tool_calls, call]})
                else:
                    out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        return out

    def calling(self) -> ToolCalling | None:
        """The request's tools as graph/tools.py's ToolCalling (None: no tools)."""
        tools = self.tools
        if not tools:
            if self.tool_choice not in (None, "none", "auto"):
                raise InvalidRequest("tool_choice: needs tools", field="tool_choice")
            return None
        named = self.tool_choice if isinstance(self.tool_choice, NamedFunction) else None
        choice = "required" if named else (self.tool_choice if isinstance(self.tool_choice, str) else "auto")
        try:
            return ToolCalling(
                tools=[FunctionDef(name=t.name, description=t.description, **_parameters(t)) for t in tools],
                choice=choice,
                function=named.name if named else None,
                parallel=self.parallel_tool_calls is not False,
            )
        except ValidationError as exc:
            errors = field_errors(exc.errors(), path=_loc)
            raise InvalidRequest(describe(errors, root="tools"), field=errors[0][0] or "tools") from None

    def to_chat(self, history: list[ChatMessage], *, stream: bool) -> ChatRun:
        """The chat completion this response runs as: instructions, the stored history, then the input."""
        system = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        conversation = [*system, *history, *self.messages()]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": text_view(conversation),
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stream": stream,
            "user": self.user,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.text is not None and self.text.format is not None:
            body["response_format"] = self.text.format.response_format()
        try:
            chat = ChatRun.model_validate({k: v for k, v in body.items() if v is not None})
        except ValidationError as exc:
            raise invalid(exc) from None
        return chat.carrying(conversation, self.calling())


def _parameters(tool: FunctionToolDef) -> dict[str, Any]:
    return {} if tool.parameters is None else {"parameters": tool.parameters}


def _arguments(item: FunctionCallItem) -> str:
    try:
        value = json.loads(item.arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"input: function_call {item.call_id!r}: arguments must be a JSON object", field="input")
    return item.arguments


def parse_responses(body: Any) -> ResponsesRequest:
    """A JSON body -> a validated Responses request, or InvalidRequest naming the field and the rule."""
    return parse_body(ResponsesRequest, body, NEUTRAL, invalid)


def check_id(response_id: str, field: str = "response_id") -> str:
    """A response id as this server makes them (`resp_` and 32 hex digits); else not found."""
    if not RESPONSE_ID.fullmatch(response_id):
        raise ResponseNotFound(f"{field}: no response {response_id!r} (ids look like resp_<32 hex>)", field=field)
    return response_id


def invalid(exc: ValidationError) -> InvalidRequest:
    unknown = "unknown field (this server serves the Responses fields listed in docs/faces/openai.md)"
    errors = field_errors(exc.errors(), unknown=unknown, path=_loc)
    return InvalidRequest(describe(errors, root="body"), field=errors[0][0] or "body")


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and (p in _UNION_BRANCHES or p.startswith("list[")):
            continue  # union branch names, not fields
        else:
            out += f".{p}" if out else str(p)
    return out
