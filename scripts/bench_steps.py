"""`make bench-steps`: the graph layer's own time per step of each named-graph kind, beside node and classifier time.

In-process (graph/entry/local.py) on a config's first two generators (default: configs/tiny.yaml), one client, greedy,
the same prompt: every request runs each kind (node alone, switch, split, fallback, sequence, guard, and a
fallback of a switch), and every node and classifier call is timed where the graph makes it. Per kind it prints
the p50 of: the whole request, the time inside node calls, inside classifier calls, and the rest (entry-side:
the graph layer's own work) divided by the steps on the answer's path. Targets (issue 33): entry-side at most
5 ms p50 per step; a switch costs one classifier call; split and fallback add nothing measurable when their
first branch answers.

    .venv/bin/python scripts/bench_steps.py                      # about a minute on 2 cores
    .venv/bin/python scripts/bench_steps.py --config configs/default.yaml --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graph.config import parse_config  # noqa: E402
from graph.entry.context import RequestContext  # noqa: E402
from graph.entry.local import build_local_graph  # noqa: E402
from graph.params import GenerationOverrides  # noqa: E402

PROMPT = "Hi! How are you today?"
LABELS = {"greeting": "Hi! How are you today?", "sums": "add seven and five then multiply by two"}


def graphs(a: str, b: str) -> dict[str, Any]:
    return {
        "node": {"policy": "best_of", "nodes": {a: 1}},
        "switch": {
            "policy": "switch",
            "by": "label",
            "zero_shot": {"labels": LABELS},
            "cases": {"greeting": a},
            "default": b,
        },
        "split": {"policy": "split", "weights": {a: 1, b: 0.000001}},
        "fallback": {"policy": "fallback", "order": [a, b]},
        "sequence": {
            "policy": "sequence",
            "steps": [{"run": a, "template": "{prompt}"}, {"run": a, "template": "{previous}"}],
        },
        "guard": {"policy": "guard", "run": a, "zero_shot": {"labels": LABELS}, "block": {"sums": 1.0}},
        "nested": {"policy": "fallback", "order": ["switch", b]},
    }


class Clock:
    """Intervals spent inside node and classifier calls (their union: parallel calls count once)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {"node": [], "classifier": []}

    def wrap(self, kind: str, fn: Any) -> Any:
        async def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kw)
            finally:
                self.spans[kind].append((t0, time.perf_counter()))

        return timed

    def took(self, kind: str) -> float:
        total, end = 0.0, 0.0
        for a, b in sorted(self.spans[kind]):
            a = max(a, end)
            if b > a:
                total += b - a
                end = b
        return total

    def reset(self) -> None:
        for v in self.spans.values():
            v.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--requests", type=int, default=50, help="Requests per kind (after 3 warm-up ones).")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args()
    data = yaml.safe_load((ROOT / args.config).read_text())
    a, b = list(data["generators"])[:2]
    data["policies"] = {"default": "all", "graphs": graphs(a, b)}
    graph, engines = build_local_graph(parse_config(data, source=args.config))
    clock = Clock()
    for gen in graph.generators.values():
        gen.generate = clock.wrap("node", gen.generate)  # type: ignore[method-assign]
    graph.classifier.classify = clock.wrap("classifier", graph.classifier.classify)  # type: ignore[method-assign]
    graph.classifier.embed = clock.wrap("classifier", graph.classifier.embed)  # type: ignore[method-assign]
    params = GenerationOverrides(max_new_tokens=args.max_new_tokens, do_sample=False)
    rows: list[tuple[str, list[tuple[float, ...]]]] = []

    async def run_all() -> None:  # one event loop for every request, as in the entry service
        names = list(graphs(a, b))
        samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
        for i in range(args.requests + 3):
            for name in names:  # kinds interleaved: a change in the machine's load hits them all alike
                clock.reset()
                ctx = RequestContext.make(timeout_s=120, request_id=f"bench-{name}-{i}")
                t0 = time.perf_counter()
                out = await graph.decide(ctx, PROMPT, params, name)
                total = time.perf_counter() - t0
                node, clf = clock.took("node"), clock.took("classifier")
                calls = len(clock.spans["classifier"])
                if i >= 3:
                    samples[name].append((total, node, clf, (total - node - clf) / len(out.path), calls, len(out.path)))
        rows.extend(samples.items())

    try:
        asyncio.run(run_all())
    finally:
        for e in engines.values():
            e.close()
    print(
        f"config {args.config}, nodes {a}, {b}; {args.max_new_tokens} greedy tokens, 1 client, p50 of {args.requests}"
    )
    head = (
        f"{'kind':<10} {'steps':>5} {'total ms':>9} {'node ms':>8} {'clf ms':>7} {'clf calls':>9} {'entry ms/step':>13}"
    )
    print(head)
    print("-" * len(head))
    for name, s in rows:
        med = [statistics.median(x[k] for x in s) * (1000 if k < 4 else 1) for k in range(6)]
        print(f"{name:<10} {med[5]:>5.0f} {med[0]:>9.2f} {med[1]:>8.2f} {med[2]:>7.2f} {med[4]:>9.0f} {med[3]:>13.3f}")


if __name__ == "__main__":
    main()
