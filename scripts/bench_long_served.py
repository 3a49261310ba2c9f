"""An 8,000-token prompt to SmolLM2 on the served default config, beside 8 running streams (issue #32's first
target, through HTTP as a user sends it: `bentoml serve` through tests/server.py).

    LD_PRELOAD=$(ls /usr/lib/*/libjemalloc.so.2 | head -n 1) .venv/bin/python scripts/bench_long_served.py

Prints the CPU and its flags; then --streams `/generate_stream` clients on --node (256 new tokens each, sent
again when they end), their gaps between token events alone for --alone-s seconds, then the long prompt on
`/generate_stream` to the same node (8 new tokens): its HTTP status, prompt tokens, seconds to its first event,
and the streams' gap p95 while it was prefilled against alone (target: 200, and within 2x). scripts/bench_memory.py
measures the same in-process, on a node with every core; served, each generator of the default config has one
thread and the prefill lane takes one more core (docs/concepts.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.config import load_config
from graph.models.runtimes import cpu_description, cpu_flags
from tests.server import Server

TEXT = (
    "A serving platform keeps every model's whole context within reach: a long document, a chat's history, "
    "the same system prompt sent by many callers. Each token of a prompt costs a forward pass once. "
)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) >= 20 else max(xs)


def long_text(config: str, node: str, tokens: int) -> str:
    """About `tokens` of the node's tokens (its own tokenizer; the chat template adds a few)."""
    from transformers import AutoTokenizer

    from services.store import embedded_lookup

    ref = load_config(config).generators[node].model
    path = embedded_lookup(ref.embedded) if ref.embedded else str(ref.path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.model_max_length = 10**9  # the text is cut to `tokens` below: no warning about the whole of it
    ids = tok(TEXT * (tokens // 20 + 1), add_special_tokens=False)["input_ids"][:tokens]
    return tok.decode(ids)


async def events(client: httpx.AsyncClient, body: dict):
    """(status, [(time, event)]) of one /generate_stream call."""
    async with client.stream("POST", "/generate_stream", json=body) as r:
        if r.status_code != 200:
            yield r.status_code, None
            return
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield 200, (time.monotonic(), json.loads(line[6:]))


async def stream_gaps(client, node: str, i: int, gaps: list[tuple[float, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        last = None
        body = {"prompt": f"Tale {i}:", "model": node, "params": {"max_new_tokens": 256}}
        async for _status, ev in events(client, body):
            if ev is None:
                await asyncio.sleep(0.05)
                break
            now = ev[0]
            if last is not None:
                gaps.append((now, now - last))
            last = now
            if stop.is_set():
                break


async def run(args, server: Server, text: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=900) as client:

        def warm(i: int) -> dict:
            return {"prompt": f"Story {i}:", "model": args.node, "params": {"max_new_tokens": 48}}

        await asyncio.gather(*(client.post("/generate", json=warm(i)) for i in range(args.streams)))
        gaps: list[tuple[float, float]] = []
        stop = asyncio.Event()
        streams = [asyncio.ensure_future(stream_gaps(client, args.node, i, gaps, stop)) for i in range(args.streams)]
        await asyncio.sleep(2.0)
        t_alone = time.monotonic()
        await asyncio.sleep(args.alone_s)
        alone = [g for t, g in gaps if t >= t_alone]
        before = (await client.post("/node_stats", json={})).json()[args.node]
        start = time.monotonic()
        status, first, tokens = 0, None, None
        body = {"prompt": text, "model": args.node, "params": {"max_new_tokens": 8}}
        async for code, ev in events(client, body):
            status = code
            if ev is None:
                break
            if first is None:
                first = ev[0] - start
            usage = ev[1].get("usage")
            if usage:
                tokens = usage.get("prompt_tokens")
        took = time.monotonic() - start
        stop.set()
        await asyncio.gather(*streams, return_exceptions=True)
        after = (await client.post("/node_stats", json={})).json()[args.node]
        during = [g for t, g in gaps if start <= t <= start + (first or took)]
        ratio = p95(during) / p95(alone) if during and alone else float("nan")
        print(
            f"long prompt to {args.node}: HTTP {status}, {tokens} prompt tokens, first event after "
            f"{first if first is None else round(first, 1)} s, answered in {took:.1f} s; target (200): "
            f"{'met' if status == 200 else 'NOT met'}"
        )
        keys = ["small_requests_total", "large_requests_total", "prefill_lane_chunks_total", "shed_total"]
        moved = {k: after[k] - before[k] for k in keys if k in after and k in before}
        print(f"  {args.node} meanwhile: {moved}")
        print(
            f"{args.streams} streams' gap p95 alone {p95(alone) * 1000:.1f} ms ({len(alone)} gaps), during its prefill "
            f"{p95(during) * 1000 if during else float('nan'):.1f} ms ({len(during)} gaps, longest "
            f"{max(during) * 1000 if during else float('nan'):.0f} ms): {ratio:.2f}x; target (<= 2x): "
            f"{'met' if ratio <= 2 else 'NOT met'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--node", default="smollm2")
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--alone-s", type=float, default=10.0)
    args = parser.parse_args()
    flags = cpu_flags()
    print(f"CPU: {cpu_description(flags)}; {os.cpu_count()} cores; flags: {' '.join(f for f in FLAGS if f in flags)}")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    text = long_text(args.config, args.node, args.tokens)
    t0 = time.perf_counter()
    with Server(config=args.config, name="bench-long-served") as server:
        print(f"fresh start of {args.config}: ready in {time.perf_counter() - t0:.1f}s")
        asyncio.run(run(args, server, text))
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
