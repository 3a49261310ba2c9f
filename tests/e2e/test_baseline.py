"""The benchmark's baseline (bench/baseline_service.py) still serves: two scored greedy completions."""

from __future__ import annotations

import httpx
import pytest

from tests.server import Server


def test_baseline_generate_score() -> None:
    import bentoml
    from bentoml.exceptions import NotFound

    for tag in ("smollm2-135m-instruct", "gemma-3-270m"):  # `make test` prepares them first
        try:
            bentoml.models.get(tag)
        except NotFound:
            pytest.fail(f"{tag} is not in the BentoML model store; run `make prepare`")
    with Server("bench.baseline_service:BaselineGraph", name="baseline") as srv:
        r = httpx.post(
            srv.url + "/generate_score",
            json={"original_sentence": "The weather today is", "max_new_tokens": 4},
            timeout=120,
        )
    assert r.status_code == 200, r.text
    items = r.json()
    assert [i["model"] for i in items] == ["smollm2", "gemma3"]
    for item in items:
        assert 0.0 <= item["score"] <= 1.0
        assert 1 <= item["completion_tokens"] <= 4
        assert item["generated"].startswith("The weather today is")
