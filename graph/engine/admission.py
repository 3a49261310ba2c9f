"""Admission by expected completion: measured step times per batch size, and the estimate a node sheds load by.

A request that joins a batch of b rows decodes its tokens at that batch's step time, which grows with b.
`StepTimes` keeps the median of the recent measured step times per batch-size bucket (powers of two: a
median, so a step slowed by a prefill or by a neighbour process does not swing the estimate);
`extra_latency_s` is how much later than alone a request would finish if admitted now: its wait for rows
plus its expected new tokens x (step time of the batch it joins - step time alone). The scheduler answers
Overloaded (429 + Retry-After) when that is above `max_wait_s`, so every answer comes within max_wait_s plus
its own decode, and a node keeps admitting while the bound holds (a busy node stays full).
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque

WINDOW = 32  # recent steps kept per bucket


def bucket(rows: int) -> int:
    """The batch-size bucket of `rows` rows: the power of two at or above it."""
    return 1 << max(0, math.ceil(math.log2(max(1, rows))))


class StepTimes:
    """Measured step seconds per batch-size bucket (the decode thread records, submitters read)."""

    def __init__(self) -> None:
        self._steps: dict[int, deque[float]] = {}
        self._by_bucket: dict[int, float] = {}  # the median of each bucket's recent steps
        self._lock = threading.Lock()

    def record(self, rows: int, seconds: float) -> None:
        if rows <= 0:
            return
        b = bucket(rows)
        with self._lock:
            steps = self._steps.setdefault(b, deque(maxlen=WINDOW))
            steps.append(seconds)
            self._by_bucket[b] = statistics.median(steps)

    def at(self, rows: int) -> float:
        """Expected step seconds with `rows` rows: the bucket's measurement. An unmeasured bucket: a larger
        measured batch's time (an upper bound); one bucket past the largest measured, that one's time (the
        node explores: it admits the larger batch and measures it, so a busy node grows to full rather
        than refusing on a guess); further out, grown in proportion to rows from there. 0.0 before any step."""
        b = bucket(rows)
        with self._lock:
            known = dict(self._by_bucket)
        if b in known:
            return known[b]
        above = [k for k in known if k > b]
        if above:
            return known[min(above)]
        if not known:
            return 0.0
        k = max(known)
        return known[k] * max(1.0, b / (2 * k))

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(self._by_bucket)


def extra_latency_s(wait_s: float, new_tokens: float, steps: StepTimes, join_rows: int, own_rows: int) -> float:
    """Seconds later than alone a request finishes if admitted now: `wait_s` for rows, then `new_tokens`
    decoded at the step time of a `join_rows` batch instead of its own `own_rows` alone."""
    slower = max(0.0, steps.at(join_rows) - steps.at(own_rows))
    return wait_s + new_tokens * slower
