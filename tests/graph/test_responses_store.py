"""Stored responses (graph/entry/chat/responses.py) in a real SQLite database: per-key lookups, deletes, and a
writer killed with SIGKILL while storing leaves every response whole or absent."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from graph.chat_format import ChatMessage
from graph.entry.chat.responses import ResponseStore, StoredResponse
from graph.entry.chat.store import ChatStore
from graph.tools import ToolCall
from tests.server import ROOT

BIG = "x" * 200_000  # a response large enough that a write takes a while


def item(n: int, owner: str | None, text: str = "hi") -> StoredResponse:
    call = ToolCall(id=f"call_{n}", name="get_weather", arguments='{"city":"Paris"}')
    messages = [
        ChatMessage(role="user", content=f"question {n}"),
        ChatMessage(role="assistant", content=text, tool_calls=[call]),
    ]
    body = {"id": f"resp_{n:032x}", "output_text": text, "n": n}
    return StoredResponse(
        id=f"resp_{n:032x}",
        owner=owner,
        previous_id=None,
        model="m",
        created=time.time(),
        messages=messages,
        response=body,
    )


def test_a_response_is_found_only_under_its_key(tmp_path: Path) -> None:
    async def run() -> None:
        store = ResponseStore(ChatStore(f"sqlite:///{tmp_path}/db.sqlite3"))
        try:
            await store.save(item(1, "alice"))
            await store.save(item(2, None))
            found = await store.get("alice", f"resp_{1:032x}")
            assert found is not None and found.messages[1].tool_calls[0].name == "get_weather"
            assert await store.get("bob", f"resp_{1:032x}") is None
            assert await store.get(None, f"resp_{1:032x}") is None  # keys off does not read a key's response
            assert await store.get(None, f"resp_{2:032x}") is not None
            assert not await store.delete("bob", f"resp_{1:032x}")
            assert await store.delete("alice", f"resp_{1:032x}")
            assert await store.get("alice", f"resp_{1:032x}") is None
        finally:
            await store.store.close()

    asyncio.run(run())


WRITER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.graph.test_responses_store import BIG, item
from graph.entry.chat.responses import ResponseStore
from graph.entry.chat.store import ChatStore

async def main():
    store = ResponseStore(ChatStore({url!r}))
    n = 0
    while True:
        n += 1
        await store.save(item(n, "k", BIG + str(n)))
        print(n, flush=True)

asyncio.run(main())
"""


def test_sigkill_while_storing_leaves_each_response_whole_or_absent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    code = WRITER.format(root=str(ROOT), url=url)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for _ in range(5):  # a few responses stored, then killed in the middle of the next ones
            assert proc.stdout.readline().strip(), "the writer stopped early"
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    async def check() -> int:
        chat = ChatStore(url)
        store = ResponseStore(chat)
        try:
            async with chat.engine.connect() as conn:
                from sqlalchemy import select

                from graph.entry.chat.store import responses

                ids = [r[0] for r in await conn.execute(select(responses.c.id))]
            for rid in ids:
                got = await store.get("k", rid)
                assert got is not None
                n = got.response["n"]
                assert got.response["output_text"] == BIG + str(n)  # whole: every byte of it
                assert got.messages[-1].content == BIG + str(n) and got.messages[-1].tool_calls
                json.dumps(got.response)
            return len(ids)
        finally:
            await chat.close()

    stored = asyncio.run(check())
    assert stored >= 5
