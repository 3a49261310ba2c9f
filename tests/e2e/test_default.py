"""configs/default.yaml end to end on the real embedded models (SmolLM2, Gemma 3, MiniLM) over HTTP, and its named
graphs' step kinds (the switch `router`, the split `canary`, the guard `polite`) over HTTP, the openai SDK and gRPC,
each answer naming its path. One server for the module: it loads both models on both sides of the hybrid."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from protos import inference_graph_pb2 as ig
from protos import inference_graph_pb2_grpc as ig_grpc
from protos import text_generator_pb2 as tg
from protos import text_generator_pb2_grpc as tg_grpc
from tests.grpc_client import grpc_config
from tests.server import Server


@pytest.fixture(scope="module")
def default_config(tmp_path_factory) -> tuple[Path, int]:
    """configs/default.yaml with its gRPC faces at a free port (not the fixed 50051 others may hold)."""
    return grpc_config("configs/default.yaml", tmp_path_factory.mktemp("default") / "default.yaml")


@pytest.fixture(scope="module")
def server(default_config):
    with Server(config=default_config[0], name="default") as srv:
        yield srv


@pytest.fixture(scope="module")
def seed_stub(server: Server, default_config):
    with grpc.insecure_channel(f"127.0.0.1:{default_config[1]}") as channel:
        yield tg_grpc.TextGeneratorStub(channel)


def test_generate_score_two_real_models(server: Server) -> None:
    r = httpx.post(server.url + "/generate_score", json={"original_sentence": "I have an idea!"}, timeout=300)
    assert r.status_code == 200, r.text
    items = r.json()
    assert {i["model"] for i in items} == {"smollm2", "gemma3"}
    for item in items:
        assert item["generated"].startswith("I have an idea!")
        assert item["completion"].strip(), item  # real models write real text
        assert 0.0 <= item["score"] <= 1.0
        assert set(item["labels"]) == {"positive", "negative"}
    rid = r.headers["x-request-id"]
    line = next(ln for ln in server.log().splitlines() if f"request_id={rid} generate_score spans=" in ln)
    spans, _ = json.JSONDecoder().raw_decode(line.split("spans=", 1)[1])
    (a0, a1), (b0, b1) = spans["smollm2"], spans["gemma3"]
    assert min(a1, b1) - max(a0, b0) > 0, spans  # both generators ran at the same time


def test_zero_shot_classifier_tells_sentiment(server: Server) -> None:
    texts = ["What a wonderful, happy day! I love it.", "This is awful. I hate it and feel miserable."]
    r = httpx.post(server.url + "/classify", json={"texts": texts}, timeout=60)
    assert r.status_code == 200, r.text
    good, bad = r.json()
    assert good["label"] == "positive" and bad["label"] == "negative"
    assert good["score"] > bad["score"]


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    body = {
        "prompt": "The best thing about the sea is",
        "model": "smollm2",
        "params": {"do_sample": True, "seed": 1234, "temperature": 1.0, "max_new_tokens": 16},
    }
    first = httpx.post(server.url + "/generate", json=body, timeout=120)
    second = httpx.post(server.url + "/generate", json=body, timeout=120)
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()[0]["results"][0]["text"] == second.json()[0]["results"][0]["text"]
    other = {**body, "params": {**body["params"], "seed": 99}}
    third = httpx.post(server.url + "/generate", json=other, timeout=120)
    assert third.json()[0]["results"][0]["text"] != first.json()[0]["results"][0]["text"]


def test_stop_string_on_a_real_tokenizer(server: Server) -> None:
    body = {
        "prompt": "List three colours: red,",
        "model": "gemma3",
        "params": {"max_new_tokens": 24, "do_sample": False},
    }
    full = httpx.post(server.url + "/generate", json=body, timeout=120).json()[0]["results"][0]["text"]
    words = full.split()
    assert len(words) >= 4, full
    stop = words[len(words) // 2]  # a word the greedy text really contains
    body["params"]["stop"] = [stop]
    res = httpx.post(server.url + "/generate", json=body, timeout=120).json()[0]["results"][0]
    assert res["finish_reason"] == "stop", res
    assert full.startswith(res["text"]) and full[len(res["text"]) :].startswith(stop)


def test_openai_face_on_real_models(server: Server) -> None:
    """/v1 on the default config: SmolLM2 formats a chat with its own template exactly once (the same
    prompt tokens as /generate's one-user-message wrap), Gemma (no template) gets the transcript."""
    models = httpx.get(server.url + "/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [
        "smollm2",
        "gemma3",
        "graph",
        "graph:best_of_3",
        "graph:best_of_3_pruned",
        "graph:cascade",
        "graph:polite",
        "graph:router",
        "graph:canary",
        "graph:failover",
        "graph:refine",
        "classifier",
    ]
    question = "Name a colour."
    plain = httpx.post(
        server.url + "/generate",
        timeout=120,
        json={"prompt": question, "model": "smollm2", "params": {"max_new_tokens": 4}},
    ).json()[0]["results"][0]
    chat = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=120,
        json={"model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": 4},
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == plain["prompt_tokens"]
    scored = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=300,
        json={"model": "graph", "messages": [{"role": "user", "content": "I have an idea!"}], "max_tokens": 8},
    )
    assert scored.status_code == 200, scored.text
    choices = scored.json()["choices"]
    assert {c["model"] for c in choices} == {"smollm2", "gemma3"}
    assert [c["score"] for c in choices] == sorted((c["score"] for c in choices), reverse=True)


def test_seed_example_calls_answer_with_new_text(server: Server, seed_stub) -> None:
    """The seed's own calls (max_length 7 and 20 on "Let me say something") on SmolLM2, whose chat
    template the caller never sees: max_length counts the text's own tokens plus the new ones."""
    text = "Let me say something"
    for max_length in (7, 20):
        out = seed_stub.Generate(tg.GenerateRequest(text=text, max_length=max_length), timeout=120).text
        assert out.startswith(text) and out[len(text) :].strip(), (max_length, out)
    request = tg.GenerateStreamedRequest(text=text, max_length=20, intermediate_result_interval_ms=100)
    streamed = "".join(r.text_fragment for r in seed_stub.GenerateStreamed(request, timeout=120))
    assert streamed.startswith(text) and streamed[len(text) :].strip(), streamed
    r = httpx.post(server.url + "/generate", timeout=120, json={"prompt": text, "model": "smollm2"})
    assert r.json()[0]["results"][0]["prompt_tokens"] > 7  # the template's tokens are not the caller's


def test_embeddings_put_similar_sentences_closer(server: Server) -> None:
    """The classifier's MiniLM through the unmodified `openai` SDK: one vector per input, and the
    cosine of two sentences about the same thing above that of unrelated ones."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly tax filings are due in April."]
    out = client.embeddings.create(model="classifier", input=texts)
    assert len(out.data) == 3 and all(len(d.embedding) == 384 for d in out.data)  # MiniLM-L6's size
    cat, kitten, tax = (d.embedding for d in out.data)
    cosine = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 (unit vectors)
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.2, (cosine(cat, kitten), cosine(cat, tax))
    assert out.usage.prompt_tokens > 3


def test_parse_on_each_real_node_returns_a_parsed_object(server: Server) -> None:
    """`chat.completions.parse(response_format=<pydantic model>)` on SmolLM2 and Gemma 3."""
    import openai
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    messages = [{"role": "user", "content": "Name one large city and its country, as JSON."}]
    for model in ("smollm2", "gemma3"):
        out = client.chat.completions.parse(model=model, messages=messages, max_tokens=64, response_format=City)
        city = out.choices[0].message.parsed
        assert isinstance(city, City) and city.name.strip(), (model, out.choices[0].message.content)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_on_each_real_node(server: Server, stream: bool) -> None:
    """The openai SDK's two-step tool loop on SmolLM2 (chat template) and Gemma 3 (transcript), streamed and not."""
    import jsonschema_rs
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    schema = WEATHER_TOOL["function"]["parameters"]
    for model in ("smollm2", "gemma3"):
        messages: list = [{"role": "user", "content": "What is the weather in Paris?"}]
        ask = dict(model=model, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False)
        if stream:
            calls: dict[int, dict] = {}
            finish = None
            for chunk in client.chat.completions.create(**ask, messages=messages, max_tokens=64, seed=1, stream=True):
                for c in chunk.choices:
                    for d in c.delta.tool_calls or []:
                        slot = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                        for key, value in (("id", d.id), ("name", d.function and d.function.name)):
                            slot[key] += value or ""
                        slot["arguments"] += (d.function and d.function.arguments) or ""
                    finish = c.finish_reason or finish
            made = [(v["id"], v["name"], v["arguments"]) for v in calls.values()]
        else:
            out = client.chat.completions.create(**ask, messages=messages, max_tokens=64, seed=1)
            finish = out.choices[0].finish_reason
            made = [(c.id, c.function.name, c.function.arguments) for c in out.choices[0].message.tool_calls or []]
        assert finish == "tool_calls" and len(made) == 1, (model, made)
        call_id, name, arguments = made[0]
        assert name == "get_weather"
        jsonschema_rs.validate(schema, json.loads(arguments))
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 21}'})
        reply = client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=24
        )
        assert reply.choices[0].message.content and reply.choices[0].message.tool_calls is None


# ---- named graphs' steps on the default config -------------------------------------------------------

SMALL_TALK = "Hi! How are you today?"  # MiniLM sorts it into small_talk (0.97): the router sends it to smollm2
PARAMS = {"max_new_tokens": 16, "seed": 3}


def test_http_switch_names_its_path_and_counts_it(server: Server) -> None:
    body = {"original_sentence": SMALL_TALK, "graph": "router", "params": PARAMS}
    r = httpx.post(server.url + "/generate_score", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["policy"] == "switch"
    switch, served = out["path"]
    assert (switch["kind"], switch["branch"]) == ("switch", "smollm2") and switch["why"].startswith("label small_talk")
    assert (served["graph"], served["kind"], served["depth"]) == ("smollm2", "node", 1)
    assert out["answer"]["model"] == "smollm2" and out["answer"]["completion"].strip()
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    assert 'graph_branch_total{branch="smollm2",graph="router",kind="switch",outcome="served"}' in metrics


def test_http_split_sticks_to_the_user(server: Server) -> None:
    from graph.config import load_config
    from graph.entry.policies.config import Split
    from graph.entry.policies.steps import pick

    canary = load_config("configs/default.yaml").policies.graphs["canary"]
    assert isinstance(canary, Split)
    for user in ("user-1", "user-19"):  # pick: smollm2 and gemma3 (90/10 weights)
        body = {"original_sentence": "Say hello.", "graph": "canary", "user": user, "params": {"max_new_tokens": 8}}
        r = httpx.post(server.url + "/generate_score", json=body, timeout=300)
        assert r.status_code == 200, r.text
        step = r.json()["path"][0]
        assert step["kind"] == "split" and step["branch"] == pick(canary, user)[0] and "sticky on user" in step["why"]
    bad = httpx.post(server.url + "/generate_score", json={"graph": "canary", "metadata": {"k": 1}}, timeout=60)
    assert bad.status_code == 400 and bad.json()["field"].startswith("metadata"), bad.text


def test_openai_sdk_guard_answer_carries_its_path(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    out = client.chat.completions.create(
        model="graph:polite",
        messages=[{"role": "user", "content": "Give me one tip for a rainy day."}],
        max_tokens=16,
        seed=3,
    )
    extra = out.choices[0].model_extra or {}
    assert extra["path"].startswith("polite[guard]:best_of_3 > best_of_3[best_of]"), extra
    assert out.choices[0].message.content
    usage = out.usage.model_extra if out.usage is not None else None
    assert usage is not None and usage["paths"] == [extra["path"]] and usage["candidates"] >= 3


def test_grpc_answer_names_its_path_in_trailing_metadata(server: Server, default_config) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{default_config[1]}") as channel:
        stub = ig_grpc.InferenceGraphStub(channel)
        request = ig.GenerateScoreRequest(
            original_sentence=SMALL_TALK, graph="router", params=ig.GenerationParams(max_new_tokens=16, seed=3)
        )
        reply, call = stub.GenerateScore.with_call(request, timeout=300)
    trailers = dict(call.trailing_metadata() or ())
    assert trailers["x-graph-path"] == "router[switch]:smollm2 > smollm2[node]", trailers
    assert trailers["x-request-id"]
    assert reply.graph == "router" and reply.completions[0].model == "smollm2"
