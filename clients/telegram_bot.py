"""Telegram bot client of a running graph: each Telegram chat is one chat session (python-telegram-bot).

    TELEGRAM_BOT_TOKEN=123:abc python -m clients.telegram_bot --graph-url http://127.0.0.1:3000

With API keys on the graph, give the bot its key (`--graph-key` or $GRAPH_API_KEY): it is sent as a
Bearer token, so the bot's chats are charged to that key. Every call carries an `x-request-id`
(`tg-<16 hex digits>`), which an error message shows, so a user's report finds the server's log lines.

Commands: /start, /reset (deletes this chat's history), /model <name> (which generator answers),
/score <text> (every model's completion with its score), and any other text is a chat message.
Replies longer than Telegram's 4096 characters are split; a graph error is shown as a short message
and the bot goes on. `--api-url` points at another Bot API server (a local one, or a test stand-in).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ContextTypes, MessageHandler, filters

from graph.entry.chat.schemas import ChatReply, Forgotten
from graph.entry.context import new_request_id
from graph.entry.schemas import ScoredCompletion
from graph.errors import ErrorBody

log = logging.getLogger("graph.telegram_bot")
TELEGRAM_LIMIT = 4096  # characters in one Telegram message
_ERROR = TypeAdapter(ErrorBody | list[ErrorBody])
_SCORED = TypeAdapter(list[ScoredCompletion])


class GraphReplyError(Exception):
    """The graph answered an error or could not be reached; `str()` is short enough for a chat."""


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at a newline or space where there is one."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind("\n", 0, limit), text.rfind(" ", 0, limit))
        cut = cut if cut > limit // 2 else limit
        pieces.append(text[:cut])
        text = text[cut:].lstrip("\n ")
    return [*pieces, text] if text else pieces or [""]


class GraphClient:
    """The graph's HTTP API as the bot uses it (typed replies, errors as GraphReplyError)."""

    def __init__(self, url: str, timeout_s: float = 300, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=headers)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        rid = f"tg-{new_request_id()}"
        try:
            r = await self.http.post(path, json=body, headers={"x-request-id": rid})
        except httpx.HTTPError as exc:
            raise GraphReplyError(f"the graph is not reachable ({type(exc).__name__})") from None
        if r.status_code == 200:
            return r.json()
        rid = r.headers.get("x-request-id", rid)
        try:
            err = _ERROR.validate_json(r.content)
            err = err[0] if isinstance(err, list) else err
            wait = f"; retry in {r.headers['retry-after']} s" if "retry-after" in r.headers else ""
            raise GraphReplyError(f"{err.error}: {err.message}"[:300] + f"{wait} (request {rid})")
        except ValidationError:
            raise GraphReplyError(f"the graph answered HTTP {r.status_code} (request {rid})") from None

    async def chat(self, user_id: str, message: str, model: str | None) -> ChatReply:
        body = {"user_id": user_id, "message": message, **({"model": model} if model else {})}
        return ChatReply.model_validate(await self._post("/chat", body))

    async def forget(self, user_id: str) -> Forgotten:
        return Forgotten.model_validate(await self._post("/chat_delete", {"user_id": user_id}))

    async def score(self, text: str) -> list[ScoredCompletion]:
        return _SCORED.validate_python(await self._post("/generate_score", {"original_sentence": text}))

    async def models(self) -> list[str]:
        return sorted(await self._post("/node_stats", {}))


def session_id(update: Update) -> str:
    """The graph's user_id of a Telegram chat."""
    assert update.effective_chat is not None
    return f"telegram:{update.effective_chat.id}"


async def say(update: Update, text: str) -> None:
    assert update.effective_chat is not None
    for piece in split_message(text):
        await update.effective_chat.send_message(piece)


def build_app(
    token: str, graph_url: str, api_url: str = "https://api.telegram.org", graph_key: str | None = None
) -> Application:
    """The bot's Application (handlers registered), talking to the Bot API at `api_url`."""
    graph = GraphClient(graph_url, api_key=graph_key)
    api = api_url.rstrip("/")
    app = ApplicationBuilder().token(token).base_url(f"{api}/bot").base_file_url(f"{api}/file/bot").build()

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await say(
            update,
            "Hello! Send me a message and a model of the graph answers; it remembers this chat.\n"
            "/reset forgets it, /model <name> picks the model, /score <text> asks every model.",
        )

    async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        gone = await graph.forget(session_id(update))
        await say(update, f"History cleared ({gone.deleted_messages} messages deleted).")

    async def model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        names = await graph.models()
        wanted = " ".join(context.args or []).strip()
        if wanted not in names:
            current = context.chat_data.get("model") if context.chat_data is not None else None
            await say(update, f"Usage: /model <name>, one of: {', '.join(names)} (now: {current or 'default'})")
            return
        if context.chat_data is not None:
            context.chat_data["model"] = wanted
        await say(update, f"Model set to {wanted}.")

    async def score(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        text = " ".join(context.args or []).strip()
        if not text:
            await say(update, "Usage: /score <text>")
            return
        lines = [f"{s.model}: score {s.score:.3f} ({s.label}): {s.completion.strip()}" for s in await graph.score(text)]
        await say(update, "\n".join(lines))

    async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.text is not None
        chosen = context.chat_data.get("model") if context.chat_data is not None else None
        reply = await graph.chat(session_id(update), update.message.text, chosen)
        await say(update, reply.message or "(empty reply)")

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Any handler's failure becomes a short message to that chat; the bot keeps polling."""
        err = context.error
        text = str(err) if isinstance(err, GraphReplyError) else f"Something went wrong ({type(err).__name__})."
        if not isinstance(err, GraphReplyError):
            log.error("handler failed", exc_info=err)
        if isinstance(update, Update) and update.effective_chat is not None:
            await say(update, f"Sorry: {text}")

    app.add_handler(CommandHandler("start", start))
    app.add_handler(CommandHandler("reset", reset))
    app.add_handler(CommandHandler("model", model))
    app.add_handler(CommandHandler("score", score))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, chat))
    app.add_error_handler(on_error)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--token", default=os.environ.get("TELEGRAM_BOT_TOKEN"), help="BotFather's token (default: $TELEGRAM_BOT_TOKEN)"
    )
    p.add_argument("--graph-url", default=os.environ.get("GRAPH_URL", "http://127.0.0.1:3000"))
    p.add_argument(
        "--api-url",
        default=os.environ.get("TELEGRAM_API_URL", "https://api.telegram.org"),
        help="Bot API server (default: Telegram's)",
    )
    p.add_argument(
        "--graph-key",
        default=os.environ.get("GRAPH_API_KEY"),
        help="The graph's API key, if it has keys on (default: $GRAPH_API_KEY)",
    )
    args = p.parse_args(argv)
    if not args.token:
        p.error("no bot token: pass --token or set TELEGRAM_BOT_TOKEN (from @BotFather)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    build_app(args.token, args.graph_url, args.api_url, args.graph_key).run_polling(allowed_updates=Update.ALL_TYPES)


if __name__ == "__main__":
    main()
