"""A local Bot API stand-in for the bot's tests: the real HTTP protocol (getMe, long-poll getUpdates,
sendMessage recording what was sent; any other method answers ok), served by aiohttp in a thread."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any

from aiohttp import web

from tests.server import free_port

BOT = {"id": 4242, "is_bot": True, "first_name": "Graph", "username": "graph_test_bot"}


class BotApiStandIn:
    """`push(chat_id, text)` queues a user's message as an update; `sent(chat_id)` is what the bot sent."""

    def __init__(self, token: str = "123:test") -> None:
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ids = itertools.count(1)
        self._updates: list[dict[str, Any]] = []
        self._sent: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._new_update: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # ---- test side --------------------------------------------------------------------------------
    def start(self) -> BotApiStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def push(self, chat_id: int, text: str) -> None:
        n = next(self._ids)
        message: dict[str, Any] = {
            "message_id": n,
            "date": int(time.time()),
            "text": text,
            "chat": {"id": chat_id, "type": "private", "first_name": "Tester"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Tester"},
        }
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        self._loop.call_soon_threadsafe(self._add_update, {"update_id": n, "message": message})

    def sent(self, chat_id: int) -> list[str]:
        with self._cond:
            return [m["text"] for m in self._sent if int(m["chat_id"]) == chat_id]

    def wait_sent(self, chat_id: int, count: int, timeout_s: float = 120) -> list[str]:
        """The first `count` texts sent to `chat_id`, waiting for them."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.sent(chat_id)) >= count, timeout_s)
        assert ok, f"bot sent {self.sent(chat_id)} to chat {chat_id}, expected {count} messages"
        return self.sent(chat_id)[:count]

    # ---- server side ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._new_update = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def _add_update(self, update: dict[str, Any]) -> None:
        self._updates.append(update)
        assert self._new_update is not None
        self._new_update.set()

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        params: dict[str, Any] = dict(await request.post())
        if request.content_type == "application/json":
            params = await request.json()
        method = request.match_info["method"]
        if method == "getMe":
            return _ok(BOT)
        if method == "getUpdates":
            return _ok(await self._get_updates(int(params.get("offset", 0) or 0), float(params.get("timeout", 0) or 0)))
        if method == "sendMessage":
            chat_id = int(params["chat_id"])
            with self._cond:
                self._sent.append({"chat_id": chat_id, "text": params["text"]})
                self._cond.notify_all()
            return _ok(
                {
                    "message_id": next(self._ids),
                    "date": int(time.time()),
                    "text": params["text"],
                    "chat": {"id": chat_id, "type": "private"},
                    "from": BOT,
                }
            )
        return _ok(True)  # deleteWebhook, sendChatAction, ...: accepted

    async def _get_updates(self, offset: int, timeout: float) -> list[dict[str, Any]]:
        """Telegram's long poll: confirm updates below `offset`, wait up to `timeout` s for new ones."""
        assert self._new_update is not None
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), min(timeout, 2.0))
            except TimeoutError:
                pass
        return list(self._updates)


def _ok(result: Any) -> web.Response:
    return web.Response(text=json.dumps({"ok": True, "result": result}), content_type="application/json")
