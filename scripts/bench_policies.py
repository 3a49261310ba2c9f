"""`make bench-policies`: every graph policy of configs/default.yaml on the same prompts (bench/policy_prompts.txt).

Serves the default config once, then for each graph (`all`, best_of, best_of with pruning, cascade):
1. the fixed prompts, 4 clients at a time, seed = the prompt's number, 32 new tokens;
2. under 8 concurrent clients with deadline_ms (3000) and 128 new tokens, so the deadline bites: one
   uncounted wave of 8 (the splitter learns this load's scoring time and overrun), then the prompts twice.
Prints per graph and phase: the mean score of the answer (for `all`, which returns every completion and
decides nothing, the mean over its completions), generated tokens per request, p50/p95 latency, non-200s;
writes artifacts/bench/policies.json and docs/policies.png (answer score against tokens spent).

    .venv/bin/python scripts/bench_policies.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import Server  # noqa: E402

GRAPHS = ["all", "best_of_3", "best_of_3_pruned", "cascade"]
PROMPTS = [p for p in (ROOT / "bench" / "policy_prompts.txt").read_text().splitlines() if p.strip()]


@dataclass
class Row:
    graph: str
    phase: str
    requests: int
    errors: int
    mean_score: float
    tokens_per_request: float
    p50_s: float
    p95_s: float
    time_finishes: int  # answers with finish_reason "time"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] if ordered else float("nan")


def summarize(body: Any) -> tuple[float, int, bool]:
    """(answer score, tokens generated, cut by the deadline) of a 200 answer of either shape."""
    if isinstance(body, list):  # graph `all`: every completion, no decision
        return (
            sum(c["score"] for c in body) / len(body),
            sum(c["completion_tokens"] for c in body),
            any(c["finish_reason"] == "time" for c in body),
        )
    return body["answer"]["score"], body["trace"]["tokens_total"], body["finish_reason"] == "time"


async def phase(
    url: str,
    graph: str,
    name: str,
    concurrency: int,
    params: dict[str, Any],
    deadline_ms: int | None,
    repeat: int = 1,
    n: int | None = None,
) -> Row:
    jobs = [(i, p) for _ in range(repeat) for i, p in enumerate(PROMPTS)][:n]
    samples: list[tuple[float, float, int, bool]] = []
    errors = 0
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            i, prompt = queue.get_nowait()
            body: dict[str, Any] = {"original_sentence": prompt, "graph": graph, "params": {**params, "seed": i}}
            if deadline_ms is not None:
                body["deadline_ms"] = deadline_ms
            t0 = time.perf_counter()
            r = await client.post(url + "/generate_score", json=body)
            latency = time.perf_counter() - t0
            if r.status_code != 200:
                errors += 1
                print(f"  {graph} {name}: HTTP {r.status_code} {r.text[:200]}", flush=True)
                continue
            score, tokens, timed = summarize(r.json())
            samples.append((latency, score, tokens, timed))

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    lat = [s[0] for s in samples]
    n = max(1, len(samples))
    return Row(
        graph,
        name,
        len(jobs),
        errors,
        sum(s[1] for s in samples) / n,
        sum(s[2] for s in samples) / n,
        percentile(lat, 50),
        percentile(lat, 95),
        sum(1 for s in samples if s[3]),
    )


def table(rows: list[Row]) -> str:
    head = (
        f"{'graph':<18} {'phase':<16} {'reqs':>4} {'non-200':>7} {'score':>6} {'tok/req':>8} "
        f"{'p50 s':>6} {'p95 s':>6} {'time':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.graph:<18} {r.phase:<16} {r.requests:>4} {r.errors:>7} {r.mean_score:>6.3f} "
            f"{r.tokens_per_request:>8.1f} {r.p50_s:>6.2f} {r.p95_s:>6.2f} {r.time_finishes:>5}"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for phase_name, marker in (("c4, 32 tokens", "o"), ("c8, deadline 3 s", "s")):
        pts = [r for r in rows if r.phase == phase_name]
        ax.scatter(
            [r.tokens_per_request for r in pts], [r.mean_score for r in pts], marker=marker, s=60, label=phase_name
        )
        for r in pts:
            ax.annotate(
                r.graph, (r.tokens_per_request, r.mean_score), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    ax.set_xlabel("generated tokens per request")
    ax.set_ylabel("mean score of the answer (positive)")
    ax.set_title("Graph policies on configs/default.yaml")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


async def bench(url: str, deadline_ms: int) -> list[Row]:
    rows: list[Row] = []
    for graph in GRAPHS:  # warm-up, uncounted: first calls pay one-time setup
        async with httpx.AsyncClient(timeout=300) as client:
            await client.post(url + "/generate_score", json={"graph": graph, "params": {"max_new_tokens": 8}})
    for graph in GRAPHS:
        row = await phase(url, graph, "c4, 32 tokens", 4, {"max_new_tokens": 32}, None)
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    for graph in GRAPHS:
        # One uncounted wave first: the splitter sizes its shares from recent calls of this load.
        await phase(url, graph, "warm-up", 8, {"max_new_tokens": 128}, deadline_ms, n=8)
        row = await phase(url, graph, "c8, deadline 3 s", 8, {"max_new_tokens": 128}, deadline_ms, repeat=2)
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--deadline-ms", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "docs" / "policies.png"))
    args = ap.parse_args(argv)
    print(
        f"{len(PROMPTS)} prompts x {len(GRAPHS)} graphs x 2 phases on {cpu_name()}; serving {args.config} ...",
        flush=True,
    )
    with Server(config=args.config, name="bench-policies") as srv:
        rows = asyncio.run(bench(srv.url, args.deadline_ms))
    print()
    print(table(rows))
    worst = max(r.p95_s for r in rows if r.phase.startswith("c8"))
    failed = sum(r.errors for r in rows)
    target_s = args.deadline_ms / 1000 * 1.1
    print(
        f"{'PASS' if failed == 0 and worst <= target_s else 'FAIL'}: deadline {args.deadline_ms} ms "
        f"under 8 clients: worst p95 {worst:.2f} s (target <= {target_s:.1f} s), non-200s {failed}"
    )
    out = Path(args.out)
    plot(rows, out)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    data = {"commit": commit, "cpu": cpu_name(), "config": args.config, "rows": [asdict(r) for r in rows]}
    (ROOT / "artifacts" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "artifacts" / "bench" / "policies.json").write_text(json.dumps(data, indent=1))
    print(f"chart: {out}   data: artifacts/bench/policies.json")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
