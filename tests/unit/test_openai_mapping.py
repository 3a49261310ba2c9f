"""The OpenAI face's pure mappings: messages -> prompt, OpenAI controls -> overrides, refused fields, errors."""

from __future__ import annotations

import pytest
from openai.types.shared import ErrorObject

from graph.chat_format import ChatMessage, ChatPrompt, score_text
from graph.entry.faces.openai_errors import UnknownModel, openai_error
from graph.entry.faces.openai_requests import ChatCompletionRequest, CompletionRequest, parse_request
from graph.errors import InvalidRequest, NodeFailure, NodeTimeout, Overloaded
from graph.params import GenerationParams, merge_params

USER = [{"role": "user", "content": "Hi"}]


def chat(**fields):
    return parse_request(ChatCompletionRequest, {"model": "m", "messages": USER, **fields})


def refused(model, body) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        parse_request(model, body)
    return exc.value


def test_messages_become_a_chat_prompt_with_text_parts_joined() -> None:
    req = chat(
        messages=[
            {"role": "developer", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    )
    # a developer message is a system message to the nodes
    assert req.prompt() == ChatPrompt(
        messages=[ChatMessage(role="system", content="S"), ChatMessage(role="user", content="ab")]
    )
    assert score_text(req.prompt(), "!") == "ab!"  # a chat's scored text: its last user message + the reply


def test_controls_map_to_overrides() -> None:
    o = chat(
        max_tokens=7, temperature=0.5, top_p=0.9, n=2, stop="END", seed=3, logprobs=True, top_logprobs=2
    ).overrides()
    assert (o.max_new_tokens, o.temperature, o.top_p, o.num_return_sequences, o.stop, o.seed) == (
        7,
        0.5,
        0.9,
        2,
        ["END"],
        3,
    )
    assert o.do_sample is True and o.logprobs is True and o.top_logprobs == 2
    assert chat(max_completion_tokens=9).overrides().max_new_tokens == 9
    greedy = chat(temperature=0).overrides()
    assert greedy.do_sample is False and greedy.temperature is None
    untouched = chat().overrides()  # nothing given: every node keeps its own defaults
    assert untouched.model_dump(exclude_none=True) == {"num_return_sequences": 1}
    legacy = parse_request(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 0}).overrides()
    assert legacy.logprobs is True and legacy.top_logprobs == 0
    # the merged params are valid GenerationParams for a node
    merged = merge_params(GenerationParams(), chat(n=2, temperature=1.0).overrides(), max_new_tokens_limit=64)
    assert merged.do_sample and merged.num_return_sequences == 2


@pytest.mark.parametrize(
    "field, value",
    [
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("audio", {"voice": "x"}),
        ("store", True),
    ],
)
def test_unsupported_fields_are_refused_by_name(field, value) -> None:
    err = refused(ChatCompletionRequest, {"model": "m", "messages": USER, field: value})
    assert err.field == field and err.message == f"{field}: not supported by this server"


def test_neutral_values_of_unsupported_fields_pass() -> None:
    chat(response_format={"type": "text"}, frequency_penalty=0, logit_bias={}, tools=None)
    parse_request(CompletionRequest, {"model": "m", "prompt": "x", "best_of": 1})
    assert refused(CompletionRequest, {"model": "m", "prompt": "x", "best_of": 2}).field == "best_of"
    assert refused(CompletionRequest, {"model": "m", "prompt": "x", "suffix": "end"}).field == "suffix"


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"bogus": 1}, "bogus", "unknown field"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "tool_call_id: required in a tool"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0]", "content: required"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
                    }
                ]
            },
            "messages[0]",
            "tool_calls: only in an assistant",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "pattern"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
            "not one of the tools",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools[0].function.parameters",
            "must describe an object",
        ),
        ({"logit_bias": {"x": 1}}, "logit_bias", "token ids"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "from -100 to 100"),
        ({"frequency_penalty": 2.5}, "frequency_penalty", "less than or equal to 2"),
        ({"min_p": -0.1}, "min_p", "greater than or equal to 0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
            "only text parts",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name", "unknown field"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": "1"}, "temperature", "valid number"),
        ({"n": 9}, "n", "less than or equal to 8"),
        ({"n": 2, "temperature": 0}, "n", "greedy"),
        ({"max_tokens": 3, "max_completion_tokens": 3}, "max_completion_tokens", "not both"),
        ({"top_logprobs": 1}, "top_logprobs", "logprobs=true"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
        ({"stop": ["a"] * 5}, "stop", "at most 4"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
    ],
)
def test_bad_chat_fields_are_named(fields, field, words) -> None:
    err = refused(ChatCompletionRequest, {"model": "m", "messages": USER, **fields})
    assert err.field == field and words in err.message, err.message


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"prompt": "a", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": "a", "logprobs": 6}, "logprobs"),
        ({"prompt": "a", "logprobs": True}, "logprobs"),
    ],
)
def test_bad_completion_fields_are_named(fields, field) -> None:
    assert refused(CompletionRequest, {"model": "m", **fields}).field == field


def test_body_must_be_an_object() -> None:
    assert refused(ChatCompletionRequest, ["not", "an", "object"]).field == "body"


@pytest.mark.parametrize(
    "err, status, kind, code",
    [
        (InvalidRequest("temperature: too hot", field="temperature"), 400, "invalid_request_error", "validation"),
        (UnknownModel("model: 'x' does not exist", field="model"), 404, "invalid_request_error", "model_not_found"),
        (Overloaded("node 'a' is overloaded", retry_after_s=3), 429, "rate_limit_error", "overloaded"),
        (NodeFailure("node 'a' failed: boom", node="a"), 500, "server_error", "node_failure"),
        (NodeTimeout("node 'a' timed out", node="a"), 500, "server_error", "node_timeout"),
    ],
)
def test_error_mapping(err, status, kind, code) -> None:
    mapped = openai_error(err)
    assert mapped.status == status
    ErrorObject.model_validate(mapped.body.error.model_dump())
    assert (mapped.body.error.type, mapped.body.error.code, mapped.body.error.param) == (kind, code, err.field)
    assert mapped.headers == ({"Retry-After": "3"} if status == 429 else {})


def test_error_names_become_the_requests() -> None:
    req = chat(max_completion_tokens=900)
    err = InvalidRequest("params.max_new_tokens: 900 is above this node's limit of 256", field="params.max_new_tokens")
    mapped = openai_error(err, req.names()).body.error
    assert mapped.param == "max_completion_tokens"
    assert mapped.message == "max_completion_tokens: 900 is above this node's limit of 256"
    node = InvalidRequest(
        "node 'a' rejected the request: prompt: 600 tokens is above this node's limit", field="prompt"
    )
    assert openai_error(node, req.names()).body.error.param == "messages"
    stop = InvalidRequest("params.stop: stop strings must be non-empty", field="params.stop")
    assert openai_error(stop, req.names()).body.error.message == "stop: stop strings must be non-empty"


def test_stream_chunks_index_nodes_and_carry_errors_and_usage() -> None:
    import json

    from graph.entry.faces.openai_face import _Chunks
    from graph.entry.schemas import ErrorEvent, FinalEvent, ScoreEvent, TokenEvent, Usage

    req = chat(model="graph", n=2, stream=True, stream_options={"include_usage": True}, max_tokens=5)
    chunks = _Chunks(req, "r1", ["a", "b"], chat=True, echo=False)
    first = json.loads(chunks.of(TokenEvent(model="b", index=1, text="Hi"))[0])
    (choice,) = first["choices"]
    assert (choice["index"], choice["model"], choice["delta"]) == (3, "b", {"role": "assistant", "content": "Hi"})
    final = json.loads(
        chunks.of(
            FinalEvent(
                model="b", index=1, text="!", finish_reason="time", usage=Usage(prompt_tokens=4, completion_tokens=5)
            )
        )[0]
    )
    assert final["choices"][0]["finish_reason"] == "length" and final["choices"][0]["delta"] == {"content": "!"}
    score = json.loads(
        chunks.of(
            ScoreEvent(model="b", index=1, label="positive", score=0.7, labels={"positive": 0.7, "negative": 0.3})
        )[0]
    )
    assert score["choices"][0]["score"] == 0.7 and score["choices"][0]["index"] == 3
    chunks.of(
        FinalEvent(model="a", index=0, text="", finish_reason="stop", usage=Usage(prompt_tokens=6, completion_tokens=2))
    )
    usage = chunks.usage_chunk()
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == (10, 7, 17)
    err = json.loads(chunks.of(ErrorEvent(error="node_failure", message="node 'a' failed: boom", node="a"))[0])
    assert err == {
        "error": {"message": "node 'a' failed: boom", "type": "server_error", "param": None, "code": "node_failure"}
    }


@pytest.mark.parametrize("stop, field", [([""], "stop[0]"), ("", "stop[0]"), (["x" * 65], "stop[0]")])
def test_stop_strings_keep_the_graphs_bounds(stop, field) -> None:
    with pytest.raises(InvalidRequest) as exc:
        chat(stop=stop).overrides()
    assert exc.value.field == field


def test_response_format_maps_to_the_params_and_a_bad_schema_names_it() -> None:
    req = chat(response_format={"type": "json_object"})
    assert req.overrides().response_format.type == "json_object"
    bad = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nosuch"}}}
    err = refused(
        ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": bad}
    )
    assert err.field == "response_format" and "nosuch" in str(err)


TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


def test_tools_and_their_history_map_to_the_graph() -> None:
    req = chat(
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        ],
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=False,
    )
    calling = req.overrides().tools
    assert calling is not None and (calling.function, calling.parallel, calling.choice) == ("add", False, "auto")
    assistant, tool = req.prompt().messages[1:]
    assert assistant.content == "" and assistant.tool_calls[0].name == "add" and assistant.tool_calls[0].id == "call_1"
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "3")
    assert chat(tools=[TOOL]).overrides().tools.choice == "auto"  # pyright: ignore[reportOptionalMemberAccess]
    assert chat(tools=[TOOL], tool_choice="none").overrides().tools.choice == "none"  # pyright: ignore[reportOptionalMemberAccess]
    assert chat().overrides().tools is None


def test_sampling_fields_map_to_overrides() -> None:
    o = chat(logit_bias={"5": -100, "7": 2}, frequency_penalty=0.5, presence_penalty=-1, min_p=0.1).overrides()
    assert o.logit_bias == {5: -100.0, 7: 2.0}
    assert (o.frequency_penalty, o.presence_penalty, o.min_p) == (0.5, -1.0, 0.1)
    assert chat(logprobs=True, stream=True).overrides().logprobs is True  # logprobs with stream


def test_a_bad_call_in_the_history_is_named() -> None:
    bad = {"id": "c", "type": "function", "function": {"name": "add", "arguments": "[1]"}}
    err = refused(
        ChatCompletionRequest,
        {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [bad]}]},
    )
    assert err.field == "messages[0].tool_calls[0].function.arguments" and "JSON object" in err.message
