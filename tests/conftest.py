"""Shared fixtures (tiny models), the repo root on sys.path, and one marker per test folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TIERS = ("unit", "graph", "e2e", "shipping", "image")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier; a test outside the tier folders is an error."""
    tests = Path(__file__).resolve().parent
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(tests).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "image" and "image" not in (config.option.markexpr or ""):
            # Real containers, minutes of builds: `make test-image` (pytest -m image tests/image) only.
            item.add_marker(pytest.mark.skip(reason="container image tier: run `make test-image`"))


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from tests.tiny_models import build_all

    return build_all(ROOT / "artifacts" / "tiny")


@pytest.fixture(scope="session")
def tiny_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One `bentoml serve` of configs/tiny.yaml, shared by the modules that only send it requests (each compares
    counters as differences and finds its own lines by request id): a start costs about 20 s on 2 cores. Started
    at first use, stopped at the session's end. A module that changes a server (keys, kills, env) starts its own.

    Its own BENTOML_HOME (its models are paths, not the store): every `bentoml serve` empties
    $BENTOML_HOME/prometheus_multiproc_dir as it starts, so a server started beside this one under the same home
    would wipe its /metrics."""
    from tests.server import Server

    home = tmp_path_factory.mktemp("tiny-shared-bentoml-home")
    with Server(config="configs/tiny.yaml", name="tiny-shared", env={"BENTOML_HOME": str(home)}) as srv:
        yield srv
