"""Admission from a fresh start of a config (issue #32 item 5), against a real `bentoml serve` (tests/server.py).

    .venv/bin/python scripts/bench_admission.py [--config configs/default.yaml] [--node smollm2] [--clients 64]

Prints the CPU and its flags, then, on one fresh start of the config:
- start-up: seconds to ready, and each node's admission table (the `admission table` lines of its log:
  decode step ms per batch size, prefill ms per prompt length, and what measuring them took);
- a handful of single requests (the traffic after which the old estimate refused a burst), and the alone
  times of `/generate` (one node), `/generate_stream` (every node) and `/generate_score` (64 new tokens);
- 17 concurrent streams (16 non-ASCII `/generate_stream` + 1 `/generate_score_stream`): statuses, any
  error inside a 200 stream, the slowest;
- a burst of 64 `/generate` to one node (--node): statuses, the slowest, against max_wait_s + alone;
- --clients clients x 2 `/generate_score` (64 new tokens): statuses (no 5xx), 429s answered in under 2 s,
  the p95 of the 200s against max_wait_s + alone.
Each line ends with `target: met` or `target: NOT met`. Timings depend on the machine and its load.
With --no-shedding: the same run on a copy of the config with max_wait_s off on every generator, the bounds
printed still the config's: how many requests a node that admits everything answers within them (the other
direction of the target: a request refused could not have been).
With --tables: only each generator node's admission table, loaded in-process one node at a time (what the
warm-up measures and what it adds to a node's start-up), no server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.config import load_config
from graph.models.runtimes import cpu_description, cpu_flags
from tests.server import Server

NON_ASCII = [
    "Écris un petit poème sur la pluie d'automne.",
    "雨についての短い詩を書いてください。",
    "Напиши короткое стихотворение о дожде.",
    "اكتب قصيدة قصيرة عن المطر.",
    "Schreib ein kurzes Gedicht über den Regen – bitte mit Umlauten: äöü ß.",
    "비에 관한 짧은 시를 써 주세요.",
    "Γράψε ένα σύντομο ποίημα για τη βροχή.",
    "Escribe un poema corto sobre la lluvia, por favor ¿sí?",
]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) >= 20 else max(xs)


def verdict(ok: bool) -> str:
    return "target: met" if ok else "target: NOT met"


async def timed_post(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        r = await client.post(path, json=body)
        return r.status_code, time.perf_counter() - t0, r.text
    except httpx.HTTPError as exc:
        return -1, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"


async def timed_stream(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as r:
            text = (await r.aread()).decode(errors="replace")
            return r.status_code, time.perf_counter() - t0, text
    except httpx.HTTPError as exc:
        return -1, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"


def codes(results: list[tuple[int, float, str]]) -> str:
    counts: dict[int, int] = {}
    for code, _, _ in results:
        counts[code] = counts.get(code, 0) + 1
    return ", ".join(f"{n} x {c}" for c, n in sorted(counts.items()))


async def run(args, server: Server, max_wait_s: float) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        # A handful of single requests, then the alone times.
        one = {"prompt": "Tell me about the sea.", "model": args.node}
        for _ in range(3):
            await timed_post(client, "/generate", one)
        gen_alone = min([(await timed_post(client, "/generate", one))[1] for _ in range(2)])
        stream_body = {"prompt": NON_ASCII[0]}
        stream_alone = (await timed_stream(client, "/generate_stream", stream_body))[1]
        score_body = {"original_sentence": "I have an idea!", "params": {"max_new_tokens": 64}}
        code, score_alone, text = await timed_post(client, "/generate_score", score_body)
        assert code == 200, text[:300]
        print(
            f"alone: /generate ({args.node}) {gen_alone:.2f}s, /generate_stream (all nodes) {stream_alone:.2f}s, "
            f"/generate_score (64 new tokens) {score_alone:.2f}s"
        )

        # 17 concurrent streams: 16 non-ASCII + 1 scored.
        tasks = [timed_stream(client, "/generate_stream", {"prompt": NON_ASCII[i % len(NON_ASCII)]}) for i in range(16)]
        tasks.append(timed_stream(client, "/generate_score_stream", {"prompt": NON_ASCII[1]}))
        streams = await asyncio.gather(*tasks)
        inband = sum(1 for c, _, t in streams if c == 200 and ('"error"' in t or "overloaded" in t))
        slowest = max(s for _, s, _ in streams)
        ok = all(c == 200 for c, _, _ in streams) and not inband
        print(
            f"17 streams: {codes(streams)}; errors inside a 200: {inband}; slowest {slowest:.2f}s "
            f"(max_wait_s + alone {max_wait_s + stream_alone:.1f}s); {verdict(ok)}"
        )

        # A burst of 64 /generate on one node.
        burst = await asyncio.gather(*(timed_post(client, "/generate", one) for _ in range(64)))
        slowest = max(s for c, s, _ in burst if c == 200) if any(c == 200 for c, _, _ in burst) else float("nan")
        ok = all(c == 200 for c, _, _ in burst) and slowest <= max_wait_s + gen_alone
        print(
            f"64 x /generate ({args.node}): {codes(burst)}; slowest 200 {slowest:.2f}s "
            f"(max_wait_s + alone {max_wait_s + gen_alone:.1f}s); {verdict(ok)}"
        )

        # N clients x 2 /generate_score, 64 new tokens.
        async def client_twice() -> list[tuple[int, float, str]]:
            return [await timed_post(client, "/generate_score", score_body) for _ in range(2)]

        t0 = time.perf_counter()
        pairs = await asyncio.gather(*(client_twice() for _ in range(args.clients)))
        took = time.perf_counter() - t0
        results = [r for pair in pairs for r in pair]
        served = sorted(s for c, s, _ in results if c == 200)
        refused = sorted(s for c, s, _ in results if c == 429)
        fives = [(c, t[:200]) for c, _, t in results if c >= 500 or c < 0]
        retry = [json.loads(t).get("retry_after_s") for c, _, t in results if c == 429]
        bound = max_wait_s + score_alone

        def secs(xs: list[float], f) -> str:
            return f"{f(xs):.2f}s" if xs else "none"

        ok = not fives and (not refused or refused[-1] < 2.0) and (not served or p95(served) <= bound)
        within = sum(1 for s in served if s <= bound)
        print(
            f"{args.clients} clients x 2 /generate_score (64 new tokens) in {took:.1f}s: {codes(results)}; "
            f"answered within max_wait_s + alone: {within} of {len(results)}; "
            f"200 p95 {secs(served, p95)} max {secs(served, max)} (max_wait_s + alone {bound:.1f}s); "
            f"429 p95 {secs(refused, p95)} max {secs(refused, max)} (Retry-After {sorted(set(retry))}); "
            f"5xx {len(fives)}; {verdict(ok)}"
        )
        if fives:
            print("  first 5xx:", fives[0])
        if refused:  # what the nodes said, numbers left out
            why = [re.sub(r"[0-9.]+", "N", json.loads(t).get("message", "")) for c, _, t in results if c == 429]
            for text, n in sorted(((w, why.count(w)) for w in set(why)), key=lambda x: -x[1])[:3]:
                print(f"  429 x {n}: {text[:240]}")
        other = [(c, t[:300]) for c, _, t in [*streams, *burst, *results] if c not in (200, 429)]
        if other:
            print("  first answer neither 200 nor 429:", other[0])
        stats = (await client.post("/node_stats", json={})).json()
        for name, s in stats.items():
            if isinstance(s, dict) and "shed_total" in s:
                sides = "".join(
                    f"; {side}: {s[f'{side}_requests_total']} requests, {s[f'{side}_admitted_late_total']} late, "
                    f"plan_ratio {s[f'{side}_plan_ratio']}"
                    for side in ("small", "large")
                    if f"{side}_plan_ratio" in s
                )
                print(
                    f"  node {name}: shed_total {s['shed_total']}, rejected_total {s['rejected_total']}, "
                    f"admitted_late_total {s['admitted_late_total']} "
                    f"({s['admitted_late_ms_total'] / 1000:.1f}s in all), "
                    f"plan_ratio {s['plan_ratio']} (answered / planned){sides}"
                )


def tables(config: str) -> None:
    """Each generator node of `config` loaded in-process, one after the other: its admission table and what
    measuring it added to the node's start-up."""
    from graph.models.node_engine import engine_for_node
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    cfg = load_config(config)
    for name, node in cfg.generators.items():
        lookups = dict(store_lookup=store_lookup, embedded_lookup=embedded_lookup, onnx_lookup=onnx_lookup)
        engine = engine_for_node(name, node, threads=node.runtime.threads, **lookups)
        try:
            t0 = time.perf_counter()
            engine.warmup(timeout=600)
            took = time.perf_counter() - t0
            table = engine._scheduler.warmup_table
            print(f"node {name} ({engine.runtime_name}): warm-up {took:.1f}s in all; admission table", end=" ")
            print(table.describe() if table is not None else "not measured (see the node's log)")
        finally:
            engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--node", default="smollm2")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--tables", action="store_true", help="only each node's admission table, in-process")
    parser.add_argument(
        "--no-shedding",
        action="store_true",
        help="serve a copy of the config with every generator's max_wait_s off (the bounds printed stay the "
        "config's): how many requests an unbounded node answers within them, against what admission admitted",
    )
    args = parser.parse_args()
    flags = cpu_flags()
    print(f"CPU: {cpu_description(flags)}; {os.cpu_count()} cores; flags: {' '.join(f for f in FLAGS if f in flags)}")
    if args.tables:
        return tables(args.config)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    node = load_config(args.config).generators[args.node]
    max_wait_s = node.scheduler.max_wait_s
    if max_wait_s is None:
        raise SystemExit(f"generators.{args.node}.scheduler.max_wait_s is not set in {args.config}")
    config = args.config
    if args.no_shedding:
        raw = yaml.safe_load(Path(args.config).read_text())
        for gen in raw["generators"].values():
            gen.setdefault("scheduler", {})["max_wait_s"] = None
        copy = Path("artifacts") / "bench-admission-no-shedding.yaml"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(yaml.safe_dump(raw, sort_keys=False))
        config = str(copy)
        print(f"--no-shedding: {config} (max_wait_s off on every generator; bounds below from {args.config})")
    t0 = time.perf_counter()
    with Server(config=config, name="bench-admission") as server:
        print(f"fresh start of {config}: ready in {time.perf_counter() - t0:.1f}s; max_wait_s {max_wait_s:g}")
        for line in server.log().splitlines():
            m = re.search(r"(\w+): admission table (.*)", line)
            if m:
                print(f"  {m.group(1)}: {m.group(2)}")
        asyncio.run(run(args, server, max_wait_s))
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
