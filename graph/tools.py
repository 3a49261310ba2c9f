"""Tool calling, independent of any face: tool definitions, `tool_choice`, the grammar that holds a call
to its tool's JSON Schema, parsing generated text back into calls, and rendering tools, calls and
results into a prompt.

API summary (for a face: OpenAI chat, Responses, Anthropic Messages, ...):

    calling = ToolCalling(tools=[FunctionDef(name=..., description=..., parameters={...})],
                          choice="auto" | "none" | "required", function=None | "name", parallel=True)
        One validated model (frozen, extra="forbid"); it rides in `GenerationParams.tools`, so the
        node's sampler holds every token to `calling.grammar()` (llguidance, torch and onnx alike)
        and the node renders the tools into the prompt (graph/chat_format.py).
    calling.grammar()      -> llguidance grammar text, or None (no constraint needed)
    parse_calls(text, calling) -> Parsed(content, calls): a finished completion as text and calls
    made_call(text, finish_reason, calling) -> bool: a finished answer of valid calls only
    CallStream(calling)    .feed(fragment) / .finish() -> [str | ToolCall, ...]: the same, while
                            streaming (text as it comes; each call once its block is closed)
    ToolCall(id, name, arguments)   arguments: the JSON text of the arguments object
    ChatMessage (graph/chat_format.py) carries `tool_calls` (assistant) and `tool_call_id` (role "tool")

What the model writes (one format for every model, the one Hermes/Qwen-style templates teach):

    <tool_call>
    {"name":"get_weather","arguments":{"city":"Paris"}}
    </tool_call>

one block per call, blocks separated by a newline (more than one only with `parallel`).
The grammar per choice:
    required / named   one or more blocks (one with parallel=False), each name one of the tools (or
                       the named one) and its arguments an instance of that tool's `parameters`
    auto               text that does not start with "<tool_call>", OR the blocks above: the model
                       chooses with its first token, and a call it starts is held to the schema
    none               text that does not start with "<tool_call>"
So every call parses and validates; only a completion cut by max_new_tokens can end inside a call
(its finish_reason says "length"; the calls closed before the cut are kept).

Prompt: a chat template that knows tools (its source mentions `tools`) gets them through
`apply_chat_template(..., tools=...)`, with assistant `tool_calls` and `tool` messages in the
Hugging Face shape. Any other model gets the generic format: `tool_prompt(calling)` as a system
message (what to write and each tool as JSON), an assistant's calls as the blocks above in its
content, and a tool result as a user message `<tool_response>\n...\n</tool_response>` (a "Tool:"
line in the plain transcript).


Top level: the parameters (params.py) and prompts (chat_format.py) both sides use carry tools; the
entry's faces parse the calls."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TOOLS = 64
MAX_PARAMETERS_CHARS = 64_000
CALL_OPEN, CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
_MARK = CALL_OPEN.rstrip("\n")  # "<tool_call>": what a call starts with
_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
# Compact JSON (no free whitespace), as structured output: a weak model cannot spend its budget on blanks.
_JSON_OPTIONS = {"whitespace_flexible": False}
# Text that is not a call: anything at all, except a start with the call marker.
_TEXT = r"TEXT: /(?s:.+)/ & ~/(?s:<tool_call>.*)/"

ToolChoiceMode = Literal["auto", "none", "required"]


class FunctionDef(BaseModel):
    """One tool: a function the model may call, its arguments an instance of `parameters`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The function's name (OpenAI's rule).")
    description: str | None = Field(default=None, max_length=4000, description="What it does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: dict(_EMPTY_OBJECT), description="A JSON Schema of its arguments object."
    )
    strict: bool | None = Field(default=None, description="Accepted; calls always follow the schema here.")

    def spec(self) -> dict[str, Any]:
        """As the model reads it (generic prompt) and as chat templates take it (inside a tool)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


class ToolCalling(BaseModel):
    """The tools of one request and how the model may use them (OpenAI's tools, tool_choice and
    parallel_tool_calls, in one face-independent shape)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    tools: list[FunctionDef] = Field(min_length=1, max_length=MAX_TOOLS, description="The tools.")
    choice: ToolChoiceMode = Field(
        default="auto", description="auto = text or calls; none = text; required = one call at least."
    )
    function: str | None = Field(default=None, description="A named tool_choice: the model must call this one.")
    parallel: bool = Field(default=True, description="More than one call in one answer.")

    @model_validator(mode="after")
    def _valid(self) -> ToolCalling:
        names = [t.name for t in self.tools]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"tools: the name {dup!r} is given twice")
        if self.function is not None and self.function not in names:
            raise ValueError(f"tool_choice: {self.function!r} is not one of the tools ({names})")
        for i, t in enumerate(self.tools):
            if len(json.dumps(t.parameters)) > MAX_PARAMETERS_CHARS:
                raise ValueError(f"tools[{i}].function.parameters: above {MAX_PARAMETERS_CHARS} characters")
            if t.parameters.get("type", "object") != "object":
                raise ValueError(f"tools[{i}].function.parameters: must describe an object (type: object)")
        from graph.response_format import grammar_error

        problem = grammar_error(self.grammar())
        if problem:
            raise ValueError(f"tools: llguidance cannot compile a tool's parameters: {problem}")
        return self

    def calls_allowed(self) -> bool:
        return self.choice != "none" or self.function is not None

    def callable_tools(self) -> list[FunctionDef]:
        return [t for t in self.tools if self.function is None or t.name == self.function]

    def call_schema(self) -> dict[str, Any]:
        """The JSON Schema of one call: {"name": <a callable tool>, "arguments": <its parameters>}."""
        options = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.callable_tools()
        ]
        schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
        return {**schema, "x-guidance": _JSON_OPTIONS}

    def grammar(self) -> str:
        """The llguidance grammar of this request's answers (see the module docstring)."""
        from llguidance import LLMatcher

        calls = 'calls: call ("\\n" call)*' if self.parallel else "calls: call"
        call = f'call: "<tool_call>\\n" args "\\n</tool_call>"\nargs: %json {json.dumps(self.call_schema())}'
        if not self.calls_allowed():
            lark = f"start: TEXT\n{_TEXT}\n"
        elif self.choice == "required" or self.function is not None:
            lark = f"start: calls\n{calls}\n{call}\n"
        else:
            lark = f"start: TEXT | calls\n{_TEXT}\n{calls}\n{call}\n"
        try:
            return LLMatcher.grammar_from_lark(lark)
        except ValueError as exc:
            raise ValueError(f"tools: not a grammar ({exc})") from None

    def template_tools(self) -> list[dict[str, Any]]:
        """The tools in the shape Hugging Face chat templates take (OpenAI's)."""
        return [{"type": "function", "function": t.spec()} for t in self.tools]


class ToolCall(BaseModel):
    """One call the model made: an id (for the tool's result to answer), the tool, its arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str = Field(description="call_<hex>: the tool message answering it names it in tool_call_id.")
    name: str
    arguments: str = Field(description="The arguments object as JSON text (as OpenAI sends it).")

    def block(self) -> str:
        """This call as the model writes it."""
        body = json.dumps({"name": self.name, "arguments": json.loads(self.arguments)}, separators=(",", ":"))
        return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Parsed:
    """A finished completion: its text (None when it only made calls) and its calls."""

    content: str | None
    calls: list[ToolCall] = field(default_factory=list)


class CallStream:
    """Generated text fragments -> text and calls, as they become certain.

    Until the text is long enough to tell, a prefix of "<tool_call>" is held back; text that does not
    start with it is text (passed through at once); otherwise each block is parsed when it closes."""

    def __init__(self, calling: ToolCalling | None) -> None:
        self.calling = calling
        self.buffer = ""
        self.mode: Literal["undecided", "text", "calls"] = "undecided" if self._parsing() else "text"
        self.calls: list[ToolCall] = []

    def _parsing(self) -> bool:
        return self.calling is not None and self.calling.calls_allowed()

    def feed(self, fragment: str) -> list[str | ToolCall]:
        if self.mode == "text":
            return [fragment] if fragment else []
        self.buffer += fragment
        if self.mode == "undecided":
            if self.buffer.startswith(_MARK):
                self.mode = "calls"
            elif _MARK.startswith(self.buffer):
                return []
            else:
                self.mode, text, self.buffer = "text", self.buffer, ""
                return [text]
        out: list[str | ToolCall] = []
        while (match := _BLOCK.match(self.buffer.lstrip("\n"))) is not None:
            call = self._call(match.group(1))
            if call is None:  # not a call after all (no grammar held it): the rest is text
                self.mode, text, self.buffer = "text", self.buffer, ""
                return [*out, text]
            out.append(call)
            self.buffer = self.buffer.lstrip("\n")[match.end() :]
        return out

    def finish(self) -> list[str | ToolCall]:
        """What is left at the end: undecided text is text; an unclosed call (the completion was cut)
        is dropped when calls were made before it, else returned as text so nothing is lost."""
        rest, self.buffer = self.buffer, ""
        if self.mode == "undecided" or (self.mode == "calls" and not self.calls):
            return [rest] if rest else []
        return []

    def _call(self, body: str) -> ToolCall | None:
        assert self.calling is not None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        names = {t.name for t in self.calling.callable_tools()}
        if (
            not isinstance(value, dict)
            or value.get("name") not in names
            or not isinstance(value.get("arguments"), dict)
        ):
            return None
        call = ToolCall(id=new_call_id(), name=value["name"], arguments=json.dumps(value["arguments"]))
        self.calls.append(call)
        return call


def parse_calls(text: str, calling: ToolCalling | None) -> Parsed:
    """A finished completion's text and calls (no tools, or tool_choice none: all text)."""
    stream = CallStream(calling)
    parts = [*stream.feed(text), *stream.finish()]
    content = "".join(p for p in parts if isinstance(p, str))
    calls = [p for p in parts if isinstance(p, ToolCall)]
    return Parsed(content if content or not calls else None, calls)


def made_call(text: str, finish_reason: str, calling: ToolCalling | None) -> bool:
    """Whether a completion is a finished answer of valid calls only (named graphs prefer and gate on
    it): parsed, every name a callable tool, not cut by max_new_tokens. The grammar held the arguments."""
    if calling is None or not calling.calls_allowed() or finish_reason != "stop":
        return False
    parsed = parse_calls(text, calling)
    return bool(parsed.calls) and parsed.content is None


def call_required(calling: ToolCalling | None) -> bool:
    """tool_choice required or a named function: the answer must be a call."""
    return calling is not None and (calling.choice == "required" or calling.function is not None)


# ---- prompts -------------------------------------------------------------------------------------------


def template_knows_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders `tools` (its source uses the variable)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and re.search(r"\btools\b", template) is not None


def tool_prompt(calling: ToolCalling) -> str:
    """The generic format's instructions: how to call, then each tool as one line of JSON."""
    must = {
        "auto": "You may call tools.",
        "none": "Do not call tools now; answer in text.",
        "required": "Call one of these tools now.",
    }[calling.choice]
    if calling.function is not None:
        must = f"Call the tool {calling.function} now."
    lines = [
        must,
        "To call a tool, reply with only:",
        '<tool_call>\n{"name":"<the tool\'s name>","arguments":<its arguments as a JSON object>}\n</tool_call>',
        "Tools:",
        *(json.dumps(t.spec(), separators=(",", ":")) for t in calling.tools),
    ]
    return "\n".join(lines)


def tool_result_text(content: str) -> str:
    """A tool's result as the generic format shows it to the model."""
    return f"<tool_response>\n{content}\n</tool_response>"
