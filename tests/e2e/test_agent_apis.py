"""Anthropic's Messages API and OpenAI's Responses API through a real `bentoml serve` (tiny config with two
API keys), with the unmodified `anthropic` and `openai` SDKs: plain and streamed answers, named graphs,
count_tokens, errors in each API's shape, stored responses per key, and a store that survives a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import jsonschema_rs
import openai
import pytest
import yaml
from openai.types.responses import Response
from sqlalchemy import select

from graph.entry.chat.responses import ResponseStore
from graph.entry.chat.store import ChatStore, responses
from tests.server import ROOT, Server

KEY = "agents-test-key-0123456789"
OTHER_KEY = "other-agents-key-0123456789"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory) -> Iterator[Server]:
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["auth"] = {"keys_env": "AGENTS_TEST_KEYS"}
    folder = tmp_path_factory.mktemp("agents")
    cfg["chat"] = {"database_url": f"sqlite:///{folder}/chat.sqlite3"}
    path = folder / "tiny_agents.yaml"
    path.write_text(yaml.safe_dump(cfg))
    os.environ["AGENTS_TEST_KEYS"] = f"tester:{KEY}, other:{OTHER_KEY}"
    srv = Server(config=path, name="agents")
    srv.database_url = cfg["chat"]["database_url"]  # type: ignore[attr-defined]
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        os.environ.pop("AGENTS_TEST_KEYS", None)


@pytest.fixture(scope="module")
def claude(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def oai(server: Server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


HELLO = [{"role": "user", "content": "Hello world, this is"}]
GREEDY = {"temperature": 0}


# ---- Messages ------------------------------------------------------------------------------------
def test_messages_create(claude: anthropic.Anthropic) -> None:
    # this SDK's create() has no sampling parameters; the API takes them (older clients and curl send them)
    out = claude.messages.create(
        model="tiny_a",
        max_tokens=5,
        messages=HELLO,
        system="You are terse.",
        extra_body={"temperature": 0.7, "top_k": 20},
    )
    assert out.type == "message" and out.role == "assistant" and out.model == "tiny_a" and out.id.startswith("msg_")
    (block,) = out.content
    assert block.type == "text" and isinstance(block.text, str)
    assert out.stop_reason in ("end_turn", "max_tokens") and out.stop_sequence is None
    assert 1 <= out.usage.output_tokens <= 5 and out.usage.input_tokens > 0
    greedy = [
        claude.messages.create(model="tiny_b", max_tokens=4, messages=HELLO, extra_body=GREEDY).content[0]
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]


def test_messages_match_the_chat_completion_they_run_as(claude: anthropic.Anthropic, server: Server) -> None:
    """System and text blocks become the same prompt as OpenAI's chat: same tokens in, same greedy text out."""
    blocks = [
        {"role": "user", "content": [{"type": "text", "text": "Hello world, "}, {"type": "text", "text": "this is"}]}
    ]
    msg = claude.messages.create(
        model="tiny_b", max_tokens=6, extra_body=GREEDY, system=[{"type": "text", "text": "Be kind."}], messages=blocks
    )
    chat = oai(server).chat.completions.create(
        model="tiny_b",
        max_tokens=6,
        temperature=0,
        messages=[{"role": "system", "content": "Be kind."}, *HELLO],
    )
    assert chat.usage is not None and msg.usage.input_tokens == chat.usage.prompt_tokens
    assert msg.content[0].type == "text" and msg.content[0].text == chat.choices[0].message.content
    counted = claude.messages.count_tokens(model="tiny_b", system="Be kind.", messages=blocks)
    assert counted.input_tokens == msg.usage.input_tokens


def test_messages_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="tiny_a", max_tokens=6, messages=HELLO, extra_body=GREEDY) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    plain = claude.messages.create(model="tiny_a", max_tokens=6, messages=HELLO, extra_body=GREEDY)
    assert final.content[0].type == "text" and plain.content[0].type == "text"
    assert final.content[0].text == plain.content[0].text  # the stream's deltas add up to the answer
    assert final.stop_reason == plain.stop_reason and final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_messages_stream_sse_framing(server: Server) -> None:
    body = {"model": "tiny_a", "max_tokens": 3, "messages": HELLO, "stream": True}
    r = httpx.post(server.url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in r.text.strip().split("\n\n")]
    for lines in events:  # each event names its type, and its data says the same
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ")
        assert json.loads(lines[1][6:])["type"] == lines[0][7:]
    delta = json.loads(events[-2][1][6:])
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens") and delta["usage"]["output_tokens"] >= 1


def test_named_graph_is_a_model(claude: anthropic.Anthropic) -> None:
    out = claude.messages.create(model="graph:best", max_tokens=4, messages=HELLO)
    assert out.model == "graph:best" and out.content[0].type == "text"
    assert out.usage.output_tokens >= 3  # every candidate's tokens (three candidates, at least one each)
    with claude.messages.stream(model="graph:cheap_first", max_tokens=4, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text


def test_messages_errors_in_anthropics_shape(claude: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="tiny_a", max_tokens=0, messages=HELLO)
    assert bad.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": bad.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert "max_tokens" in bad.value.message
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="claude-nope", max_tokens=5, messages=HELLO)
    assert "claude-nope" in missing.value.message
    with pytest.raises(anthropic.BadRequestError, match="graph:best"):  # several answers: pick a named graph
        claude.messages.create(model="graph", max_tokens=5, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        claude.messages.create(model="tiny_a", max_tokens=5, messages=HELLO, extra_body={"temperature": 1.5})
    with pytest.raises(anthropic.BadRequestError, match="thinking: not supported"):
        claude.messages.create(
            model="tiny_a", max_tokens=5, messages=HELLO, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    with pytest.raises(anthropic.BadRequestError, match="assistant prefill"):
        claude.messages.create(model="tiny_a", max_tokens=5, messages=[*HELLO, {"role": "assistant", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\].content"):
        claude.messages.create(
            model="tiny_a",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}],
        )
    nokey = anthropic.Anthropic(base_url=server.url, api_key="not-a-key-0123456789", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        nokey.messages.create(model="tiny_a", max_tokens=5, messages=HELLO)
    assert isinstance(denied.value.body, dict) and denied.value.body["error"]["type"] == "authentication_error"


def test_messages_structured_output(claude: anthropic.Anthropic) -> None:
    out = claude.messages.create(
        model="tiny_a",
        max_tokens=60,
        messages=[{"role": "user", "content": "The weather today:"}],
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    assert out.content[0].type == "text"
    if out.stop_reason == "end_turn":  # cut by max_tokens is the only way to get invalid JSON
        jsonschema_rs.validate(SCHEMA, json.loads(out.content[0].text))


WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_messages_tool_round_trip(claude: anthropic.Anthropic) -> None:
    """A call held to its input_schema, its result sent back, an answer; streamed and not."""
    first = claude.messages.create(
        model="tiny_a",
        max_tokens=200,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},  # a random model would call on and on
    )
    assert first.stop_reason == "tool_use", first
    uses = [b for b in first.content if b.type == "tool_use"]
    assert uses and all(u.name == "get_weather" for u in uses)
    for use in uses:
        jsonschema_rs.validate(WEATHER["input_schema"], use.input)
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "Sunny, 24 C"} for u in uses]
    history = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}]
    second = claude.messages.create(
        model="tiny_a", max_tokens=5, messages=history, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert second.stop_reason in ("end_turn", "max_tokens") and second.content[0].type == "text"
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result are in the prompt
    with claude.messages.stream(
        model="tiny_b",
        max_tokens=200,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    ) as stream:
        final = stream.get_final_message()
    (use,) = final.content
    assert use.type == "tool_use" and final.stop_reason == "tool_use"
    jsonschema_rs.validate(WEATHER["input_schema"], use.input)
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        claude.messages.create(
            model="tiny_a", max_tokens=5, messages=ASK, tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}
        )


# ---- Responses -----------------------------------------------------------------------------------
def test_responses_create_and_previous_response_id(server: Server) -> None:
    client = oai(server)
    first = client.responses.create(
        model="tiny_a", input="Hello world, this is", instructions="You are terse.", max_output_tokens=5
    )
    assert first.object == "response" and first.id.startswith("resp_") and first.model == "tiny_a"
    assert first.status in ("completed", "incomplete") and first.usage is not None
    assert first.output_text == first.output[0].content[0].text  # type: ignore[union-attr]
    assert 1 <= first.usage.output_tokens <= 5
    second = client.responses.create(
        model="tiny_a",
        previous_response_id=first.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "And then?"}]}],
        max_output_tokens=3,
        temperature=0,
    )
    assert second.previous_response_id == first.id and second.usage is not None
    alone = client.responses.create(model="tiny_a", input="And then?", max_output_tokens=3, temperature=0, store=False)
    assert alone.usage is not None and second.usage.input_tokens > alone.usage.input_tokens  # the history came along
    got = client.responses.retrieve(second.id)
    assert got.output_text == second.output_text and got.usage == second.usage
    with pytest.raises(openai.NotFoundError):  # store=false keeps nothing
        client.responses.retrieve(alone.id)


def test_a_stored_response_belongs_to_its_key(server: Server) -> None:
    mine = oai(server).responses.create(model="tiny_b", input="Hello world", max_output_tokens=3)
    other = oai(server, OTHER_KEY)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.retrieve(mine.id)
    assert err.value.body["code"] == "not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="tiny_b", input="more", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert oai(server).responses.retrieve(mine.id).id == mine.id  # still there for its owner
    oai(server).responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        oai(server).responses.retrieve(mine.id)


def test_responses_stream_with_previous_response_id(server: Server) -> None:
    client = oai(server)
    first = client.responses.create(model="tiny_b", input="Hello world", max_output_tokens=4)
    with client.responses.stream(
        model="tiny_b", input="Go on", previous_response_id=first.id, max_output_tokens=6, temperature=0
    ) as stream:
        events = list(stream)
    kinds = [ev.type for ev in events]
    # at max_output_tokens OpenAI ends with response.incomplete, which the SDK's get_final_response() does not
    # take (it waits for response.completed): the last event carries the whole response either way
    final = events[-1].response  # type: ignore[union-attr]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    plain = client.responses.create(
        model="tiny_b", input="Go on", previous_response_id=first.id, max_output_tokens=6, temperature=0
    )
    assert final.output_text == plain.output_text and final.previous_response_id == first.id
    assert client.responses.retrieve(final.id).output_text == final.output_text  # a streamed response is stored


def test_responses_named_graph_and_structured_output(server: Server) -> None:
    client = oai(server)
    out = client.responses.create(
        model="graph:best",
        input="The weather today:",
        max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "weather", "schema": SCHEMA, "strict": True}},
    )
    assert out.model == "graph:best" and out.text is not None and out.text.format is not None
    if out.status == "completed":  # cut by max_output_tokens is the only way to get invalid JSON
        jsonschema_rs.validate(SCHEMA, json.loads(out.output_text))
    kept = client.responses.retrieve(out.id)  # stored and read back with its schema (`schema`, as sent)
    assert kept.text is not None and kept.text.format is not None and kept.text.format.type == "json_schema"
    assert kept.text.format.schema_ == SCHEMA  # type: ignore[union-attr]


def test_responses_errors(server: Server) -> None:
    client = oai(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="tiny_a", input="hi", max_output_tokens=0)
    assert bad.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="reasoning: not supported"):
        client.responses.create(model="tiny_a", input="hi", reasoning={"effort": "high"})
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny_a", input="hi", previous_response_id="resp_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("not-an-id")
    with pytest.raises(openai.BadRequestError, match="input"):
        client.responses.create(model="tiny_a", input="   ")


FUNCTION = {"type": "function", "name": WEATHER["name"], "parameters": WEATHER["input_schema"]}


def test_responses_function_call_round_trip(server: Server) -> None:
    """A function_call held to its parameters, its output sent back with previous_response_id; streamed too."""
    client = oai(server)
    first = client.responses.create(
        model="tiny_a",
        input="What is the weather in Rome?",
        tools=[FUNCTION],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=200,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and first.status == "completed"
    jsonschema_rs.validate(WEATHER["input_schema"], json.loads(call.arguments))
    second = client.responses.create(
        model="tiny_a",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}],
        tools=[FUNCTION],
        tool_choice="none",
        max_output_tokens=4,
    )
    assert second.output[0].type == "message" and second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output are in the prompt
    with client.responses.stream(
        model="tiny_b",
        input=[{"role": "user", "content": "Weather?"}],
        tools=[FUNCTION],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        max_output_tokens=200,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [ev.type for ev in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert [ev.sequence_number for ev in events] == list(range(len(events)))
    (streamed,) = final.output
    assert streamed.type == "function_call"
    jsonschema_rs.validate(WEATHER["input_schema"], json.loads(streamed.arguments))


def test_sigkill_of_the_entry_while_storing_leaves_each_response_whole_or_absent(server: Server) -> None:
    client = oai(server)

    def one(i: int) -> None:
        try:
            client.responses.create(model="tiny_a", input=f"Note {i}", max_output_tokens=3)
        except openai.APIError:  # the ones in flight when the entry dies
            pass

    with ThreadPoolExecutor(max_workers=6) as pool:
        for i in range(60):
            pool.submit(one, i)
        time.sleep(2.0)
        os.kill(server.worker_pid("InferenceGraph"), signal.SIGKILL)

    async def rows() -> int:
        chat = ChatStore(server.database_url)  # type: ignore[attr-defined]
        store = ResponseStore(chat)
        try:
            async with chat.engine.connect() as conn:
                ids = [r[0] for r in await conn.execute(select(responses.c.id).where(responses.c.owner == "tester"))]
            for rid in ids:
                got = await store.get("tester", rid)
                assert got is not None
                kept = Response.model_validate(got.response)  # whole: the Response object parses
                assert kept.id == rid and got.messages[-1].role == "assistant"
                assert got.messages[-1].content == kept.output_text
            return len(ids)
        finally:
            await chat.close()

    assert asyncio.run(rows()) > 0


def test_stored_responses_survive_a_restart(server: Server) -> None:
    kept = oai(server).responses.create(model="tiny_a", input="Remember this", max_output_tokens=3)
    server.stop()
    server.start()
    again = oai(server).responses.retrieve(kept.id)
    assert again.output_text == kept.output_text and again.usage == kept.usage
