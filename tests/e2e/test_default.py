"""configs/default.yaml end to end on the real embedded models (SmolLM2, Gemma 3, MiniLM) over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server import Server


@pytest.fixture(scope="module")
def server():
    with Server(config="configs/default.yaml", name="default") as srv:
        yield srv


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
