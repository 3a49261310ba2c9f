"""Step and prefill times measured at a node's start, per batch size and per prompt length (admission's table).

Admission (graph/engine/admission.py) estimates how long a request takes in the batch it would join. Before
this table, the only step times it knew were those of the batch sizes traffic had run: a node that had seen
single requests extrapolated a burst of 64 from batch size 1 and refused most of it, though it finished the
same burst in seconds right after. So the decode thread, once the model is warm, times a few decode steps
(the forward and the sampler, with the default config's sampling: temperature, top-p, repetition penalty) at
batch sizes 1, 2, 4, ... up to max_batch_size, and a prefill of 16, 128 and 512 prompt tokens (the second of
two calls: the first at a new shape pays its setup). Only the runner protocol is used (one prompt prefilled,
its row repeated into a batch cache by `add_rows`), so torch, onnx and llama.cpp nodes measure the same way.
A time budget bounds the whole (the smallest and largest sizes are measured first, so what it leaves out is
interpolated between them).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from graph.engine.runners.base import Runner
from graph.engine.sampling import BatchSampler, RowSampling
from graph.params import GenerationParams

CONTEXT = 32  # prompt tokens of the rows the decode steps run on
STEPS = 3  # timed decode steps per batch size (after one untimed: a new shape pays its setup once)
PREFILL_TOKENS = (16, 128, 512)
BUDGET_S = 30.0  # the whole measurement stops growing past this (the largest sizes are extrapolated)
# What the decode steps sample with: the default config's defaults (configs/default.yaml), the costlier
# path of the sampler (top-p sorts candidates); greedy traffic corrects the table down as it runs.
SAMPLING = GenerationParams(do_sample=True, temperature=0.8, top_p=0.95, repetition_penalty=1.1)


@dataclass
class Table:
    """Seconds of one decode step by batch rows, of one prefill by prompt tokens, and what measuring took."""

    steps: dict[int, float] = field(default_factory=dict)
    prefills: dict[int, float] = field(default_factory=dict)
    took_s: float = 0.0

    def describe(self) -> str:
        def ms(table: dict[int, float]) -> str:
            return ", ".join(f"{k}: {v * 1000:.1f}" for k, v in table.items())

        return (
            f"measured in {self.took_s:.1f}s: decode step ms by batch rows {{{ms(self.steps)}}}; "
            f"prefill ms by prompt tokens {{{ms(self.prefills)}}}"
        )


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below max_batch, then max_batch itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def ends_first(sizes: list[int]) -> list[int]:
    """The smallest and the largest first, then the rest: a budget cut leaves a table that spans them all."""
    return [*dict.fromkeys([sizes[0], sizes[-1], *sizes[1:-1]])]


def monotone(table: dict[int, float]) -> dict[int, float]:
    """Sorted by size, each value at least the one before: a larger batch or prompt is never faster (a lower
    median there is noise)."""
    out: dict[int, float] = {}
    for k in sorted(table):
        out[k] = max(table[k], *out.values()) if out else table[k]
    return out


def measure(
    runner: Runner,
    *,
    max_batch: int,
    pad_id: int,
    max_prompt: int | None = None,
    steps: int = STEPS,
    budget_s: float = BUDGET_S,
) -> Table:
    """Time decode steps at each of `batch_sizes(max_batch)` and prefills of PREFILL_TOKENS (up to
    `max_prompt` and the model's context), within about `budget_s` seconds. Call under torch.inference_mode,
    on the thread that runs the model."""
    start = time.monotonic()
    table = Table()
    rng = torch.get_rng_state()  # the sampler draws from the global generator: requests see it as it was
    try:
        _measure(runner, table, start, max_batch, pad_id, max_prompt, steps, budget_s)
    finally:
        torch.set_rng_state(rng)
    table.took_s = time.monotonic() - start
    return table


def _measure(
    runner: Runner,
    table: Table,
    start: float,
    max_batch: int,
    pad_id: int,
    max_prompt: int | None,
    steps: int,
    budget_s: float,
) -> None:
    ids = torch.full((1, CONTEXT), pad_id, dtype=torch.long)
    logits, pre = runner.prefill(ids, torch.ones(1, CONTEXT, dtype=torch.bool))
    token = int(logits[0].argmax())
    for b in ends_first(batch_sizes(max_batch)):
        if len(table.steps) >= 2 and time.monotonic() - start > budget_s / 2:
            break  # the sizes left are interpolated between those measured
        if b > 1:  # the one-row prefill's row, repeated (add_rows empties a llama.cpp prefill: make another)
            logits, pre = runner.prefill(ids, torch.ones(1, CONTEXT, dtype=torch.bool))
        cache = runner.new_cache(max_batch, CONTEXT + steps + 2, left_room=CONTEXT)  # as the scheduler's batch
        cache.add_rows(pre, [0] * b, steps + 2)
        rows = [RowSampling(SAMPLING, None, [token] * CONTEXT) for _ in range(b)]
        timings = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            out = runner.decode(
                torch.full((b, 1), token, dtype=torch.long), torch.full((b, 1), CONTEXT + i, dtype=torch.long), cache, 2
            )
            BatchSampler(rows, out.shape[-1]).step(out)
            if i:  # the first step at a new shape pays its setup
                timings.append(time.perf_counter() - t0)
        table.steps[b] = statistics.median(timings)
        del cache
    table.steps = monotone(table.steps)
    limits = [x for x in (max_prompt, runner.max_positions) if x]
    limit = min(limits) if limits else None
    for n in ends_first([n for n in PREFILL_TOKENS if limit is None or n <= limit]):
        if len(table.prefills) >= 2 and time.monotonic() - start > budget_s:
            break
        p = torch.full((1, n), pad_id, dtype=torch.long)
        timings = []
        for _ in range(2):  # the first call at a new length pays its setup (oneDNN makes a primitive per shape)
            t0 = time.perf_counter()
            runner.prefill(p, torch.ones(1, n, dtype=torch.bool))
            timings.append(time.perf_counter() - t0)
        table.prefills[n] = min(timings)
    table.prefills = monotone(table.prefills)
