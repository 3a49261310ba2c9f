"""The playground page at /playground in a real browser (Debian's chromium via Playwright) on a real `bentoml serve`
of configs/tiny.yaml: the graph drawn from the config, every model streaming into its own column, scores, a bad
value's message next to its field, Stop halting the node's work, and no request to any host but the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import jsonschema_rs
import pytest

from graph.config import load_config
from graph.entry.topology import GraphInfo, describe
from tests.server import ARTIFACTS, Server

SCREENSHOTS = ARTIFACTS / "screenshots"
LONG_PROMPT = "Hello world, this is"  # tiny_a and tiny_b run this greedily to 900 tokens without EOS
CONFIG = load_config("configs/tiny.yaml")


@pytest.fixture(scope="module")
def server(tiny_server: Server) -> Server:
    return tiny_server  # tests/conftest.py: one configs/tiny.yaml server for the session


@pytest.fixture
def blocked() -> list[str]:
    """URLs the page asked for on any host but the server (each was refused)."""
    return []


@pytest.fixture
def page(browser: Any, server: Server, blocked: list[str]) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1280, "height": 1300})
    local = urlparse(server.url).netloc

    def only_the_server(route: Any) -> None:
        if urlparse(route.request.url).netloc == local:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/playground", wait_until="domcontentloaded")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    yield page
    page.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def node_stats(server: Server) -> dict[str, Any]:
    r = httpx.post(server.url + "/node_stats", json={}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def run_prompt(page: Any, prompt: str, *, model: str = "", **params: str) -> None:
    page.fill("#prompt", prompt)
    page.select_option("#model", model)
    for name, value in params.items():
        page.fill(f"#p-{name}", value)
    page.click("#run-button")


def test_graph_endpoint_describes_the_config(server: Server) -> None:
    r = httpx.get(server.url + "/graph", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    info = GraphInfo.model_validate_json(r.text)
    assert info == describe(CONFIG)
    assert [g.name for g in info.generators] == ["tiny_a", "tiny_b"]
    assert info.generators[0].max_new_tokens_limit == 900 and info.generators[0].defaults.max_new_tokens == 8
    assert {(e.source, e.target) for e in info.edges} == {
        ("prompt", "tiny_a"),
        ("prompt", "tiny_b"),
        ("tiny_a", "classifier"),
        ("tiny_b", "classifier"),
        ("classifier", "output"),
    }


def test_page_draws_the_graph_and_streams_every_model(server: Server, page: Any, blocked: list[str]) -> None:
    names = [*CONFIG.generators, "classifier"]
    for name in names:
        assert page.locator(f'.node[data-node="{name}"]').is_visible(), name
    assert page.locator("#edges path[data-source]").count() == len(describe(CONFIG).edges)
    assert CONFIG.generators["tiny_a"].model.describe() in page.inner_text('.node[data-node="tiny_a"]')
    # live state from /node_stats (polled every playground.refresh_ms)
    page.wait_for_function(
        """() => ['tiny_a', 'tiny_b'].every(n =>
        document.querySelector(`.node[data-node="${n}"] .state`).textContent.includes('tok/s'))""",
        timeout=15_000,
    )
    # the parameter form comes from the API's schema: bounds of GenerationParams, no copy in the page
    assert page.get_attribute("#p-temperature", "max") == "5" and page.get_attribute("#p-top_k", "max") == "1000"

    run_prompt(page, LONG_PROMPT, max_new_tokens="900")
    # text in every model's column while at least one completion is still streaming
    page.wait_for_function(
        """() => {
        const texts = [...document.querySelectorAll('.column .completion .text')];
        return texts.length === 2 && texts.every(t => t.textContent.length > 0); }""",
        timeout=60_000,
        polling=20,
    )
    done_when_all_had_text = page.locator(".completion.done").count()
    assert done_when_all_had_text < 2, "both completions had finished before text showed in every column"

    page.wait_for_function("document.querySelectorAll('.completion.scored').length === 2", timeout=120_000)
    for model in CONFIG.generators:
        col = page.locator(f'.column[data-model="{model}"]')
        meta = col.locator(".meta").inner_text()
        assert "finish: length" in meta and "completion 900 tok" in meta and "first token" in meta, meta
        assert int(col.locator(".completion").get_attribute("data-chunks") or 0) > 10  # many events, not one block
        score = col.locator(".score").inner_text()
        assert ("positive" in score or "negative" in score) and "score 0." in score, score
    assert not page.locator(".notice").count()

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert blocked == []  # the page asked nothing of any other host (all of them were refused anyway)


def test_bad_value_shows_the_servers_message_next_to_the_field(server: Server, page: Any) -> None:
    body = {"prompt": "hi", "params": {"temperature": -1}}
    expected = httpx.post(server.url + "/generate_score_stream", json=body, timeout=30).json()
    assert expected["field"] == "params.temperature"

    run_prompt(page, "hi", temperature="-1")
    error = page.locator('.field[data-field="params.temperature"] .field-error')
    error.wait_for(state="visible", timeout=30_000)
    assert error.inner_text() == expected["message"]
    assert page.locator(".column").count() == 0  # nothing ran
    assert page.is_enabled("#run-button") and not page.is_enabled("#stop-button")

    page.fill("#p-temperature", "")
    run_prompt(page, "hi", model="", max_new_tokens="2")
    page.wait_for_function("document.querySelectorAll('.completion.scored').length === 2", timeout=60_000)
    assert error.inner_text() == ""  # a new run clears the old message


def test_stop_cancels_the_nodes_work(server: Server, page: Any) -> None:
    before = node_stats(server)["tiny_a"]
    run_prompt(page, LONG_PROMPT, model="tiny_a", max_new_tokens="900")
    page.wait_for_function(
        "document.querySelector('.column[data-model=\"tiny_a\"] .text')?.textContent.length > 0",
        timeout=60_000,
        polling=20,
    )
    page.click("#stop-button")
    stopped_at = time.monotonic()
    assert page.locator(".completion.done").count() == 0, "the completion ended before Stop was pressed"
    assert page.locator('.column[data-model="tiny_a"].stopped').count() == 1
    assert page.is_enabled("#run-button")

    time.sleep(max(0.0, stopped_at + 2.0 - time.monotonic()))
    two_s = node_stats(server)["tiny_a"]
    time.sleep(1.5)
    later = node_stats(server)["tiny_a"]
    assert later["generated_tokens_total"] == two_s["generated_tokens_total"], (two_s, later)
    assert two_s["generated_tokens_total"] - before["generated_tokens_total"] < 900  # it never ran to the end
    assert later["cancelled_total"] == before["cancelled_total"] + 1
    assert later["active_rows"] == 0


def test_overloaded_node_is_a_visible_notice(server: Server, page: Any) -> None:
    """tiny_a's batch (8 rows) and queue (16) filled by 30 real streams: the page's run is refused, and says so."""
    body = {"prompt": LONG_PROMPT, "model": "tiny_a", "params": {"max_new_tokens": 900}}
    done = threading.Event()

    async def one(client: httpx.AsyncClient) -> None:
        # each stream is sent again when it ends (finished or refused), so the node stays full however
        # slowly the 30 requests arrive on a loaded machine
        while not done.is_set():
            try:
                async with client.stream("POST", server.url + "/generate_stream", json=body) as r:
                    async for _ in r.aiter_bytes():
                        if done.is_set():
                            return  # leaving closes the stream: the node cancels the work
            except httpx.HTTPError:
                pass  # a dropped connection under load: send it again
            await asyncio.sleep(0.05)

    async def flood() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*[one(client) for _ in range(30)], return_exceptions=True)

    rejected_before = node_stats(server)["tiny_a"]["rejected_total"]
    flooder = threading.Thread(target=asyncio.run, args=(flood(),))
    flooder.start()
    try:
        deadline = time.monotonic() + 60
        while node_stats(server)["tiny_a"]["rejected_total"] == rejected_before:  # full: it refuses now
            assert time.monotonic() < deadline, "the flood never filled tiny_a's queue"
            time.sleep(0.1)
        run_prompt(page, "hi", model="tiny_a", max_new_tokens="4")
        warning = page.locator(".notice.warn")
        warning.wait_for(state="visible", timeout=30_000)
        text = warning.inner_text()
        assert "Overloaded" in text and "tiny_a" in text and "retry in" in text, text
    finally:
        done.set()
        flooder.join(timeout=120)
    assert not flooder.is_alive()


def test_chat_tab_keeps_a_conversation_on_the_server(server: Server, page: Any) -> None:
    """The chat tab (shown because the spec has POST /chat) talks to the real chat API: two turns,
    kept by the server under the page's own user id; a new conversation starts a new user."""
    page.click("#chat-tab")
    page.select_option("#chat-model", "tiny_a")
    for n, text in enumerate(["Hello there", "And again"], 1):
        page.fill("#chat-message", text)
        page.click("#chat-form button[type=submit]")
        page.wait_for_function(f"document.querySelectorAll('#chat-log .msg.assistant').length >= {n}", timeout=60_000)
    user = page.evaluate("localStorage.getItem('playground-user')")
    history = httpx.post(server.url + "/chat_history", json={"user_id": user}, timeout=10).json()
    assert history["turns"] == 2
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["Hello there", "And again"]
    page.click("#chat-new")
    assert page.evaluate("localStorage.getItem('playground-user')") != user
    assert page.locator("#chat-log .msg").count() == 0


def test_named_graph_runs_and_shows_its_decisions(server: Server, page: Any) -> None:
    """The graph selector runs a named graph: its candidates stream into their nodes' columns and its
    progress shows (candidates, pruning rounds, the cascade's gate, the deadline, the decision, and a
    nested graph's steps and the path it took)."""
    assert [o for o in page.locator("#graph-select option").all_inner_texts()][1:] == [
        f"{g.name} ({g.policy}: {', '.join(g.nodes)})" for g in describe(CONFIG).graphs
    ]
    page.fill("#prompt", LONG_PROMPT)
    page.select_option("#graph-select", "pruned")
    assert page.is_disabled("#model")  # a named graph chooses its own nodes
    page.fill("#p-max_new_tokens", "40")
    page.fill("#p-seed", "3")
    page.fill("#deadline_ms", "120000")
    page.click("#run-button")
    page.wait_for_selector("#policy li.decision", timeout=120_000)
    lines = page.locator("#policy li").all_inner_texts()
    assert (
        lines[0]
        == "candidates: c0 on tiny_a (seed 3), c1 on tiny_a (seed 4), c2 on tiny_b (seed 5), c3 on tiny_b (seed 6)"
    )
    assert any(line.startswith("prune round 1: leader c") for line in lines), lines
    assert "deadline 120000 ms" in lines[-1] and "4 candidates" in lines[-1], lines[-1]
    assert page.locator(".completion.winner").count() == 1
    assert page.locator(".completion[data-candidate]").count() == 4

    page.select_option("#graph-select", "cheap_first")
    page.fill("#deadline_ms", "")
    page.click("#run-button")
    page.wait_for_selector("#policy li.decision", timeout=120_000)
    lines = page.locator("#policy li").all_inner_texts()
    assert lines[0].startswith("candidates: c0 on tiny_b") and lines[1].startswith("gate on tiny_b (c0): score 0.")
    assert page.locator(".completion.winner").count() == 1

    page.select_option("#graph-select", "routed")  # a nested graph: a fallback over the cascade
    page.click("#run-button")
    page.wait_for_selector("#policy li.decision", timeout=120_000)
    lines = page.locator("#policy li").all_inner_texts()
    assert lines[0].startswith("candidates: f0.c0 on tiny_b"), lines
    assert "routed (fallback) → cheap_first: served · first choice" in lines, lines
    assert page.locator("#policy li.path").inner_text() == "routed[fallback]:cheap_first › cheap_first[cascade]"
    assert page.locator("#policy li.path .hop").count() == 2
    assert page.locator(".completion.winner").count() == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "playground-named-graph.png"), full_page=True)


def boxes(tree: Any) -> int:
    return 1 + sum(boxes(k) for k in tree.children)


def test_nested_graph_is_drawn_and_its_path_lights_up_live(server: Server, page: Any) -> None:
    """Selecting a nested graph (routed: a fallback over the cascade cheap_first, then tiny_b) draws its
    diagram from GET /graph, the cascade's box inside the fallback's; a run lights the path: the branch its
    first candidate starts on shows as running before the decision arrives, then the path the answer names
    (routed → cheap_first → the node that answered) is lit and the branch not taken is not."""
    routed = next(g for g in describe(CONFIG).graphs if g.name == "routed")
    page.select_option("#graph-select", "routed")
    root = page.locator('#diagram > .gbox[data-name="routed"]')
    assert root.is_visible() and root.get_attribute("data-kind") == "fallback"
    assert page.locator("#diagram .gbox").count() == boxes(routed.diagram) == 5
    branches = root.locator(":scope > .gbranches > .gbox")
    assert [branches.nth(i).get_attribute("data-name") for i in range(2)] == ["cheap_first", "tiny_b"]
    cascade, second = branches.nth(0), branches.nth(1)
    assert cascade.get_attribute("data-kind") == "cascade" and cascade.get_attribute("data-key") == "order[0]"
    stages = cascade.locator(":scope > .gbranches > .gbox")
    assert [stages.nth(i).get_attribute("data-name") for i in range(2)] == ["tiny_b", "tiny_a"]  # nested inside
    assert "gate: P(positive) ≥ 0.5" in cascade.inner_text()
    assert not page.locator("#diagram .gbox.lit, #diagram .gbox.running").count()

    # when each box changes, and when the decision's line shows (page time, ms)
    page.evaluate(
        """() => {
        window.seen = []; window.decidedAt = null;
        new MutationObserver((ms) => ms.forEach((m) => window.seen.push(
            [m.target.dataset.name, m.target.dataset.depth, m.target.className, performance.now()])))
          .observe(document.querySelector('#diagram'), {subtree: true, attributes: true, attributeFilter: ['class']});
        const decided = () => document.querySelector('#policy li.decision') && (window.decidedAt ??= performance.now());
        new MutationObserver(decided)
          .observe(document.querySelector('#policy'), {childList: true});
        }"""
    )
    page.fill("#prompt", LONG_PROMPT)
    page.fill("#p-max_new_tokens", "40")
    page.click("#run-button")
    page.wait_for_selector("#diagram[data-done=true]", timeout=120_000)
    seen, decided_at = page.evaluate("[window.seen, window.decidedAt]")
    running = [t for name, depth, cls, t in seen if name == "cheap_first" and depth == "1" and "running" in cls]
    assert running and decided_at is not None and running[0] < decided_at, (seen, decided_at)  # lit live

    answered = page.locator(".column:has(.completion.winner)").get_attribute("data-model")
    lit = page.locator("#diagram .gbox.lit")
    assert [
        (lit.nth(i).get_attribute("data-name"), lit.nth(i).get_attribute("data-depth")) for i in range(lit.count())
    ] == [
        ("routed", "0"),
        ("cheap_first", "1"),
        (answered, "2"),
    ]
    assert cascade.get_attribute("data-outcome") == "served"
    assert "→ cheap_first: served · first choice" in root.locator(":scope > .gstate").inner_text()
    assert "lit" not in (second.get_attribute("class") or "") and "running" not in (second.get_attribute("class") or "")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "playground-diagram.png"), full_page=True)


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}


def test_tools_box_shows_each_call_and_its_arguments(server: Server, page: Any) -> None:
    """The Tools tab: invalid JSON in the tools box is an error by the box and nothing is sent; a valid
    tools array with tool_choice required goes to /v1/chat/completions, and the page shows the call: the
    tool's name and its arguments as pretty JSON that validate against the tool's schema."""
    sent: list[str] = []
    page.on("request", lambda req: sent.append(req.url) if req.url.endswith("/v1/chat/completions") else None)
    page.click("#tools-tab")
    assert page.is_visible("#tools-json") and not page.is_visible("#run")
    assert json.loads(page.input_value("#tools-json"))[0]["function"]["name"] == "get_weather"  # the example

    page.fill("#tools-json", '[{"type": "function", "function": {')
    page.click("#tools-send")
    error = page.locator('.field[data-field="tools.tools"] .field-error')
    assert error.inner_text().startswith("Invalid JSON"), error.inner_text()
    assert sent == [] and page.locator("#tools-result .tool-answer").count() == 0

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    page.fill("#tools-json", json.dumps(tools, indent=2))
    page.select_option("#tools-model", "tiny_a")
    page.select_option("#tool-choice", "required")
    page.uncheck("#tools-parallel")  # a random model would go on calling until max_tokens
    page.fill("#tools-max-tokens", "200")
    page.fill("#tools-message", "Weather in Paris?")
    page.click("#tools-send")
    page.wait_for_selector("#tools-result .tool-answer", timeout=120_000)
    assert len(sent) == 1 and error.inner_text() == ""
    call = page.locator("#tools-result .tool-call")
    assert call.count() == 1, page.inner_text("#tools-result")
    assert call.locator(".name").inner_text() == "get_weather"
    assert call.locator(".id").inner_text().startswith("call_")
    shown = call.locator("pre.args").inner_text()
    arguments = json.loads(shown)
    jsonschema_rs.validate(WEATHER, arguments)
    assert shown.startswith("{\n  "), shown  # pretty-printed, one key a line
    meta = page.inner_text("#tools-result .meta")
    assert meta.startswith("finish: tool_calls · 1 tool call ·"), meta
    assert not page.locator(".notice").count()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "playground-tools.png"), full_page=True)


PLAYGROUND_KEY = "playground-secret-0123456789"


@pytest.fixture(scope="module")
def keyed(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """configs/tiny.yaml with API keys and a small token rate per key."""
    import yaml

    folder = tmp_path_factory.mktemp("playground-keys")
    (folder / "keys.txt").write_text(f"page:{PLAYGROUND_KEY}\n")
    cfg = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    cfg["auth"] = {"keys_file": str(folder / "keys.txt"), "tokens_per_minute": 50}
    cfg["chat"] = {"database_url": f"sqlite:///{folder}/chat.sqlite3"}
    (folder / "tiny_keys.yaml").write_text(yaml.safe_dump(cfg))
    with Server(config=folder / "tiny_keys.yaml", name="playground-keys") as srv:
        yield srv


def test_the_page_takes_an_api_key_and_shows_401_and_429(browser: Any, keyed: Server) -> None:
    """With keys on: the page says it needs a key (401); given one (kept in sessionStorage, sent as a Bearer
    token) it loads and runs; once the key spent its tokens per minute, a run shows the 429 as a notice
    with the retry time. The key is never written to the console."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    page.on("pageerror", lambda exc: console.append(f"pageerror {exc}"))
    try:
        page.goto(keyed.url + "/playground", wait_until="domcontentloaded")
        warning = page.locator(".notice.warn")
        warning.wait_for(state="visible", timeout=30_000)
        assert "API key" in warning.inner_text() and "401" in warning.inner_text()
        page.fill("#api-key", PLAYGROUND_KEY)
        page.click("#key-form button")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert page.evaluate("sessionStorage.getItem('inference-graph-api-key')") == PLAYGROUND_KEY
        run_prompt(page, LONG_PROMPT, model="tiny_a", max_new_tokens="60")
        page.wait_for_selector(".completion.scored", timeout=60_000)
        deadline = time.monotonic() + 60
        refused = None
        while refused is None and time.monotonic() < deadline:  # the key is over its 50 tokens a minute
            r = httpx.post(
                keyed.url + "/generate",
                json={"prompt": "hi", "model": "tiny_a", "params": {"max_new_tokens": 30}},
                headers={"Authorization": f"Bearer {PLAYGROUND_KEY}"},
                timeout=60,
            )
            refused = r if r.status_code == 429 else None
        assert refused is not None and refused.json()["error"] == "rate_limited"
        page.locator(".notice").evaluate_all("ns => ns.forEach(n => n.remove())")
        run_prompt(page, "hi", model="tiny_a", max_new_tokens="4")
        warning = page.locator(".notice.warn")
        warning.wait_for(state="visible", timeout=30_000)
        text = warning.inner_text()
        assert "Rate limited (429)" in text and "retry in" in text, text
    finally:
        page.close()
    assert not any(PLAYGROUND_KEY in line for line in console), console
