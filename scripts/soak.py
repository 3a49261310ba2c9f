"""`make soak`: N clients against a real `bentoml serve` for a while; requests, errors and worker RSS.

Starts the server itself (configs/default.yaml unless --config), records every worker's resident
memory (VmRSS from /proc) once the server is ready, then runs `--clients` closed-loop clients for
`--seconds` with a mix of calls (generate_score, a 4-prompt generate, a stream), sampling RSS every
2 s. After the load it waits `--idle` seconds (the engines give freed heap back to the OS after
1 s idle) and prints, per worker: RSS at start, peak, right after the load, and at the end, plus
RSS once a minute during the run (a leak climbs minute after minute; a retained peak does not).

    .venv/bin/python scripts/soak.py                      # 16 clients, 600 s
    make soak SOAK_S=120                                  # a shorter run
    .venv/bin/python scripts/soak.py --config configs/tiny.yaml --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import Server  # noqa: E402

PROMPTS = [
    "I have an idea!",
    "The weather today is",
    "Write one sentence about the sea.",
    "Why is the sky blue?",
    "The movie was surprisingly",
    "Tell me a fun fact about cats.",
    "Once upon a time, in a small village,",
    "Our team lost the final game because",
]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Soak:
    def __init__(self, server: Server, clients: int, seconds: float) -> None:
        self.server, self.clients, self.seconds = server, clients, seconds
        self.codes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.kinds: Counter[str] = Counter()
        self.errors: list[str] = []
        self.node_samples: list[tuple[float, dict]] = []  # (seconds since start, /node_stats)

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        kind = rng.choices(["generate_score", "generate", "stream"], weights=[6, 2, 2])[0]
        prompt = rng.choice(PROMPTS)
        t0 = time.perf_counter()
        try:
            if kind == "generate_score":
                r = await client.post("/generate_score", json={"original_sentence": prompt})
                code = str(r.status_code)
            elif kind == "generate":
                r = await client.post("/generate", json={"prompts": rng.sample(PROMPTS, 4)})
                code = str(r.status_code)
            else:
                async with client.stream("POST", "/generate_stream", json={"prompt": prompt}) as r:
                    body = "".join([chunk async for chunk in r.aiter_text()])
                code = str(r.status_code)
                if r.status_code == 200 and ('"type":"error"' in body or "data: [DONE]" not in body):
                    code = "stream_error"
            if code != "200" and len(self.errors) < 5:
                self.errors.append(f"{kind} {code}: {r.text[:200] if kind != 'stream' else body[:200]}")
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        self.latencies.append(time.perf_counter() - t0)
        self.codes[code] += 1
        self.kinds[kind] += 1

    async def client(self, i: int, until: float) -> None:
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=600) as client:
            while time.monotonic() < until:
                await self.one(client, rng)

    async def run(self, pids: dict[str, int], samples: dict[str, list[tuple[float, float]]]) -> None:
        start = time.monotonic()
        until = start + self.seconds

        async def sample() -> None:
            async with httpx.AsyncClient(base_url=self.server.url, timeout=30) as client:
                n = 0
                while True:
                    t = time.monotonic() - start
                    for name, pid in pids.items():
                        samples[name].append((t, rss_mb(pid)))
                    if n % 5 == 0:  # every 10 s: each node's rows and KV cache, to set beside its RSS
                        try:
                            stats = (await client.post("/node_stats", json={})).json()
                            self.node_samples.append((t, stats))
                        except (httpx.HTTPError, ValueError):
                            pass
                    n += 1
                    await asyncio.sleep(2)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(self.client(i, until) for i in range(self.clients)))
        sampler.cancel()


def per_minute(values: list[tuple[float, float]], seconds: float) -> str:
    """The peak of each minute of (seconds, value) samples: a leak climbs minute after minute."""
    peaks = []
    for m in range(0, int(seconds // 60) + 1):
        vals = [v for t, v in values if m * 60 <= t < (m + 1) * 60]
        if vals:
            peaks.append(f"{max(vals):.0f}")
    return " ".join(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--idle", type=float, default=10, help="seconds to wait after the load before the end RSS")
    args = ap.parse_args()

    print(
        f"soak: {args.clients} clients x {args.seconds:.0f}s against bentoml serve --arg-file {args.config}", flush=True
    )
    with Server(config=args.config, name="soak") as server:
        pids = server.services()
        # one request per endpoint first, so the start RSS is that of a warm, loaded server
        httpx.post(server.url + "/generate_score", json={"original_sentence": "warm up"}, timeout=300)
        time.sleep(3)
        start_rss = {n: rss_mb(p) for n, p in pids.items()}
        samples: dict[str, list[tuple[float, float]]] = {n: [] for n in pids}
        soak = Soak(server, args.clients, args.seconds)
        t0 = time.monotonic()
        asyncio.run(soak.run(pids, samples))
        wall = time.monotonic() - t0
        after_load = {n: rss_mb(p) for n, p in pids.items()}
        time.sleep(args.idle)
        end_rss = {n: rss_mb(p) for n, p in pids.items()}
        stats = httpx.post(server.url + "/node_stats", json={}, timeout=30).json()

    total = sum(soak.codes.values())
    errors = total - soak.codes["200"]
    lat = sorted(soak.latencies)
    print(f"requests: {total} in {wall:.0f}s ({total / wall:.1f}/s)  by kind: {dict(soak.kinds)}")
    print(f"errors: {errors}  status: {dict(soak.codes)}")
    for e in soak.errors:
        print(f"  e.g. {e}")
    if lat:
        print(
            f"latency s: p50 {statistics.median(lat):.2f}  p95 {lat[int(0.95 * (len(lat) - 1))]:.2f}  max {lat[-1]:.2f}"
        )
    print(f"{'worker RSS MB':<28}{'start':>8}{'peak':>8}{'load end':>10}{'end':>8}   per minute")
    for name in pids:
        peak = max([v for _, v in samples[name]] + [after_load[name]])
        print(
            f"{name:<28}{start_rss[name]:>8.0f}{peak:>8.0f}{after_load[name]:>10.0f}{end_rss[name]:>8.0f}   "
            + per_minute(samples[name], args.seconds)
        )
    print("per-minute peaks of each node's gauges (/node_stats every 10 s):")
    for node in stats:
        for gauge in ("active_rows", "kv_mb", "kv_buffer_mb"):
            values = [(t, float(s[node].get(gauge, 0))) for t, s in soak.node_samples if node in s]
            print(f"  {node + ' ' + gauge:<26}" + per_minute(values, args.seconds))
    for node, s in stats.items():
        keys = ("requests_total", "rejected_total", "failed_rows_total", "malloc_trims_total", "step_ms")
        print(f"node {node}: " + ", ".join(f"{k}={s.get(k, 0):g}" for k in keys))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
