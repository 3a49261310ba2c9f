"""Chat turns in-process (tiny models, a real SQLite file): a node failing mid-turn rolls the whole turn
back, and the schema is versioned and created on first use."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from graph.config import load_config
from graph.entry.chat.schemas import InferRequest
from graph.entry.chat.session import ChatSessions
from graph.entry.chat.store import SCHEMA_VERSION, ChatStore
from graph.entry.context import RequestContext
from graph.entry.local import build_local_graph
from graph.errors import GraphError


def test_failed_node_rolls_the_turn_back_and_schema_is_versioned(tiny_dir: Path, tmp_path: Path) -> None:
    graph, engines = build_local_graph(load_config("configs/tiny.yaml"))
    db = tmp_path / "new" / "chat.sqlite3"

    async def run() -> tuple[int, int]:
        store = ChatStore(f"sqlite:///{db}")
        chat = ChatSessions(graph, store)
        ok = await chat.reply(
            RequestContext.make(timeout_s=60), InferRequest(user_id="u", message="hello", model="tiny_a")
        )
        assert ok.turn == 1
        engines["tiny_b"].close()  # the node dies: its requests fail with NodeFailure
        with pytest.raises(GraphError) as err:
            await chat.reply(
                RequestContext.make(timeout_s=60), InferRequest(user_id="u", message="lost?", model="tiny_b")
            )
        assert err.value.status == 500
        turns = (await chat.history(None, "u")).turns
        count = await store.count_messages()
        await store.close()
        return turns, count

    try:
        turns, count = asyncio.run(run())
    finally:
        for e in engines.values():
            e.close()
    assert (turns, count) == (1, 2)  # the failed turn left nothing behind: resend it
    with create_engine(f"sqlite:///{db}").connect() as conn:
        assert conn.execute(text("SELECT max(version) FROM chat_schema_version")).scalar() == SCHEMA_VERSION


def test_a_busy_postgresql_pool_is_a_503_with_retry_after() -> None:
    """A turn holds its one connection (lock, reads, write); with every connection held, another caller
    waits chat.pool_timeout_s and gets Unavailable (503 + Retry-After), not a 500."""
    from graph.errors import Unavailable
    from tests.postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL IS NOT INSTALLED: run `make postgres`")

    async def run(url: str) -> Unavailable:
        store = ChatStore(url, pool_size=1, pool_timeout_s=0.5)
        try:
            async with store.turn("k", "u") as turn:
                assert await turn.history() == []
                assert await turn.add("hi", "hello", "tiny_a", 3, 2) == 1  # reads and write on the lock's connection
                with pytest.raises(Unavailable) as err:
                    await store.history("k", "other")
            assert len(await store.history("k", "u")) == 2  # the connection is back once the turn ends
            return err.value
        finally:
            await store.close()

    with PostgresServer() as pg:
        err = asyncio.run(run(pg.url))
    assert err.status == 503 and err.retry_after_s >= 1 and "chat.pool_size" in err.message


def test_a_reply_with_a_nul_byte_is_stored_on_postgresql() -> None:
    """A model can sample a NUL byte token (a tiny model did, in a named graph's chat turn: psycopg's
    DataError was a 500 and the turn was lost). The reply is kept with U+FFFD in its place."""
    from graph.chat_format import clean_reply
    from tests.postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL IS NOT INSTALLED: run `make postgres`")

    async def run(url: str) -> list[str]:
        store = ChatStore(url)
        try:
            async with store.turn(None, "u") as turn:
                await turn.add("hi", clean_reply("x\x00y"), "tiny_a", 3, 2)
            return [m.content for m in await store.history(None, "u")]
        finally:
            await store.close()

    with PostgresServer() as pg:
        assert asyncio.run(run(pg.url)) == ["hi", "x\ufffdy"]
