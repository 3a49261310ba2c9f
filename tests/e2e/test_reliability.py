"""Reliability through a real `bentoml serve` (issue #13): poison requests, work budgets, fairness
between a large call and small ones, and load shedding with a wait bound.

The server runs configs/tiny.yaml with the reliability settings of this file (a wait bound and
small budgets), written under artifacts/. Timing bounds are generous: the machine is shared."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import httpx
import pytest
import yaml

from tests.server import ARTIFACTS, ROOT, Server

LONG = "Hello world, this is"  # tiny_a runs it greedily to max_new_tokens (no end-of-sequence)
MAX_WAIT_S = 1.5
SCHEDULER = {"max_batch_size": 8, "max_queue": 64, "max_request_share": 0.5, "max_wait_s": MAX_WAIT_S}
BUDGET = {"max_rows": 16, "max_new_tokens": 4096}


@pytest.fixture(scope="module")
def server(tiny_dir):
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["name"] = "tiny_reliability"
    for node in config["generators"].values():
        node["scheduler"] = SCHEDULER
        node["budget"] = BUDGET
    path = ARTIFACTS / "tiny_reliability.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    with Server(config=path, name="tiny-reliability") as srv:
        yield srv


async def timed(client: httpx.AsyncClient, path: str, body: dict) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = await client.post(path, json=body)
    return r, time.perf_counter() - t0


def test_poison_request_does_not_fail_its_neighbours(server: Server) -> None:
    """Issue #13, item 1: four ordinary requests, then the poison ones 0.2 s later, all in one batch."""
    poison = [
        {"top_p": 1e-308, "do_sample": True},
        {"repetition_penalty": 1e-308},
        {"temperature": 1e-308, "do_sample": True, "top_k": 5},
    ]

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            ordinary = [
                asyncio.create_task(
                    client.post(
                        "/generate_score", json={"original_sentence": f"ordinary {i}", "params": {"max_new_tokens": 64}}
                    )
                )
                for i in range(4)
            ]
            await asyncio.sleep(0.2)
            bad = [
                asyncio.create_task(
                    client.post(
                        "/generate_score", json={"original_sentence": "hi", "params": {**p, "max_new_tokens": 16}}
                    )
                )
                for p in poison
            ]
            return await asyncio.gather(*ordinary), await asyncio.gather(*bad)

    ordinary, bad = asyncio.run(fire())
    assert [r.status_code for r in ordinary] == [200] * 4, [r.text for r in ordinary]
    for r in bad:  # every admitted value is safe: a 200, or at worst a clean 4xx
        assert r.status_code == 200 or 400 <= r.status_code < 500, r.text


def test_oversized_requests_get_a_400_naming_the_budget(server: Server) -> None:
    """Issue #13, item 2: 64 prompts x 8 sequences x 256 tokens is refused before any work."""
    body = {
        "prompts": [f"p{i}" for i in range(64)],
        "params": {"num_return_sequences": 8, "do_sample": True, "max_new_tokens": 256},
    }
    r = httpx.post(server.url + "/generate", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert "budget.max_rows" in r.json()["message"] and r.json()["field"] == "prompts"
    body = {"prompts": [f"p{i}" for i in range(16)], "model": "tiny_a", "params": {"max_new_tokens": 300}}
    r = httpx.post(server.url + "/generate", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert "budget.max_new_tokens" in r.json()["message"] and r.json()["field"] == "params.max_new_tokens"


def test_small_requests_are_not_starved_by_a_large_one(server: Server) -> None:
    """A 16-prompt call (within budget) on tiny_a; small calls sent while it runs finish within a
    generous multiple of their unloaded time, long before the large call."""
    small = {"prompt": "The cat", "model": "tiny_a", "params": {"max_new_tokens": 8}}
    large = {"prompts": [LONG] * 16, "model": "tiny_a", "params": {"max_new_tokens": 250}}

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            alone = [(await timed(client, "/generate", small))[1] for _ in range(5)]
            big = asyncio.create_task(timed(client, "/generate", large))
            await asyncio.sleep(0.5)  # the large call holds its share of the rows by now
            during = []
            for _ in range(5):
                r, s = await timed(client, "/generate", small)
                assert r.status_code == 200, r.text
                during.append(s)
            big_done = big.done()
            r_big, big_s = await big
            return alone, during, big_done, r_big, big_s

    alone, during, big_done, r_big, big_s = asyncio.run(fire())
    assert r_big.status_code == 200, r_big.text
    assert not big_done, "the large call ended before the small ones: the test did not overlap them"
    unloaded = statistics.median(alone)
    print("small alone", [round(s, 3) for s in alone], "during", [round(s, 3) for s in during], "large", big_s)
    # Measured here: unloaded ~0.05-0.1 s, during ~0.1-0.2 s; without the fair share, each small
    # call waited for the large call's rows (seconds). The factor is generous for a shared machine.
    assert statistics.median(during) <= max(4 * unloaded, unloaded + 0.5), (alone, during, big_s)
    assert max(during) < big_s / 2, (during, big_s)


def test_overload_is_shed_fast_with_retry_after(server: Server) -> None:
    """Issue #13, item 3: many long calls at once on tiny_a (8 rows). Those whose expected wait is
    above max_wait_s get a 429 at once; every 200 came within the wait bound plus its own work.

    How many calls it takes to overload depends on the machine's speed: the k-th call beyond the 8
    rows waits about k/8 times one call's time alone, so the test sends enough for the last ones to
    wait ~2.5x the bound (at least 24, at most 64 = max_queue). With a fixed 24, a CI machine a
    little faster than this one admitted all of them (CI run of stop 16)."""
    body = {"prompt": LONG, "model": "tiny_a", "params": {"max_new_tokens": 400}}

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            r, alone = await timed(client, "/generate", body)
            assert r.status_code == 200, r.text
            n = min(64, max(24, 8 + math.ceil(8 * 2.5 * MAX_WAIT_S / alone)))
            return alone, await asyncio.gather(*[timed(client, "/generate", body) for _ in range(n)])

    alone, results = asyncio.run(fire())
    codes = sorted(r.status_code for r, _ in results)
    assert set(codes) <= {200, 429}, codes
    refused = [(r, s) for r, s in results if r.status_code == 429]
    served = [s for r, s in results if r.status_code == 200]
    assert refused and served, codes
    print(
        "429 latencies",
        sorted(round(s, 3) for _, s in refused),
        "200 latencies",
        sorted(round(s, 2) for s in served),
        "alone",
        alone,
    )
    for r, s in refused:
        assert s < MAX_WAIT_S, f"a 429 took {s:.2f}s, longer than the wait bound it enforces"
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"] == "overloaded" and "max_wait_s" in r.json()["message"]
    # A 200 waited at most the bound for rows, then did its own work (in a batch of 8: slower than
    # alone); the allowance for that is generous.
    assert max(served) <= MAX_WAIT_S + 4 * alone + 1.0, (alone, sorted(served))
