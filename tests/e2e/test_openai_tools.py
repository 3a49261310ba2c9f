"""Tool calls and the sampling fields on the OpenAI face, through a real `bentoml serve` of
configs/tiny.yaml, with the unmodified `openai` SDK: a two-step tool loop, streamed and not, on a
node and on a named graph. The tiny models are random: the grammar alone makes their calls valid."""

from __future__ import annotations

import json

import jsonschema_rs
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.server import Server

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER},
    }
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tiny_server: Server) -> Server:
    return tiny_server  # tests/conftest.py: one configs/tiny.yaml server for the session


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _answer(call_id: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temp": 21, "sky": "clear"})}


@pytest.mark.parametrize("model", ["tiny_a", "graph:best"])
def test_a_two_step_tool_loop(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # a random model would go on calling until max_tokens
        max_tokens=200,
        temperature=1.0,
        seed=1,
    )
    ChatCompletion.model_validate(first.model_dump())
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert calls and choice.message.content is None
    for call in calls:
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema_rs.validate(WEATHER, json.loads(call.function.arguments))
    history = [*ASK, choice.message.model_dump(exclude_none=True), *(_answer(c.id) for c in calls)]
    second = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, tool_choice="none", max_tokens=6, temperature=1.0, seed=3
    )
    (reply,) = second.choices
    assert reply.finish_reason in ("stop", "length") and reply.message.tool_calls is None
    assert isinstance(reply.message.content, str)
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


@pytest.mark.parametrize("model", ["tiny_b", "graph:best"])
def test_a_two_step_tool_loop_streamed(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=200,
        seed=2,
        temperature=1.0,
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += d.id or ""
                slot["name"] += (d.function.name if d.function else None) or ""
                slot["arguments"] += (d.function.arguments if d.function else None) or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather"
    jsonschema_rs.validate(WEATHER, json.loads(call["arguments"]))
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {k: call[k] for k in ("name", "arguments")}}
            ],
        },
        _answer(call["id"]),
    ]
    text = ""
    for chunk in client.chat.completions.create(model=model, messages=history, max_tokens=6, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            assert not c.delta.tool_calls
    assert text


def test_auto_answers_text_or_valid_calls(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny_a", messages=ASK, tools=TOOLS, n=4, max_tokens=200, temperature=1.0, seed=5
    )
    for choice in out.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason in ("tool_calls", "length")
            for call in choice.message.tool_calls:
                jsonschema_rs.validate(WEATHER, json.loads(call.function.arguments))
        else:
            assert not (choice.message.content or "").startswith("<tool_call>")


def test_sampling_fields(client: openai.OpenAI) -> None:
    base = dict(model="tiny_a", messages=ASK, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**base).choices[0].message.content
    forced = client.chat.completions.create(**base, logit_bias={"42": 100}, logprobs=True).choices[0]
    assert forced.logprobs is not None and forced.logprobs.content
    assert len({t.token for t in forced.logprobs.content}) == 1 and forced.message.content != plain
    penalised = client.chat.completions.create(
        **base, frequency_penalty=2.0, presence_penalty=1.0, extra_body={"min_p": 0.5}
    )
    assert penalised.choices[0].message.content  # the effect of each is checked in tests/graph/test_sampling_fields.py
    first = client.chat.completions.create(**{**base, "max_tokens": 1}, logprobs=True)
    lp = first.choices[0].logprobs
    assert lp is not None and lp.content
    streamed = client.chat.completions.create(**base, logprobs=True, top_logprobs=1, stream=True)
    tokens, text = [], ""
    for chunk in streamed:
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                tokens += [t.token for t in c.logprobs.content]
    assert "".join(tokens) == text == plain  # logprobs with stream: every token, once


def test_bad_tools_are_named(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="tiny_a", messages=ASK, tools=[{"type": "function", "function": {"name": "bad name"}}]
        )
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "tools[0].function.name"
    with pytest.raises(openai.BadRequestError, match="not one of the tools"):
        client.chat.completions.create(
            model="tiny_a", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}}
        )
    with pytest.raises(openai.BadRequestError, match="logit_bias: token id"):
        client.chat.completions.create(model="tiny_a", messages=ASK, logit_bias={"99999999": 5})
