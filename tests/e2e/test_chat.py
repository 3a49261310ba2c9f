"""Chat sessions through a real `bentoml serve` (tiny models), against SQLite and a real PostgreSQL server:
the seed's /infer contract, histories apart, a restart, max_turns and the token budget, concurrency,
deleting, and bad input that writes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from graph.chat_format import clean_reply
from graph.entry.chat.store import ChatStore
from tests.postgres import PostgresServer, postgres_bin
from tests.server import ROOT, Server, sse_events

MAX_TURNS = 2
SMALL_BUDGET = 72  # tiny_b's max_prompt_tokens: a few turns of history at most


class Live:
    """The module's server (replaced by the restart test) and its database."""

    def __init__(self, config: Path, url: str) -> None:
        self.config, self.url = config, url
        self.server = Server(config=config, name=f"chat-{config.stem}").start()

    def restart(self) -> None:
        self.server.stop()
        self.server = Server(config=self.config, name=f"chat-{self.config.stem}").start()

    def messages_in_db(self) -> int:
        async def count() -> int:
            store = ChatStore(self.url)
            try:
                return await store.count_messages()
            finally:
                await store.close()

        return asyncio.run(count())

    def rows_of(self, user_id: str) -> int:
        async def rows() -> int:
            store = ChatStore(self.url)
            try:
                return len(await store.history(None, user_id))
            finally:
                await store.close()

        return asyncio.run(rows())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp(f"chat-{request.param}")
    pg = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/db/chat.sqlite3"
    else:
        if postgres_bin() is None:
            pytest.skip(
                "PostgreSQL IS NOT INSTALLED: run `make postgres` (apt-get install postgresql); "
                "the PostgreSQL half of the chat tests did not run"
            )
        pg = PostgresServer().start()
        url = pg.url
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["generators"]["tiny_b"]["max_prompt_tokens"] = SMALL_BUDGET
    config["generators"]["tiny_a"]["scheduler"] = {"max_batch_size": 8, "max_queue": 64}  # 32 turns at once fit
    config["chat"] = {"database_url": url, "max_turns": MAX_TURNS, "default_model": "tiny_a"}
    path = tmp / f"chat_{request.param}.yaml"
    path.write_text(yaml.safe_dump(config))
    live = Live(path, url)
    try:
        yield live
    finally:
        live.server.stop()
        if pg is not None:
            pg.stop()


def post(live: Live, path: str, body: dict) -> httpx.Response:
    return httpx.post(live.server.url + path, json=body, timeout=120)


def history(live: Live, user_id: str) -> dict:
    r = post(live, "/chat_history", {"user_id": user_id})
    assert r.status_code == 200, r.text
    return r.json()


def test_infer_seed_contract(live: Live) -> None:
    r = post(live, "/infer", {"user_id": "seed", "message": "Hello, how are you?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["message"] and isinstance(body["message"], str)
    h = history(live, "seed")
    assert [(m["turn"], m["role"]) for m in h["messages"]] == [(1, "user"), (1, "assistant")]
    assert h["messages"][0]["content"] == "Hello, how are you?"
    assert h["messages"][1]["content"] == body["message"] and h["messages"][1]["model"] == "tiny_a"


def test_users_apart_and_chat_reply(live: Live) -> None:
    for user, text in [("alice", "I am Alice"), ("bob", "I am Bob"), ("alice", "Still Alice")]:
        r = post(live, "/chat", {"user_id": user, "message": text})
        assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["user_id"] == "alice" and reply["turn"] == 2 and reply["model"] == "tiny_a"
    assert reply["context_turns"] == 1 and reply["usage"]["prompt_tokens"] > 0
    assert [m["content"] for m in history(live, "alice")["messages"] if m["role"] == "user"] == [
        "I am Alice",
        "Still Alice",
    ]
    assert [m["content"] for m in history(live, "bob")["messages"] if m["role"] == "user"] == ["I am Bob"]


def test_max_turns_and_token_budget_cut_the_prompt(live: Live) -> None:
    # tiny_a (512 prompt tokens): only max_turns cuts the history.
    seen = [post(live, "/chat", {"user_id": "turns", "message": f"message number {i}"}).json() for i in range(4)]
    assert [s["context_turns"] for s in seen] == [0, 1, 2, 2]
    assert seen[3]["usage"]["prompt_tokens"] <= seen[2]["usage"]["prompt_tokens"] + 40
    # tiny_b (SMALL_BUDGET prompt tokens): long messages leave room for less history than max_turns,
    # and the conversation never fails for length.
    long = "the quick brown fox jumps over the lazy dog " * 2
    cut = []
    for _ in range(4):
        r = post(live, "/chat", {"user_id": "budget", "message": long, "model": "tiny_b"})
        assert r.status_code == 200, r.text
        cut.append(r.json())
    assert all(c["usage"]["prompt_tokens"] <= SMALL_BUDGET for c in cut)
    assert cut[-1]["context_turns"] < MAX_TURNS
    assert "node=tiny_b chat kept=" in live.server.log()  # the node's own account of what it received


def test_streamed_turn_is_stored(live: Live) -> None:
    with httpx.stream(
        "POST", live.server.url + "/chat_stream", json={"user_id": "streamer", "message": "hi"}, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [d for _, d in sse_events(r)]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert {e["type"] for e in events} <= {"token", "final", "turn"} and events[-1]["type"] == "turn"
    final = next(e for e in events if e["type"] == "final")
    reply = events[-1]["reply"]
    assert reply["turn"] == 1 and reply["usage"] == final["usage"]
    assert history(live, "streamer")["messages"][1]["content"] == reply["message"]


def test_a_named_graph_answers_chat_turns(live: Live) -> None:
    """/infer, /chat and /chat_stream take a graph: its decided answer is the turn's reply."""
    r = post(live, "/infer", {"user_id": "graphs", "message": "Hello", "graph": "best"})
    assert r.status_code == 200, r.text
    r = post(live, "/chat", {"user_id": "graphs", "message": "And then?", "graph": "cheap_first"})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["graph"] == "cheap_first" and reply["turn"] == 2 and reply["candidate"].startswith("c")
    with httpx.stream(
        "POST",
        live.server.url + "/chat_stream",
        json={"user_id": "graphs", "message": "More", "graph": "best"},
        timeout=120,
    ) as s:
        assert s.status_code == 200
        data = [d for _, d in sse_events(s)]
    events = [json.loads(d) for d in data[:-1]]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "candidates" and kinds[-2:] == ["decision", "turn"]
    decision, turn = events[-2]["result"], events[-1]["reply"]
    assert turn["message"] == clean_reply(decision["answer"]["completion"])  # the stored reply is the winner's
    assert turn["turn"] == 3 and turn["model"] == decision["answer"]["model"]
    assert [m["model"] for m in history(live, "graphs")["messages"] if m["role"] == "assistant"][2] == turn["model"]


def test_concurrent_messages_of_one_user_are_ordered_and_kept(live: Live) -> None:
    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.server.url, timeout=120) as client:
            return await asyncio.gather(
                *[client.post("/chat", json={"user_id": "carol", "message": text}) for text in ("first", "second")]
            )

    replies = asyncio.run(both())
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    turns = sorted(r.json()["turn"] for r in replies)
    assert turns == [1, 2]
    later = max((r.json() for r in replies), key=lambda j: j["turn"])
    assert later["context_turns"] == 1  # the second turn saw the first one's reply
    msgs = history(live, "carol")["messages"]
    assert [(m["turn"], m["role"]) for m in msgs] == [(1, "user"), (1, "assistant"), (2, "user"), (2, "assistant")]
    assert {msgs[0]["content"], msgs[2]["content"]} == {"first", "second"}


def test_32_concurrent_turns_on_one_replica_all_answered(live: Live) -> None:
    """32 chat turns at once, each on its own conversation, on one entry replica: every one answered
    (a turn takes one database connection for its lock, reads and write; more turns than the pool holds
    wait for one), none a 5xx, each stored."""

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.server.url, timeout=120) as client:
            return await asyncio.gather(
                *[client.post("/chat", json={"user_id": f"crowd{i}", "message": f"hello {i}"}) for i in range(32)]
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 32, sorted({(r.status_code, r.text[:300]) for r in responses})
    assert all(r.json()["turn"] == 1 for r in responses)
    assert live.rows_of("crowd31") == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user_id": "bad", "message": ""}, "message"),
        ({"user_id": "bad", "message": "   "}, "message"),
        ({"user_id": "bad", "message": "x" * 4001}, "message"),
        ({"user_id": "bad", "message": "hi", "model": "nope"}, "model"),
        ({"user_id": 5, "message": "hi"}, "user_id"),
        ({"user_id": "bad", "message": ["hi"]}, "message"),
        ({"user_id": "", "message": "hi"}, "user_id"),
        ({"user_id": "bad", "message": "hi", "params": {"temperature": "hot"}}, "params.temperature"),
        (
            {"user_id": "bad", "message": "hi", "params": {"num_return_sequences": 2, "do_sample": True}},
            "params.num_return_sequences",
        ),
        ({"user_id": "bad", "message": "hi", "mesage": "typo"}, "mesage"),
        ({"user_id": "bad", "message": "hi", "graph": "nope"}, "graph"),
        ({"user_id": "bad", "message": "hi", "graph": "best", "model": "tiny_a"}, "graph"),
        ({"user_id": "bad", "message": "a\u0000b"}, "message"),  # PostgreSQL text cannot hold NUL
        ({"user_id": "b\u0000d", "message": "hi"}, "user_id"),
    ],
)
@pytest.mark.parametrize("path", ["/infer", "/chat"])
def test_bad_input_is_a_4xx_and_writes_nothing(live: Live, path: str, body: dict, field: str) -> None:
    before = live.messages_in_db()
    r = post(live, path, body)
    assert r.status_code == 400, r.text
    err = r.json()
    err = err[0] if isinstance(err, list) else err
    assert err["error"] == "validation" and err["field"] == field, err
    assert live.messages_in_db() == before


def test_history_survives_a_restart(live: Live) -> None:
    post(live, "/infer", {"user_id": "durable", "message": "remember me"})
    before = history(live, "durable")
    live.restart()
    after = history(live, "durable")
    assert after == before and after["turns"] == 1
    r = post(live, "/chat", {"user_id": "durable", "message": "again"})
    assert r.status_code == 200 and r.json()["turn"] == 2 and r.json()["context_turns"] == 1


def test_delete_removes_the_history_from_the_database(live: Live) -> None:
    for text in ("one", "two"):
        assert post(live, "/infer", {"user_id": "forget-me", "message": text}).status_code == 200
    assert live.rows_of("forget-me") == 4
    r = post(live, "/chat_delete", {"user_id": "forget-me"})
    assert r.status_code == 200 and r.json() == {"user_id": "forget-me", "deleted_messages": 4}
    assert live.rows_of("forget-me") == 0  # read from the database itself, not through the server
    assert history(live, "forget-me") == {"user_id": "forget-me", "turns": 0, "messages": []}
    assert post(live, "/chat", {"user_id": "forget-me", "message": "hi"}).json()["turn"] == 1
