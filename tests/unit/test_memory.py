"""graph/memory.py: the oneDNN cache bound every node process gets, and the allocator check its log
line reports (jemalloc preloaded as `make serve` does, or glibc)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from tests.server import ROOT

PROBE = (
    "import os, graph, graph.memory as m; "
    "print(m.allocator(), os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], m.malloc_trim())"
)


def probe(**env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_importing_graph_bounds_the_onednn_cache_unless_the_operator_set_it() -> None:
    assert probe()[:2] == ["glibc", "64"]
    assert probe(ONEDNN_PRIMITIVE_CACHE_CAPACITY="8")[1] == "8"


def test_jemalloc_preloaded_as_make_serve_does_is_reported_and_not_trimmed() -> None:
    libs = glob.glob("/usr/lib/*/libjemalloc.so.2")
    if not libs:
        pytest.fail("libjemalloc2 is missing: `make test` installs it (make jemalloc)")
    assert probe(LD_PRELOAD=libs[0]) == ["jemalloc", "64", "False"]
