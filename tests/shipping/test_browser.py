"""The Bento UI (BentoML's Swagger page at `/`) in a real browser: Debian's chromium driven by Playwright.

`make test` installs chromium with apt (`make browser`); Playwright never downloads a browser of its own.
The test sends a generate_score request through the page and saves a screenshot under artifacts/screenshots/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.server import ARTIFACTS, Server

SCREENSHOTS = ARTIFACTS / "screenshots"
GRAPH_ENDPOINTS = ["/generate_score", "/generate", "/classify", "/generate_stream", "/generate_score_stream"]


@pytest.fixture(scope="module")
def server(tiny_server: Server) -> Server:
    return tiny_server  # tests/conftest.py: one configs/tiny.yaml server for the session


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    local = urlparse(server.url).netloc
    # Only the server itself: the page's third-party tags would wait on a network these machines lack.
    page.route(
        "**/*", lambda route: route.continue_() if urlparse(route.request.url).netloc == local else route.abort()
    )
    yield page
    page.close()


def test_generate_score_from_the_bento_ui(server: Server, page: Any) -> None:
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = [p.inner_text().strip() for p in page.query_selector_all(".opblock-summary-path")]
    assert set(GRAPH_ENDPOINTS) <= set(paths), paths

    op = page.locator("#operations-Service_APIs-InferenceGraph__generate_score")
    op.locator(".opblock-summary").click()
    op.get_by_role("button", name="Try it out").click()
    body = op.locator("textarea.body-param__text")
    assert json.loads(body.input_value())["original_sentence"] == "I have an idea!"  # the schema's example
    body.fill(json.dumps({"original_sentence": "A browser asks", "params": {"max_new_tokens": 6}}))
    op.get_by_role("button", name="Execute").click()

    live = op.locator(".live-responses-table")
    answer = live.locator(".response-col_description pre.microlight").first
    answer.wait_for(timeout=60_000)
    assert live.locator("tr.response .response-col_status").first.inner_text().strip() == "200"
    items = json.loads(answer.inner_text())
    assert {i["model"] for i in items} == {"tiny_a", "tiny_b"}
    for item in items:
        assert item["generated"].startswith("A browser asks")
        assert 0.0 <= item["score"] <= 1.0 and item["label"] in item["labels"]
        assert 1 <= item["completion_tokens"] <= 6

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    op.scroll_into_view_if_needed()
    op.screenshot(path=str(SCREENSHOTS / "bento_ui_generate_score.png"))
    page.screenshot(path=str(SCREENSHOTS / "bento_ui_page.png"), full_page=True)
    assert (SCREENSHOTS / "bento_ui_generate_score.png").stat().st_size > 10_000
