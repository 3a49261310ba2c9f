"""The Messages and Responses faces' pure mappings: requests -> the chat completion they run as (conversation,
tools, controls), refused fields naming themselves, and Anthropic's error shape."""

from __future__ import annotations

import pytest

from graph.chat_format import ChatMessage
from graph.entry.faces.anthropic_shapes import CountTokensRequest, MessagesRequest, anthropic_error, parse_messages
from graph.entry.faces.responses_shapes import ResponseNotFound, check_id, parse_responses
from graph.errors import InvalidRequest, NodeFailure, Overloaded

TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def messages(**fields):
    return parse_messages(MessagesRequest, {"model": "m", "max_tokens": 8, **fields})


def refused(call, *args) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        call(*args)
    return exc.value


def test_a_messages_request_runs_as_a_chat_completion() -> None:
    req = messages(
        system=[{"type": "text", "text": "Be terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        stop_sequences=["END"],
        temperature=0.5,
        top_k=7,
    )
    chat = req.to_chat(stream=True)
    assert chat.prompt().messages == [
        ChatMessage(role="system", content="Be terse."),
        ChatMessage(role="user", content="ab"),
    ]
    o = chat.overrides()
    assert (o.max_new_tokens, o.temperature, o.top_k, o.stop, o.do_sample) == (8, 0.5, 7, ["END"], True)
    assert chat.include_usage and chat.tool_calling() is None
    greedy = messages(messages=[{"role": "user", "content": "x"}], temperature=0, top_k=5).to_chat(stream=False)
    assert greedy.overrides().do_sample is False


def test_tool_blocks_become_calls_and_tool_messages() -> None:
    req = messages(
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    chat = req.to_chat(stream=False)
    convo = chat.prompt().messages
    assert [m.role for m in convo] == ["user", "assistant", "tool", "user"]
    assert convo[1].tool_calls[0].arguments == '{"city": "Rome"}' and convo[2].tool_call_id == "toolu_1"
    tools = chat.overrides().tools
    assert tools is not None and tools.choice == "required" and tools.function == "get_weather" and not tools.parallel


def test_messages_refusals_name_the_field() -> None:
    hi = [{"role": "user", "content": "hi"}]
    assert refused(parse_messages, MessagesRequest, {"model": "m", "messages": hi}).field == "max_tokens"
    assert (
        "thinking: not supported"
        in refused(
            parse_messages, MessagesRequest, {"model": "m", "max_tokens": 1, "messages": hi, "thinking": {"type": "x"}}
        ).message
    )
    err = refused(parse_messages, MessagesRequest, {"model": "m", "max_tokens": 1, "messages": hi, "bogus": 1})
    assert err.field == "bogus" and "docs/faces/anthropic.md" in err.message
    err = refused(
        parse_messages,
        MessagesRequest,
        {"model": "m", "max_tokens": 1, "messages": hi, "tool_choice": {"type": "any"}},
    )
    assert "tool_choice: needs tools" in err.message
    misplaced = [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]}]
    err = refused(parse_messages, MessagesRequest, {"model": "m", "max_tokens": 1, "messages": misplaced})
    assert "tool_use block goes in an assistant message" in err.message
    count = parse_messages(CountTokensRequest, {"model": "m", "messages": hi})  # no max_tokens needed
    assert count.max_tokens == 1


def test_anthropic_error_shape_keeps_the_status_and_names() -> None:
    body = anthropic_error(InvalidRequest("params.max_new_tokens: too big", field="params.max_new_tokens"))
    assert body.model_dump() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
    }
    assert anthropic_error(Overloaded("busy")).error.type == "rate_limit_error"
    assert anthropic_error(NodeFailure("boom", node="a")).error.type == "api_error"


def test_a_responses_request_runs_as_a_chat_completion() -> None:
    req = parse_responses(
        {
            "model": "m",
            "instructions": "Be terse.",
            "input": [
                {"role": "developer", "content": "Rules."},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Rome"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                {"role": "user", "content": [{"type": "input_text", "text": "And?"}]},
            ],
            "max_output_tokens": 9,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        }
    )
    history = [ChatMessage(role="user", content="before"), ChatMessage(role="assistant", content="earlier")]
    chat = req.to_chat(history, stream=False)
    convo = chat.prompt().messages
    assert [m.role for m in convo] == ["system", "user", "assistant", "system", "assistant", "tool", "user"]
    assert convo[0].content == "Be terse." and convo[4].tool_calls[0].id == "call_1"
    o = chat.overrides()
    assert o.max_new_tokens == 9 and o.response_format is not None and o.response_format.type == "json_schema"


def test_responses_refusals() -> None:
    err = refused(parse_responses, {"model": "m", "input": "hi", "reasoning": {"effort": "high"}})
    assert err.field == "reasoning"
    err = refused(parse_responses, {"model": "m", "input": "hi", "max_output_tokens": 0})
    assert err.field == "max_output_tokens"
    bad_call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}
    with pytest.raises(InvalidRequest, match="arguments must be a JSON object"):
        parse_responses({"model": "m", "input": [bad_call]}).messages()
    with pytest.raises(InvalidRequest, match="tool_choice: needs tools"):
        parse_responses({"model": "m", "input": "hi", "tool_choice": "required"}).calling()
    with pytest.raises(ResponseNotFound):
        check_id("resp_../../etc")
    assert check_id("resp_" + "a" * 32)
