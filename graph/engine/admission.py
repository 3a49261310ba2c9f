"""Admission by expected completion: measured step times per batch size, and the estimate a node sheds load by.

A request that joins a batch of b rows decodes its tokens at that batch's step time, which grows with b.
`StepTimes` keeps a moving average of the measured step time per batch-size bucket (powers of two);
`extra_latency_s` is how much later than alone a request would finish if admitted now: its wait for rows
plus its expected new tokens x (step time of the batch it joins - step time alone). The scheduler answers
Overloaded (429 + Retry-After) when that is above `max_wait_s`, so every answer comes within max_wait_s plus
its own decode, and a node keeps admitting while the bound holds (a busy node stays full).
"""

from __future__ import annotations

import math
import threading

ALPHA = 0.2  # weight of the newest measurement in a bucket's moving average


def bucket(rows: int) -> int:
    """The batch-size bucket of `rows` rows: the power of two at or above it."""
    return 1 << max(0, math.ceil(math.log2(max(1, rows))))


class StepTimes:
    """Measured step seconds per batch-size bucket (the decode thread records, submitters read)."""

    def __init__(self) -> None:
        self._by_bucket: dict[int, float] = {}
        self._lock = threading.Lock()

    def record(self, rows: int, seconds: float) -> None:
        if rows <= 0:
            return
        b = bucket(rows)
        with self._lock:
            old = self._by_bucket.get(b)
            self._by_bucket[b] = seconds if old is None else old + ALPHA * (seconds - old)

    def at(self, rows: int) -> float:
        """Expected step seconds with `rows` rows: the bucket's measurement; an unmeasured bucket from the
        nearest measured one (a larger batch's time as it is: an upper bound; a smaller one's scaled by the
        size ratio: an upper bound too, a step costs less than linear in rows); 0.0 before any step."""
        b = bucket(rows)
        with self._lock:
            known = dict(self._by_bucket)
        if b in known:
            return known[b]
        above = [k for k in known if k > b]
        if above:
            return known[min(above)]
        below = [k for k in known if k < b]
        if below:
            k = max(below)
            return known[k] * b / k
        return 0.0

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(self._by_bucket)


def extra_latency_s(wait_s: float, new_tokens: float, steps: StepTimes, join_rows: int, own_rows: int) -> float:
    """Seconds later than alone a request finishes if admitted now: `wait_s` for rows, then `new_tokens`
    decoded at the step time of a `join_rows` batch instead of its own `own_rows` alone."""
    slower = max(0.0, steps.at(join_rows) - steps.at(own_rows))
    return wait_s + new_tokens * slower
