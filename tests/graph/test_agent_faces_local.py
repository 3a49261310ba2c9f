"""The Messages and Responses faces in-process on the tiny models: every generated token is charged to the
request's caller (plain, streamed, a named graph's candidates), through the graph's one metered path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from graph.config import load_config
from graph.entry.auth import Caller
from graph.entry.chat.responses import ResponseStore
from graph.entry.chat.store import ChatStore
from graph.entry.context import RequestContext
from graph.entry.faces.anthropic_face import AnthropicFace
from graph.entry.faces.anthropic_shapes import MessagesRequest, parse_messages
from graph.entry.faces.openai_face import OpenAIFace
from graph.entry.faces.responses_face import ResponsesFace
from graph.entry.faces.responses_shapes import parse_responses
from graph.entry.local import build_local_graph


class Ledger:
    """A meter (graph/entry/context.py `Meter`) that keeps what each key was charged."""

    def __init__(self) -> None:
        self.charged: dict[str | None, int] = {}

    def charge(self, caller: Caller, tokens: int) -> None:
        self.charged[caller.key_id] = self.charged.get(caller.key_id, 0) + tokens


@pytest.fixture(scope="module")
def face(tiny_dir):
    graph, engines = build_local_graph(load_config("configs/tiny.yaml"))
    yield OpenAIFace(graph)
    for e in engines.values():
        e.close()


def ctx(ledger: Ledger, key: str) -> RequestContext:
    return RequestContext.make(timeout_s=120, caller=Caller(key_id=key), meter=ledger)


HELLO = [{"role": "user", "content": "Hello world, this is"}]


def test_messages_charge_every_token(face: OpenAIFace) -> None:
    ledger, anthropic = Ledger(), AnthropicFace(face)

    async def run() -> None:
        req = parse_messages(MessagesRequest, {"model": "tiny_a", "max_tokens": 6, "messages": HELLO})
        out = await anthropic.create(ctx(ledger, "plain"), req)
        assert not isinstance(out, str) and hasattr(out, "usage")
        assert ledger.charged["plain"] == out.usage.output_tokens  # pyright: ignore[reportAttributeAccessIssue]
        streamed = parse_messages(
            MessagesRequest, {"model": "graph:best", "max_tokens": 4, "messages": HELLO, "stream": True}
        )
        events = [e async for e in await anthropic.create(ctx(ledger, "graph"), streamed)]  # type: ignore[union-attr]
        delta = next(json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: message_delta"))
        assert ledger.charged["graph"] == delta["usage"]["output_tokens"] >= 3  # all three candidates' tokens

    asyncio.run(run())


def test_responses_charge_every_token(face: OpenAIFace, tmp_path: Path) -> None:
    ledger = Ledger()

    async def run() -> None:
        store = ChatStore(f"sqlite:///{tmp_path}/db.sqlite3")
        responses = ResponsesFace(face, ResponseStore(store))
        try:
            out = await responses.create(
                ctx(ledger, "k"), parse_responses({"model": "tiny_b", "input": "Hi", "max_output_tokens": 5})
            )
            assert not isinstance(out, str) and out.usage is not None  # pyright: ignore[reportAttributeAccessIssue]
            assert ledger.charged["k"] == out.usage.output_tokens  # pyright: ignore[reportAttributeAccessIssue]
        finally:
            await store.close()

    asyncio.run(run())
