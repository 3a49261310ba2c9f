"""Where a prefill chunk's time goes at long context, on one generator node's runner (issue #32).

    .venv/bin/python scripts/profile_chunks.py [--config configs/default.yaml] [--node smollm2]
        [--backend onnx|torch|llamacpp] [--dtype bfloat16] [--flash-attn auto|on|off]
        [--contexts 0,2000,4000,7500] [--chunks 16,64,128,512]

Prints, for the node's runner (its config's runtime unless --backend/--dtype/--flash-attn override it):
- one prefill chunk's time (median of --repeats) of each size in --chunks on top of each context in
  --contexts (the row's cache already holding that many prompt tokens), and its time per token;
- a decode step of --rows short rows (the running streams' step), alone and with one row of the
  longest context in the batch (does a long row slow the other rows' step?).
Each timed chunk is rolled back before the next, so every timing starts from the same context.
This script asserts nothing; timings on 2 shared cores vary run to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from graph.config import load_config
from graph.engine.runners.base import RowCache, Runner
from graph.models.node_engine import engine_for_node
from graph.models.runtimes import cpu_description


def rewind(cache: RowCache, n: int) -> None:
    """Roll a one-row prefill cache back to its first `n` positions (what the timed chunk wrote is dropped)."""
    if hasattr(cache, "seqs"):  # llama.cpp: its sequence's cells from n on are cleared (it has lens too)
        cache.truncate_row(0, n)
    elif hasattr(cache, "lens"):  # onnx: the row's length
        cache.lens[0] = n  # pyright: ignore[reportAttributeAccessIssue]
    elif hasattr(cache, "end"):  # torch: right-aligned from column 0
        cache.end = n  # pyright: ignore[reportAttributeAccessIssue]


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of `repeats` calls of `fn` (on a shared machine the
    CPU time is the steadier figure: a neighbour's load stretches wall time, less so the work done)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def chunk_at(runner: Runner, ids: torch.Tensor, cache: RowCache | None, ctx: int, k: int, total: int):
    """One timed call: a chunk of `k` tokens on top of `ctx` cached ones (a new row when `cache` is None)."""

    def one() -> None:
        if cache is None:
            runner.prefill_chunk(ids[:, :k], None, total)
        else:
            rewind(cache, ctx)
            runner.prefill_chunk(ids[:, ctx : ctx + k], cache, total)

    return one


def main(args) -> None:
    cfg = load_config(args.config)
    node = cfg.generators[args.node]
    update = {k: v for k, v in (("backend", args.backend), ("dtype", args.dtype), ("flash_attn", args.flash_attn)) if v}
    if update:
        node = node.model_copy(update={"runtime": node.runtime.model_copy(update=update)})
    contexts = [int(x) for x in args.contexts.split(",")]
    chunks = [int(x) for x in args.chunks.split(",")]
    total = max(contexts) + max(chunks)
    if node.runtime.backend == "llamacpp":
        # llama.cpp allocates every sequence's positions up front (max_batch_size + 1 sequences of the node's
        # prompt + completion limit; 2048 with max_prompt_tokens unset): rows enough for the decode step below,
        # each long enough for the longest context
        scheduler = node.scheduler.model_copy(update={"max_batch_size": args.rows + 1})
        node = node.model_copy(update={"max_prompt_tokens": total, "scheduler": scheduler})
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    engine = engine_for_node(
        args.node,
        node,
        threads=node.runtime.threads,
        store_lookup=store_lookup,
        embedded_lookup=embedded_lookup,
        onnx_lookup=onnx_lookup,
    )
    runner: Runner = engine._runner  # pyright: ignore[reportAttributeAccessIssue]
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(f"{cpu_description()}; node {args.node} ({runner.runtime_name}), {os.cpu_count()} cores (shared)")
    ids = torch.randint(100, 20000, (1, total), dtype=torch.long)
    with torch.inference_mode():
        cache = None
        for k in chunks:  # warm-up: every shape once
            _, cache = runner.prefill_chunk(ids[:, :k], None, total)
        cache, done = None, 0
        print(f"{'context':>8} " + " ".join(f"{f'chunk {k}: wall, cpu ms (wall/token)':>34}" for k in chunks))
        for ctx in contexts:
            while done < ctx:  # build the context in big chunks (untimed)
                n = min(512, ctx - done)
                _, cache = runner.prefill_chunk(ids[:, done : done + n], cache, total)
                done += n
            cells = []
            for k in chunks:
                wall, cpu = timed(chunk_at(runner, ids, cache, ctx, k, total), args.repeats)
                cells.append(f"{wall * 1000:8.1f} {cpu * 1000:8.1f} ({wall * 1000 / k:6.2f})")
            if cache is not None:
                rewind(cache, ctx)
            print(f"{ctx:>8} " + " ".join(f"{c:>34}" for c in cells))
        # the running streams' decode step, alone and beside the long row
        b = args.rows
        short = torch.randint(100, 20000, (b, 16), dtype=torch.long)
        logits, pre = runner.prefill(short, torch.ones(b, 16, dtype=torch.bool))
        batch = runner.new_cache(b + 1, 16 + 256, left_room=16)
        batch.add_rows(pre, list(range(b)), 256)
        tok = logits.argmax(-1, keepdim=True)
        pos = [16]

        def step() -> None:
            rows = batch.rows
            feed = tok if rows == b else torch.cat([tok, tok[:1]])
            positions = [[pos[0]]] * b + ([[done + pos[0] - 16]] if rows > b else [])
            runner.decode(feed, torch.tensor(positions), batch, 256)
            pos[0] += 1

        alone, alone_cpu = timed(step, args.repeats * 3)
        assert cache is not None
        rewind(cache, done)
        batch.add_rows(cache, [0], 256)
        beside, beside_cpu = timed(step, args.repeats * 3)
        print(
            f"decode step of {b} rows (wall, cpu ms): alone {alone * 1000:.1f}, {alone_cpu * 1000:.1f}; with a row "
            f"of {done} tokens in the batch {beside * 1000:.1f}, {beside_cpu * 1000:.1f}"
        )
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--node", default="smollm2")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--flash-attn", default=None, choices=["auto", "on", "off"], help="backend llamacpp")
    parser.add_argument("--contexts", default="0,2000,4000,7500")
    parser.add_argument("--chunks", default="16,64,128,512")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    main(parser.parse_args())
