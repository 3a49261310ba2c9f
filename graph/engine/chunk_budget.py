"""How many prompt tokens a long prompt's next chunk prefills: a step budget in time, not in tokens (issue #32).

A long prompt is prefilled a chunk per engine step, between the running rows' decode steps
(graph/engine/scheduler.py). Every running stream then waits for the chunk as well as for its own
decode step, so its gap between tokens is (decode step + chunk). A chunk of a fixed token count
costs more and more as the prompt's context grows (attention reads every earlier position): on
SmolLM2 a 512-token chunk at 8,000 tokens of context took 0.9 s against a 70 ms decode step, and
the streams' gap p95 went 13x. So, like vLLM's `max_num_batched_tokens` but sized by measured time:

- with rows decoding, a chunk gets `prefill_step_share` x the last decode steps' time; its token
  count is that budget over the seconds per token the last chunks took (feedback: the context's
  growth and the machine's load are in the measurement), between a floor of `MIN_TOKENS` (a long
  prompt always advances) and the node's chunk size;
- with no rows decoding there is nobody to protect: chunks stay at the node's chunk size.

The per-token cost includes a forward's fixed cost (reading the weights) spread over the chunk's
tokens, so a chunk measured small looks dearer per token; sizing the next chunk from the last one
still converges to a chunk that takes the budget (chunk time t = f + k u; the next k = budget k / t
gives t' = f + budget (t - f) / t, whose fixed point is t = budget and which is stable while f is
below the budget).

The trade-off: the long prompt's first token comes later (its chunks get only a share of the time
while others decode); docs/performance.md has the figures.
"""

from __future__ import annotations

# The default of scheduler.prefill_step_share: a chunk beside running rows takes about half their decode
# step, so their gap between tokens stays near 1.5x their gap alone (the target is 2x at p95).
PREFILL_STEP_SHARE = 0.5
# The floor: a long prompt advances at least this many tokens per step. Small, because at a long context a
# token's attention alone can cost a sizeable part of a decode step (SmolLM2 on onnx int8 at 7,500 tokens).
MIN_TOKENS = 4
DECODE_EMA = 0.3  # weight of the newest decode step in the running average
COST_EMA = 0.5  # weight of the newest chunk in the per-token cost (the context grows chunk by chunk)


class ChunkSizer:
    """Sizes prefill chunks by a share of the decode step's measured time (the decode thread's only)."""

    def __init__(self, share: float | None, min_tokens: int = MIN_TOKENS) -> None:
        self.share = share  # None: fixed-size chunks (the node's chunk size) whatever runs beside them
        self.min_tokens = min_tokens
        self.decode_s: float | None = None  # running average of a decode step's wall time
        self.per_token_s: float | None = None  # seconds per prompt token of the last chunks

    def decoded(self, seconds: float) -> None:
        """A decode step of the running rows took `seconds` (forward, sampling, delivery)."""
        if seconds > 0:
            self.decode_s = seconds if self.decode_s is None else self.decode_s + DECODE_EMA * (seconds - self.decode_s)

    def chunked(self, tokens: int, seconds: float) -> None:
        """A prefill chunk of `tokens` tokens took `seconds`."""
        if tokens > 0 and seconds > 0:
            cost = seconds / tokens
            self.per_token_s = (
                cost if self.per_token_s is None else self.per_token_s + COST_EMA * (cost - self.per_token_s)
            )

    def budget_s(self) -> float | None:
        """Seconds a chunk may take while rows decode (None: not measured yet, or sizing is off)."""
        if self.share is None or self.decode_s is None:
            return None
        return self.share * self.decode_s

    def size(self, max_tokens: int, running_rows: int) -> int:
        """Prompt tokens the next chunk prefills: `max_tokens` (the node's chunk size) with no rows
        running or sizing off; else the budget over the measured per-token cost, at least the floor
        (the floor too before any chunk or decode step was measured)."""
        if self.share is None or running_rows == 0:
            return max_tokens
        budget = self.budget_s()
        if budget is None or self.per_token_s is None:
            return min(self.min_tokens, max_tokens)
        return max(min(self.min_tokens, max_tokens), min(max_tokens, int(budget / self.per_token_s)))
