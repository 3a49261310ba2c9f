"""Benchmark the generation engine against plain `model.generate`, one prompt at a time.

    .venv/bin/python scripts/bench_engine.py smollm2-135m-instruct [--new-tokens 64] [--sample]
    .venv/bin/python scripts/bench_engine.py /path/to/model_dir --dtype bfloat16

The model is a local transformers directory or a BentoML model-store tag (`bentoml models list`;
`make prepare` puts the embedded models there).

Prints single-stream ms/token and tokens/s at 1, 16 and 64 concurrent streams (greedy unless
--sample, fixed max_new_tokens), next to the baseline and the ratio. Completions may end early at
an end-of-sequence token: throughput counts the tokens actually generated. Timings vary from machine to machine; this
script asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from graph.engine import GenerationEngine
from graph.params import GenerationParams

TOPICS = [
    "the sea",
    "a city at night",
    "an old library",
    "the first snow",
    "a lost robot",
    "a mountain village",
    "a quiet train ride",
    "the northern lights",
    "a small bakery",
    "a forgotten garden",
    "the desert wind",
    "a lighthouse keeper",
    "a rainy market",
    "a space station",
    "an autumn forest",
    "a jazz club",
]


def prompts(n: int) -> list[str]:
    return [f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} (part {i}).\n" for i in range(n)]


def model_dir(ref: str) -> str:
    if Path(ref).is_dir():
        return ref
    import bentoml

    return bentoml.models.get(ref).path


def load(path: str, int8: bool, dtype: str = "float32"):
    """The model as a node loads it (graph.models.loading), from a local directory."""
    from graph.config import ModelRef, RuntimeConfig
    from graph.models.loading import load_causal_lm

    return load_causal_lm(ModelRef(path=path), RuntimeConfig(quantize="int8" if int8 else "none", dtype=dtype))


def baseline(model, tok, texts: list[str], new_tokens: int) -> tuple[float, int]:
    """Seconds and generated tokens for `model.generate`, one prompt after the other."""
    total_tokens, t0 = 0, time.perf_counter()
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, **make_params(new_tokens).transformers_kwargs(), pad_token_id=tok.pad_token_id)
        total_tokens += out.shape[1] - enc.input_ids.shape[1]
    return time.perf_counter() - t0, total_tokens


SAMPLING = dict(do_sample=True, temperature=0.8, top_p=0.95, repetition_penalty=1.1)  # configs/default.yaml
PARAMS: dict = {}


def make_params(new_tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=new_tokens, **PARAMS)


async def single_stream(engine: GenerationEngine, text: str, new_tokens: int) -> tuple[float, float, int]:
    """(ms per token after the first, time to first token in ms, tokens) for one stream alone."""
    params = make_params(new_tokens)
    stamps: list[float] = []
    t0 = time.perf_counter()
    tokens = 0
    async for event in engine.stream(text, params):
        stamps.append(time.perf_counter())
        if event.result is not None:
            tokens = event.result.completion_tokens
    # Events come per released text fragment; use the totals for the per-token figure.
    per_token = (stamps[-1] - stamps[0]) / max(tokens - 1, 1) * 1000
    return per_token, (stamps[0] - t0) * 1000, tokens


async def concurrent(engine: GenerationEngine, texts: list[str], new_tokens: int) -> tuple[float, int]:
    params = make_params(new_tokens)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(t, params) for t in texts))
    return time.perf_counter() - t0, sum(r[0].completion_tokens for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a local transformers model directory or a BentoML model-store tag")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--baseline-prompts", type=int, default=3, help="prompts for the generate baseline")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--int8", action="store_true", help="int8 dynamic quantization of Linear layers")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="bfloat16 is fast only on CPUs with AMX / AVX512-BF16",
    )
    ap.add_argument(
        "--sample",
        action="store_true",
        help="sample like configs/default.yaml (temperature 0.8, top_p 0.95, repetition_penalty 1.1) "
        "instead of greedy, in the engine and the baseline",
    )
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.sample:
        PARAMS.update(SAMPLING)
    model, tok = load(model_dir(args.model), args.int8, args.dtype)
    print(
        f"model {args.model} dtype={args.dtype} int8={args.int8} threads={torch.get_num_threads()} "
        f"new_tokens={args.new_tokens}"
    )

    base_tps = base_ms = float("nan")
    if not args.skip_baseline:
        baseline(model, tok, prompts(1), 4)  # warm up
        secs, toks = baseline(model, tok, prompts(args.baseline_prompts), args.new_tokens)
        base_tps, base_ms = toks / secs, secs / toks * 1000
        print(f"baseline model.generate, one prompt at a time: {base_ms:.1f} ms/token, {base_tps:.1f} tokens/s")

    engine = GenerationEngine(
        model, tok, name="bench", max_batch_size=args.max_batch_size, max_queue=1024, threads=args.threads
    )
    engine.warmup()
    engine.start()

    async def run() -> None:
        await concurrent(engine, prompts(4), 8)  # warm up the batched paths
        runs = [await single_stream(engine, prompts(1)[0], args.new_tokens) for _ in range(2)]
        ms = statistics.median(r[0] for r in runs)
        ttft = statistics.median(r[1] for r in runs)
        print(
            f"engine single stream: {ms:.1f} ms/token (first token {ttft:.0f} ms)   "
            f"baseline {base_ms:.1f} ms/token   speed-up x{base_ms / ms:.2f}"
        )
        print(f"{'streams':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'baseline':>9} {'ratio':>6}")
        for c in levels:
            secs, toks = await concurrent(engine, prompts(c), args.new_tokens)
            tps = toks / secs
            print(f"{c:>8} {toks:>7} {secs:>8.2f} {tps:>9.1f} {base_tps:>9.1f} {tps / base_tps:>6.2f}")
        print("engine stats:", engine.stats())

    asyncio.run(run())
    engine.close()


if __name__ == "__main__":
    main()
