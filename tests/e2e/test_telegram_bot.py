"""The Telegram bot (clients/telegram_bot.py, its own process) against a local Bot API stand-in and a real
`bentoml serve` of the tiny graph: replies, /reset, /model, /score, and graph errors that never stop it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.server import ARTIFACTS, ROOT, Server
from tests.telegram_standin import BotApiStandIn


class Rig:
    def __init__(self, graph: Server, api: BotApiStandIn, bot: subprocess.Popen[bytes], log: Path) -> None:
        self.graph, self.api, self.bot, self.log = graph, api, bot, log

    def say(self, chat_id: int, text: str, expect: int = 1) -> list[str]:
        """Send `text` as the user of `chat_id`; the bot's next `expect` messages to that chat."""
        before = len(self.api.sent(chat_id))
        self.api.push(chat_id, text)
        return self.api.wait_sent(chat_id, before + expect)[before:]

    def history(self, chat_id: int) -> dict:
        r = httpx.post(self.graph.url + "/chat_history", json={"user_id": f"telegram:{chat_id}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def rig(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("bot")
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["chat"] = {"database_url": f"sqlite:///{tmp}/chat.sqlite3"}
    (tmp / "bot.yaml").write_text(yaml.safe_dump(config))
    api = BotApiStandIn().start()
    log = ARTIFACTS / "logs" / f"telegram-bot-{api.port}.log"
    with Server(config=tmp / "bot.yaml", name="bot-graph") as graph:
        bot = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clients.telegram_bot",
                "--token",
                api.token,
                "--graph-url",
                graph.url,
                "--api-url",
                api.url,
            ],
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            yield Rig(graph, api, bot, log)
        finally:
            bot.terminate()
            bot.wait(20)
            api.stop()


def test_start_and_a_message_gets_the_graphs_reply(rig: Rig) -> None:
    (hello,) = rig.say(1, "/start")
    assert "/reset" in hello and "/score" in hello
    (reply,) = rig.say(1, "Hello bot")
    history = rig.history(1)
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["Hello bot"]
    stored = history["messages"][1]["content"]
    assert reply == (stored or "(empty reply)")


def test_reset_clears_the_history(rig: Rig) -> None:
    rig.say(2, "one")
    rig.say(2, "two")
    assert rig.history(2)["turns"] == 2
    (done,) = rig.say(2, "/reset")
    assert done == "History cleared (4 messages deleted)."
    assert rig.history(2) == {"user_id": "telegram:2", "turns": 0, "messages": []}


def test_model_picks_the_generator(rig: Rig) -> None:
    (usage,) = rig.say(3, "/model nope")
    assert usage.startswith("Usage: /model <name>, one of: tiny_a, tiny_b")
    assert rig.say(3, "/model tiny_b") == ["Model set to tiny_b."]
    rig.say(3, "which model?")
    assert rig.history(3)["messages"][1]["model"] == "tiny_b"


def test_score_shows_one_line_per_model(rig: Rig) -> None:
    (text,) = rig.say(4, "/score I have an idea!")
    lines = text.split("\n")
    assert len(lines) == 2, text
    for line, model in zip(sorted(lines), ["tiny_a", "tiny_b"]):
        m = re.match(rf"^{model}: score (\d\.\d{{3}}) \((positive|negative)\): ", line)
        assert m and 0.0 <= float(m.group(1)) <= 1.0, line


def test_graph_error_is_a_short_message_and_the_bot_goes_on(rig: Rig) -> None:
    (err,) = rig.say(5, "x" * 4050)  # above the graph's prompt.max_chars (4000): a 400 from /chat
    assert err.startswith("Sorry: validation: message: 4050 characters is above the limit of 4000"), err
    assert len(err) < 400
    assert rig.history(5)["turns"] == 0
    (reply,) = rig.say(5, "and now a normal message")
    assert rig.bot.poll() is None, rig.log.read_text()[-3000:]
    assert rig.history(5)["turns"] == 1 and reply
