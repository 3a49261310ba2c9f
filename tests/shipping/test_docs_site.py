"""The docs site: `make docs`'s strict build passes, and its pages hold no broken internal link in a browser.

The build is the one `make docs` runs (reference pages generated, then `mkdocs build --strict`); the
built site is served by a plain static file server and opened in Debian's chromium (Playwright).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urlparse

import pytest

from tests.server import ROOT

PAGES = ["index.html", "quickstart.html", "reference/configuration.html"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it (into a temporary folder instead of site/)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}
    bindir = Path(sys.executable).parent
    steps = [
        [sys.executable, "scripts/docs_reference.py"],
        [str(bindir / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
        assert "WARNING" not in done.stderr, done.stderr
    return out


def test_strict_build_makes_every_page(site: Path) -> None:
    for page in PAGES + ["reference/http-api.html", "reference/generation-parameters.html", "faces/http.html"]:
        assert (site / page).is_file(), page
    assert "max_new_tokens" in (site / "reference" / "generation-parameters.html").read_text()
    assert "/generate_score" in (site / "reference" / "http-api.html").read_text()
    assert "graph_timeout_s" in (site / "reference" / "configuration.html").read_text()


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("start", PAGES)
def test_page_has_no_broken_internal_link(served: str, browser: Any, start: str) -> None:
    page = browser.new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(served) else None)
    try:
        response = page.goto(served + start)
        assert response is not None and response.status == 200
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        internal = sorted({h for h in hrefs if h.startswith(served)})
        assert len(internal) > 5, internal  # the nav at least
        broken, missing_anchor = [], []
        anchors_of: dict[str, set[str]] = {}
        for href in internal:
            url, fragment = urldefrag(href)
            if url not in anchors_of:
                other = browser.new_page()
                try:
                    r = other.goto(url)
                    if r is None or r.status != 200:
                        broken.append(f"{href} ({r.status if r else 'no answer'})")
                        anchors_of[url] = set()
                        continue
                    anchors_of[url] = set(other.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
                finally:
                    other.close()
            if fragment and fragment not in anchors_of[url]:
                missing_anchor.append(href)
        assert broken == [], f"links from {start} to pages that do not answer 200: {broken}"
        assert missing_anchor == [], f"links from {start} to anchors that are not on their page: {missing_anchor}"
        assert outside == [], f"{start} fetched from outside the site (it must work offline): {outside}"
        assert urlparse(page.url).path.endswith(start)
    finally:
        page.close()
