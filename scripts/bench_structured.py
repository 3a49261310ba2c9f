"""Benchmark structured output: engine throughput with and without a JSON Schema constraint.

    .venv/bin/python scripts/bench_structured.py smollm2-135m-instruct [--new-tokens 64] [--concurrency 1,16]

The same prompts run greedy, free and then held to a schema whose one string field can run to
max_new_tokens (so both runs generate about as many tokens); prints tokens/s of each and the ratio.
The cost measured is llguidance's mask per constrained row per step plus applying it to the logits
(graph/engine/grammar.py). Timings vary from machine to machine; this script asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.engine import GenerationEngine
from graph.params import GenerationParams
from scripts.bench_engine import model_dir, prompts

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "story",
        "schema": {
            "type": "object",
            "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}},
            "required": ["title", "story"],
            "additionalProperties": False,
        },
    },
}


async def run(engine: GenerationEngine, n: int, params: GenerationParams) -> tuple[int, float]:
    t0 = time.perf_counter()
    out = await asyncio.gather(*[engine.generate(p, params) for p in prompts(n)])
    return sum(r.completion_tokens for rows in out for r in rows), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    engine = GenerationEngine(model, tok, name="bench", threads=args.threads, max_batch_size=64, chat_template=True)
    engine.start()
    free = GenerationParams(max_new_tokens=args.new_tokens)
    held = free.model_copy(update={"response_format": GenerationParams(response_format=SCHEMA).response_format})
    try:
        asyncio.run(run(engine, 1, held))  # warm-up: builds llguidance's tokenizer (about a second, once)
        print(f"{'streams':>8} {'free tok/s':>11} {'schema tok/s':>13} {'ratio':>6}")
        for n in (int(c) for c in args.concurrency.split(",")):
            free_tokens, free_s = asyncio.run(run(engine, n, free))
            held_tokens, held_s = asyncio.run(run(engine, n, held))
            a, b = free_tokens / free_s, held_tokens / held_s
            print(f"{n:>8} {a:>11.1f} {b:>13.1f} {b / a:>6.2f}")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
