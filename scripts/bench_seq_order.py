"""A partial batch's decode step on the llamacpp runner, its rows on scattered sequence ids against consecutive ones.

    .venv/bin/python scripts/bench_seq_order.py [--models smollm2-135m-instruct,gemma-3-270m] [--rows 16]
        [--n-seq 65] [--steps 20] [--threads 2] [--flash-attn auto]

With `kv_unified = false` llama.cpp splits a batch into one ubatch (one pass over the weights) per run of
consecutive sequence ids, so where a node's rows sit among the context's sequences decides how many forwards
a step costs (graph/engine/runners/llamacpp_runner.py: `_run`, `take_seq`). For each model this prints the
median decode step (ms, wall) of --rows rows of a 32-token prompt each:
- consecutive: on sequences 0 .. rows-1, what `take_seq` (the lowest free id) gives a batch that starts
  after the node's sequences were all freed, in whatever order;
- scattered: on --rows ids drawn at random from the context's --n-seq sequences (fixed seed), what the
  last-freed-first stack before the heap gave after rows had finished in a random order; the number of runs
  of consecutive ids is printed beside it.
This script asserts nothing; timings on 2 shared cores vary run to run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from graph.config import ModelRef
from graph.models.gguf_model import find_gguf
from graph.models.runtimes import cpu_description


def runs(seqs: list[int]) -> int:
    s = sorted(seqs)
    return 1 + sum(1 for a, b in zip(s, s[1:]) if b != a + 1)


def step_ms(runner, seqs: list[int], steps: int) -> float:
    """Median wall ms of a decode step of one row per sequence in `seqs` (each prefilled with a 32-token prompt)."""
    held = [runner.take_seq() for _ in range(runner.n_seq - runner.in_use())]
    runner.free_seqs(seqs)  # the only free sequences: the prefill below takes exactly these
    rows = len(seqs)
    ids = torch.randint(100, 20000, (rows, 32), generator=torch.Generator().manual_seed(1))
    logits, pre = runner.prefill(ids, torch.ones(rows, 32, dtype=torch.bool))
    runner.free_seqs(held)
    assert sorted(pre.seqs) == sorted(seqs)
    batch = runner.new_cache(rows, 32 + steps + 8)
    batch.add_rows(pre, list(range(rows)), steps + 8)
    tok = logits.argmax(-1, keepdim=True)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        runner.decode(tok, torch.full((rows, 1), 32 + i), batch, steps + 8)
        times.append(time.perf_counter() - t0)
    batch.remove_rows(list(range(rows)))
    return statistics.median(times[2:]) * 1000  # the first steps warm up


def main(args) -> None:
    from graph.engine.runners.llamacpp_runner import LlamaCppRunner

    print(f"{cpu_description()}; {args.threads} threads, {args.rows} rows of {args.n_seq} sequences")
    rng = random.Random(0)
    scattered = sorted(rng.sample(range(args.n_seq), args.rows))
    consecutive = list(range(args.rows))
    for name in args.models.split(","):
        gguf = find_gguf(ModelRef(embedded=name), "")
        runner = LlamaCppRunner(gguf, threads=args.threads, n_seq=args.n_seq, n_ctx_seq=256, flash_attn=args.flash_attn)
        try:
            step_ms(runner, consecutive, 4)  # warm-up
            cells = []
            for label, seqs in (("consecutive", consecutive), ("scattered", scattered), ("consecutive", consecutive)):
                cells.append(f"{label} ({runs(seqs)} runs) {step_ms(runner, seqs, args.steps):.1f}")
            print(f"{name} ({runner.runtime_name}): decode step ms: " + ", ".join(cells), flush=True)
        finally:
            runner.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--n-seq", type=int, default=65)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"])
    main(parser.parse_args())
