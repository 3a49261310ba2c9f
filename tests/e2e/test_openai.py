"""The OpenAI-compatible face through a real `bentoml serve` of configs/tiny.yaml, with the unmodified
`openai` SDK; raw HTTP only where the SDK hides what is checked (SSE framing, status of bad JSON)."""

from __future__ import annotations

from typing import Literal

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from tests.server import Server, assert_dropped_stream_stops, node_tokens, sse_events

NODES = {"tiny_a", "tiny_b"}
HI = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello world, this is"}]


@pytest.fixture(scope="module")
def server(tiny_server: Server) -> Server:
    return tiny_server  # tests/conftest.py: one configs/tiny.yaml server for the session


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    # max_retries=0: a 429/5xx must surface here, not be retried away
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list_every_node_and_the_graph(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [
        "tiny_a",
        "tiny_b",
        "graph",
        "graph:best",
        "graph:pruned",
        "graph:cheap_first",
        "graph:routed",
        "classifier",
    ]
    assert all(m.object == "model" and m.owned_by for m in client.models.list())


def test_chat_completion(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny_a", messages=HI, max_tokens=5, seed=3, temperature=0.7, user="u1")
    ChatCompletion.model_validate(out.model_dump())  # validated, not only parsed
    assert out.object == "chat.completion" and out.model == "tiny_a" and out.id.startswith("chatcmpl-")
    (choice,) = out.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert out.usage is not None and 1 <= out.usage.completion_tokens <= 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    same = client.chat.completions.create(model="tiny_a", messages=HI, max_tokens=5, seed=3, temperature=0.7)
    assert same.choices[0].message.content == choice.message.content  # seeded sampling repeats


def test_chat_formats_messages_once_as_a_transcript(client: openai.OpenAI, server: Server) -> None:
    # The tiny models have no chat template: the transcript "System: ...\nUser: ...\nAssistant:" is the prompt,
    # so the chat's prompt tokens equal the completion endpoint's for that exact text.
    chat = client.chat.completions.create(model="tiny_b", messages=HI, max_tokens=1)
    text = "System: You are terse.\nUser: Hello world, this is\nAssistant:"
    plain = client.completions.create(model="tiny_b", prompt=text, max_tokens=1)
    assert chat.usage is not None and plain.usage is not None
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]}]
    a = client.chat.completions.create(model="tiny_b", messages=parts, max_tokens=4, temperature=0)
    b = client.chat.completions.create(
        model="tiny_b", messages=[{"role": "user", "content": "Hello world"}], max_tokens=4, temperature=0
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_n_2(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny_b", messages=HI, n=2, max_completion_tokens=4)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage is not None and 2 <= out.usage.completion_tokens <= 8


def test_chat_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny_a", messages=HI, max_tokens=4, logprobs=True, top_logprobs=2, temperature=0
    )
    (choice,) = out.choices
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for t in choice.logprobs.content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy takes the most likely token


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny_a", messages=HI, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(model="tiny_a", messages=HI, max_tokens=6, temperature=0)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and plain.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens


def test_stream_is_sse_ending_with_done(server: Server) -> None:
    body = {"model": "graph", "messages": HI, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1][1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(d) for _, d in events[:-1]]
    scored = [c.choices[0] for c in chunks if c.choices and getattr(c.choices[0], "score", None) is not None]
    assert {c.model for c in scored} == NODES  # each node's completion scored in the stream


def test_completions(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny_b", prompt="The cat", max_tokens=4, logprobs=2, temperature=0)
    Completion.model_validate(out.model_dump())
    (choice,) = out.choices
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset is not None and choice.logprobs.text_offset[0] == 0
    echo = client.completions.create(
        model="tiny_b", prompt=["The cat", "A dog"], max_tokens=3, echo=True, temperature=0
    )
    assert echo.choices[0].text.startswith("The cat") and echo.choices[1].text.startswith("A dog")
    assert echo.choices[0].text == "The cat" + choice.text[: len(echo.choices[0].text) - 7]  # greedy: same start


def test_completions_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model="tiny_a", prompt="Once upon", max_tokens=5, temperature=0, stream=True)
    )
    plain = client.completions.create(model="tiny_a", prompt="Once upon", max_tokens=5, temperature=0)
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text


def test_named_graph_answers_its_decision(client: openai.OpenAI, server: Server) -> None:
    """graph:<name> runs the config's policy graph: one choice, the decided answer, with its score."""
    out = client.completions.create(model="graph:best", prompt="The cat", max_tokens=4, seed=7)
    assert out.model == "graph:best" and len(out.choices) == 1
    extra = out.choices[0].model_extra or {}
    assert extra["model"] in ("tiny_a", "tiny_b") and 0.0 <= extra["score"] <= 1.0
    # the same decision through /generate_score (same seed): the same answer and the same usage
    direct = httpx.post(
        server.url + "/generate_score",
        json={"original_sentence": "The cat", "graph": "best", "params": {"max_new_tokens": 4, "seed": 7}},
        timeout=60,
    ).json()
    assert direct["policy"] == "best_of" and set(direct["trace"]["nodes_run"]) == {"tiny_a", "tiny_b"}
    assert direct["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in direct["candidates"])
    assert direct["usage"]["winner"] == direct["answer"]["id"] and direct["usage"]["candidates"] == 3
    # usage counts every candidate's tokens (three of up to 4), and says which candidate won
    assert out.usage.completion_tokens == direct["usage"]["completion_tokens"]
    assert (out.usage.model_extra or {})["candidates"] == 3
    assert (out.usage.model_extra or {})["winners"] == [extra["candidate"]] == [direct["answer"]["id"]]
    streamed = list(client.completions.create(model="graph:best", prompt="The cat", max_tokens=4, seed=7, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text  # same seed, same answer


@pytest.mark.parametrize("model", ["graph:best", "graph:pruned", "graph:cheap_first"])
def test_named_graph_chat_streamed_and_not(client: openai.OpenAI, model: str) -> None:
    """Messages go through each node's chat template as for a node; the stream sends the decided answer
    (the policy's progress goes as SSE comments the SDK skips) and usage counts every candidate."""
    out = client.chat.completions.create(model=model, messages=HI, max_tokens=6, seed=11)
    (choice,) = out.choices
    assert out.model == model and choice.message.role == "assistant"
    assert (choice.model_extra or {})["model"] in NODES and choice.finish_reason in ("stop", "length")
    usage = out.usage.model_extra or {}
    assert usage["winners"] == [(choice.model_extra or {})["candidate"]] and usage["candidates"] >= 1
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HI, max_tokens=6, seed=11, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len(chunks[-2].choices)
    if model != "graph:pruned":  # which candidates a pruning round stops depends on timing
        assert text == choice.message.content  # seeded: the same decision
        assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_named_graph_stream_carries_the_policy_as_sse_comments(server: Server) -> None:
    body = {"model": "graph:cheap_first", "messages": HI, "max_tokens": 6, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    comments = [line for line in raw.split("\n") if line.startswith(": ")]
    kinds = [line.split(" ", 2)[1] for line in comments]
    assert "policy" in kinds and kinds[-1] == "decision"
    assert any('"type":"gate"' in line for line in comments) and any('"type":"candidates"' in line for line in comments)


def test_graph_model_scores_every_node(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="graph", messages=HI, max_tokens=4, n=2)
    assert out.model == "graph" and len(out.choices) == 4
    extra = [c.model_extra or {} for c in out.choices]
    assert sorted(e["model"] for e in extra) == ["tiny_a", "tiny_a", "tiny_b", "tiny_b"]
    scores = [e["score"] for e in extra]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    text = client.completions.create(model="graph", prompt="I have an idea!", max_tokens=3)
    assert {(c.model_extra or {})["model"] for c in text.choices} == NODES


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-5", messages=HI)
    assert exc.value.status_code == 404 and "gpt-5" in exc.value.message and "tiny_a" in exc.value.message
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "model"


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_unsupported_field_is_refused_by_name(client: openai.OpenAI, extra: dict, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny_a", messages=HI, extra_body=extra)
    assert exc.value.status_code == 400 and field in exc.value.message
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == field
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="tiny_a", prompt="hi", best_of=3)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", {"model": "tiny_a", "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "tiny_a", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0]",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny_a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ("/v1/chat/completions", {"model": "tiny_a", "messages": HI, "temperature": 3}, "temperature"),
        ("/v1/chat/completions", {"model": "tiny_a", "messages": HI, "max_tokens": 901}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"model": "tiny_a", "messages": HI, "max_completion_tokens": 901},
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", {"model": "tiny_a", "messages": HI, "n": 9}, "n"),
        ("/v1/chat/completions", {"model": "tiny_a", "messages": HI, "top_logprobs": 2}, "top_logprobs"),
        (
            "/v1/chat/completions",
            {"model": "tiny_a", "messages": HI, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny_a", "messages": [{"role": "user", "content": "x" * 5000}]},
            "messages",
        ),
        ("/v1/completions", {"model": "tiny_a", "prompt": [1, 2, 3]}, "prompt"),
        ("/v1/completions", {"model": "tiny_a", "prompt": "hi", "stop": [""]}, "stop[0]"),
        ("/v1/completions", {"model": "tiny_a", "prompt": "hi", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"prompt": "hi"}, "model"),
    ],
)
def test_bad_input_is_400_naming_the_field(server: Server, path: str, body: dict, param: str) -> None:
    before = node_tokens(server, "tiny_a")
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and param in err["message"], err
    assert node_tokens(server, "tiny_a") == before  # nothing reached a node


def test_bad_json_is_400(server: Server) -> None:
    r = httpx.post(server.url + "/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


LONG = "Hello world, this is"  # tiny_a runs it greedily for 900 tokens without an end-of-sequence


def test_dropped_stream_stops_node_work(server: Server) -> None:
    body = {"model": "tiny_a", "prompt": LONG, "max_tokens": 900, "temperature": 0, "stream": True}
    assert_dropped_stream_stops(server, "tiny_a", "/v1/completions", body, tokens=900)


def test_embeddings_one_vector_per_input(client: openai.OpenAI, server: Server) -> None:
    """The SDK asks for base64 and decodes it; float is asked for explicitly; /embed gives the same vectors."""
    texts = ["good happy", "bad sad", "a third text"]
    out = client.embeddings.create(model="classifier", input=texts)
    assert [d.index for d in out.data] == [0, 1, 2] and out.model == "classifier"
    dims = {len(d.embedding) for d in out.data}
    assert len(dims) == 1 and dims.pop() > 8
    assert all(abs(sum(x * x for x in d.embedding) - 1.0) < 1e-3 for d in out.data)  # unit length
    assert out.usage.prompt_tokens == out.usage.total_tokens >= len(texts)
    floats = client.embeddings.create(model="classifier", input=texts, encoding_format="float")
    for a, b in zip(out.data, floats.data):
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding)) < 1e-6
    one = client.embeddings.create(model="classifier", input="good happy", encoding_format="float")
    assert (
        len(one.data) == 1 and max(abs(x - y) for x, y in zip(one.data[0].embedding, floats.data[0].embedding)) < 1e-5
    )
    r = httpx.post(server.url + "/embed", json={"texts": texts}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "classifier" and len(body["embeddings"]) == 3
    assert body["prompt_tokens"] == floats.usage.prompt_tokens
    assert max(abs(x - y) for x, y in zip(body["embeddings"][2], floats.data[2].embedding)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"model": "tiny_a", "input": "hi"}, "model"),
        ({"model": "classifier", "input": []}, "input"),
        ({"model": "classifier", "input": [[1, 2, 3]]}, "input"),
        ({"model": "classifier", "input": "hi", "dimensions": 3}, "dimensions"),
    ],
)
def test_bad_embeddings_request_names_the_field(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(**kwargs, encoding_format="float")
    assert err.value.body["param"] == param, err.value.body


def test_chat_on_the_embedding_model_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="classifier", messages=HI, max_tokens=2)
    assert err.value.body["param"] == "model" and "/v1/embeddings" in err.value.body["message"]


class Thing(BaseModel):
    """What `chat.completions.parse` asks for (bounded, so a random tiny model finishes it)."""

    name: str = Field(max_length=8)
    ok: bool
    color: Literal["red", "green"]


@pytest.mark.parametrize("model", ["tiny_a", "tiny_b", "graph:best", "graph:cheap_first"])
def test_parse_with_a_pydantic_model(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.parse(model=model, messages=HI, max_tokens=120, response_format=Thing)
    thing = out.choices[0].message.parsed
    assert isinstance(thing, Thing) and out.choices[0].finish_reason == "stop"


def test_json_schema_with_n_2_gives_two_valid_objects(client: openai.OpenAI) -> None:
    strict = {**Thing.model_json_schema(), "additionalProperties": False}  # as the SDK sends it for parse()
    schema = {"name": "thing", "schema": strict, "strict": True}
    out = client.chat.completions.create(
        model="tiny_a",
        messages=HI,
        max_tokens=120,
        n=2,
        seed=4,
        response_format={"type": "json_schema", "json_schema": schema},
    )
    assert len(out.choices) == 2
    things = [Thing.model_validate_json(c.message.content or "") for c in out.choices]
    assert len(things) == 2


def test_json_cut_by_max_tokens_says_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="tiny_a", messages=HI, max_tokens=3, response_format=Thing)
    fmt = {"response_format": {"type": "json_object"}}  # the legacy endpoint: not in the SDK signature
    out = client.completions.create(model="tiny_a", prompt="Hi", max_tokens=3, extra_body=fmt)
    assert out.choices[0].finish_reason == "length" and out.choices[0].text.startswith("{")


def test_bad_schema_is_a_400_naming_response_format(client: openai.OpenAI) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nosuch"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny_a", messages=HI, max_tokens=4, response_format=bad)
    assert err.value.body["param"] == "response_format" and "nosuch" in err.value.body["message"]
