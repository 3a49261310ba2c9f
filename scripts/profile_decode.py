"""Where one decode step of a torch generator goes, at N rows: the transformer layers, the output
projection, the float32 copy of the logits, the sampler, and the scheduler's per-row bookkeeping.

    .venv/bin/python scripts/profile_decode.py [--model gemma-3-270m] [--dtype bfloat16] [--rows 64]
        [--threads 2] [--steps 20] [--prompt-tokens 32]

The model runs as the torch runner runs it (graph/engine/runners/torch_runner.py: explicit positions,
ready masks, the batch KV cache), but the step is cut at the model's final norm so each part is timed
alone (time.perf_counter around each; medians over --steps steps after two warm-up steps). Greedy rows
without logprobs (what scripts/bench_node.py runs). "engine step" is one whole step of the real engine
(graph/engine) at the same rows: the parts should add up to about it. Asserts nothing; timings vary with
the machine's load (say whether it was quiet).
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

from graph.config import ModelRef, RuntimeConfig
from graph.engine.runners.torch_runner import ModelRunner
from graph.engine.sampling import BatchSampler, RowSampling
from graph.params import GenerationParams


def model_dir(ref: str) -> str:
    if Path(ref).is_dir():
        return ref
    import bentoml

    return bentoml.models.get(ref).path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--no-engine", action="store_true", help="skip the whole-engine step timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from graph.models.loading import load_causal_lm

    path = model_dir(args.model)
    model, tok = load_causal_lm(ModelRef(path=path), RuntimeConfig(dtype=args.dtype))
    runner = ModelRunner(model)
    n, p = args.rows, args.prompt_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 5000, (n, p), generator=g)
    mask = torch.ones(n, p, dtype=torch.bool)
    softcap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    times: dict[str, list[float]] = {}

    def clock(name: str, t0: float) -> float:
        t = time.perf_counter()
        times.setdefault(name, []).append((t - t0) * 1000)
        return t

    rows = [RowSampling(params=GenerationParams(max_new_tokens=64), generator=None) for _ in range(n)]
    with torch.inference_mode():
        logits, cache = runner.prefill(ids, mask)
        big = runner.new_cache(n, p + args.steps + 8 + 16, left_room=0)
        big.add_rows(cache, list(range(n)), args.steps + 8)
        cache = big
        tokens = logits.argmax(-1, keepdim=True)
        pos = torch.full((n, 1), p, dtype=torch.long)
        sampler = BatchSampler(rows, runner.vocab_size)
        for step in range(args.steps + 2):
            if step == 2:
                times.clear()
            t = time.perf_counter()
            cache.reserve(1, 8)
            cache.mask[: cache.rows, cache.end] = True
            m = runner._decode_mask(cache)
            t = clock("masks", t)
            hidden = model.model(
                input_ids=tokens, attention_mask=m, position_ids=pos, past_key_values=cache, use_cache=True
            ).last_hidden_state
            t = clock("layers (embed..final norm)", t)
            raw = model.lm_head(hidden[:, -1, :])
            t = clock("output projection (lm_head)", t)
            if softcap is not None:
                raw = torch.tanh(raw / softcap) * softcap
                t = clock("final logit softcap", t)
            f32 = raw.float()
            t = clock("float32 copy of logits", t)
            cache.advance(1)
            out = sampler.step(f32)
            t = clock("sampler (BatchSampler.step)", t)
            toks = [out.tokens[i] for i in range(n)]
            texts = [tok.decode([x], skip_special_tokens=False) for x in toks]  # the engine caches these per id
            t = clock("per-row Python (tolist + decode)", t)
            del texts
            tokens = torch.tensor([[x] for x in toks], dtype=torch.long)
            pos += 1
            clock("next ids tensor", t)
        # The greedy step's alternatives on the same hidden states: the full logits, their float32 copy
        # and max (the sampler's greedy path), against the packed head's chunked argmax (decode_split).
        last = hidden[:, -1, :]
        for _ in range(args.steps):
            t = time.perf_counter()
            f32.max(dim=-1)
            t = clock("  sampler's greedy max on float32 logits", t)
            if runner.head is not None:
                runner.head.argmax(last)
                t = clock("  packed head: chunked argmax (whole)", t)
            model.lm_head(last).float().max(dim=-1)
            clock("  lm_head + float32 copy + max", t)
    total = 0.0
    print(
        f"{args.model} {args.dtype}, {n} rows, {args.threads} threads, vocab {runner.vocab_size}, "
        f"packed for oneDNN: {runner.head is not None}; "
        f"median ms per decode step over {args.steps} steps"
    )
    for name, vals in times.items():
        med = statistics.median(vals)
        if not name.startswith("  "):
            total += med
        print(f"  {name:<38}{med:>8.2f}")
    print(f"  {'sum of parts':<38}{total:>8.2f}")
    if not args.no_engine:
        print(f"  {'engine step (graph/engine, same rows)':<38}{engine_step(model, tok, args):>8.2f}")


def engine_step(model, tok, args) -> float:
    """Median decode-step time of the real engine at args.rows greedy streams (its step_times)."""
    from graph.engine import GenerationEngine

    engine = GenerationEngine(
        model,
        tok,
        name="profile",
        max_batch_size=args.rows,
        max_queue=1024,
        threads=args.threads,
        max_prompt_tokens=128,
    )
    engine.warmup(timeout=900)
    ids = torch.randint(100, 5000, (args.rows, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    texts = [tok.decode(r) for r in ids.tolist()]
    params = GenerationParams(max_new_tokens=args.steps + 8)

    async def go() -> None:
        await asyncio.gather(*(engine.generate(t, params) for t in texts))

    t0 = time.perf_counter()
    asyncio.run(go())
    wall = time.perf_counter() - t0
    engine.close()
    return wall * 1000 / (args.steps + 8)  # whole time per step, prefills included


if __name__ == "__main__":
    main()
