"""Tool calls on tiny random models: the grammar, not the model, makes every call valid."""

from __future__ import annotations

import asyncio
import json

import jsonschema_rs
import pytest

from graph.chat_format import ChatMessage, ChatPrompt
from graph.params import GenerationParams as GP
from graph.tools import ToolCalling, parse_calls
from tests.graph.test_engine import make_engine
from tests.graph.test_onnx_runtime import onnx_dir, onnx_engine, onnx_source  # noqa: F401  fixtures used by `engine`

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [{"name": "get_weather", "parameters": WEATHER}, {"name": "add", "description": "a + b", "parameters": ADD}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


@pytest.fixture(scope="module", params=["causal_lm", "causal_lm_b", "onnx"], ids=["llama", "gpt2", "onnx"])
def engine(request, tiny_dir):
    if request.param == "onnx":
        eng = onnx_engine(request.getfixturevalue("onnx_source"), request.getfixturevalue("onnx_dir"))
    else:
        eng = make_engine(tiny_dir / request.param)
    yield eng
    eng.close()


def _chat(text: str = "What is the weather in Paris?") -> ChatPrompt:
    return ChatPrompt(messages=[ChatMessage(role="user", content=text)])


def test_required_calls_validate_against_their_tool(engine) -> None:
    calling = ToolCalling.model_validate({"tools": TOOLS, "choice": "required"})
    params = GP(max_new_tokens=160, do_sample=True, temperature=1.0, num_return_sequences=4, seed=3, tools=calling)
    rows = asyncio.run(engine.generate(_chat(), params))
    made = 0
    for r in rows:
        parsed = parse_calls(r.text, calling)
        if r.finish_reason == "stop":
            assert parsed.calls and parsed.content is None, r.text
        for call in parsed.calls:
            jsonschema_rs.validate(SCHEMAS[call.name], json.loads(call.arguments))
            made += 1
    assert made >= 1


def test_named_choice_calls_only_that_tool_once_without_parallel(engine) -> None:
    calling = ToolCalling.model_validate({"tools": TOOLS, "function": "add", "parallel": False})
    params = GP(max_new_tokens=80, do_sample=True, num_return_sequences=3, seed=1, tools=calling)
    for r in asyncio.run(engine.generate(_chat("1 + 2?"), params)):
        parsed = parse_calls(r.text, calling)
        if r.finish_reason == "stop":
            assert [c.name for c in parsed.calls] == ["add"], r.text
            assert set(json.loads(parsed.calls[0].arguments)) == {"a", "b"}


def test_none_never_starts_a_call(engine) -> None:
    calling = ToolCalling.model_validate({"tools": TOOLS, "choice": "none"})
    params = GP(max_new_tokens=12, do_sample=True, num_return_sequences=4, seed=2, tools=calling)
    for r in asyncio.run(engine.generate(_chat(), params)):
        assert not r.text.startswith("<tool_call>")
        assert parse_calls(r.text, calling).calls == []


def test_auto_is_text_or_valid_calls(engine) -> None:
    calling = ToolCalling.model_validate({"tools": TOOLS})
    params = GP(max_new_tokens=160, do_sample=True, num_return_sequences=6, seed=4, tools=calling)
    for r in asyncio.run(engine.generate(_chat(), params)):
        parsed = parse_calls(r.text, calling)
        if r.text.startswith("<tool_call>") and r.finish_reason == "stop":
            assert parsed.calls and parsed.content is None
        for call in parsed.calls:
            jsonschema_rs.validate(SCHEMAS[call.name], json.loads(call.arguments))


def test_a_tool_round_trip_renders_in_the_history(engine) -> None:
    calling = ToolCalling.model_validate({"tools": TOOLS[1:], "choice": "required", "parallel": False})
    first = asyncio.run(engine.generate(_chat("1 + 2?"), GP(max_new_tokens=60, tools=calling)))[0]
    calls = parse_calls(first.text, calling).calls
    history = [
        ChatMessage(role="user", content="1 + 2?"),
        ChatMessage(role="assistant", content="", tool_calls=calls),
        *(ChatMessage(role="tool", content="3", tool_call_id=c.id) for c in calls),
    ]
    auto = calling.model_copy(update={"choice": "none"})
    second = asyncio.run(engine.generate(ChatPrompt(messages=history), GP(max_new_tokens=8, tools=auto)))[0]
    assert second.prompt_tokens > first.prompt_tokens  # the call and its result are in the prompt
    assert not second.text.startswith("<tool_call>")
