"""Admission by expected completion: measured step and prefill times, and the plan a node admits or refuses by.

A node measures at warm-up (graph/engine/warmup.py) the time of one decode step at batch sizes 1, 2, 4, ...
up to its max_batch_size, and of a prefill of 16, 128, 512 ... prompt tokens. `Curve` keeps such a table,
interpolates it linearly, and learns from traffic: every real step is compared with the table and the ratio
(measured / table) is kept per batch-size bucket, the median of its recent steps, so a machine busier (or a
context longer) than at warm-up raises the estimates of the batch sizes it runs, and the table gives the
shape between them. Without a table (a warm-up that failed), traffic fills the curve bucket by bucket.

`plan` runs the node's schedule forward in time: rows already running decode their expected tokens left,
waiting requests join in order as rows and KV memory (`Fits`: the KV budget) free up, each join paying
its prefill, and every step costs the curve's time for the batch it runs. A new request's finish in that
plan, against its alone time (its prefill, then its tokens one row at a time), is how much later than
alone it would be answered if admitted now. The scheduler refuses it (429 + Retry-After) when that is
above max_wait_s, or when it would push a request admitted earlier past the bound that one was promised.
So "admitted => answered within max_wait_s of its alone time, refused => it could not have been" holds as
far as the measured times do.
"""

from __future__ import annotations

import heapq
import math
import statistics
import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

WINDOW = 16  # recent traffic measurements kept per bucket: their median is the bucket's (one slow step, a
# new shape's first call or a neighbour's burst, does not swing it; a lasting change moves it in 9 steps)


def bucket(rows: int) -> int:
    """The bucket of `rows` (batch rows or prompt tokens): the power of two at or above it."""
    return 1 << max(0, math.ceil(math.log2(max(1, rows))))


class Curve:
    """Seconds by size (batch rows for decode steps, prompt tokens for prefills): a table measured at
    warm-up, interpolated linearly, scaled per bucket by what traffic measured (the decode thread
    records, submitters read)."""

    def __init__(self) -> None:
        self._table: dict[int, float] = {}  # size -> seconds, measured at warm-up
        self._ratios: dict[int, deque[float]] = {}  # bucket -> recent measured / table
        self._ratio: dict[int, float] = {}  # bucket -> their median
        self._times: dict[int, deque[float]] = {}  # bucket -> recent measured seconds (used with no table)
        self._seen: dict[int, float] = {}  # bucket -> their median
        self._lock = threading.Lock()

    def seed(self, table: dict[int, float]) -> None:
        """The warm-up measurements (size -> seconds); traffic's corrections start again from 1."""
        with self._lock:
            self._table = {k: v for k, v in sorted(table.items()) if k > 0 and v > 0}
            self._ratios.clear()
            self._ratio.clear()

    def table(self) -> dict[int, float]:
        with self._lock:
            return dict(self._table)

    def record(self, size: int, seconds: float) -> None:
        if size <= 0 or seconds <= 0:
            return
        b = bucket(size)
        with self._lock:
            base = _interpolate(self._table, size)
            if base > 0:
                ratios = self._ratios.setdefault(b, deque(maxlen=WINDOW))
                ratios.append(seconds / base)
                self._ratio[b] = statistics.median(ratios)
            times = self._times.setdefault(b, deque(maxlen=WINDOW))
            times.append(seconds)
            self._seen[b] = statistics.median(times)

    def at(self, size: int) -> float:
        """Expected seconds at `size`. With a table: the table's value there times the traffic ratio of
        its bucket (or of the nearest bucket traffic measured; 1 before any). Without one: the bucket's
        measurement; an unmeasured bucket takes a larger measured one's time (an upper bound), one bucket
        past the largest measured that one's time, further out grown in proportion. 0.0 with nothing."""
        b = bucket(size)
        with self._lock:
            if self._table:
                return _interpolate(self._table, size) * _nearest(self._ratio, b, 1.0)
            known = dict(self._seen)
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
        """The current estimate at each table size (or each bucket traffic measured)."""
        with self._lock:
            sizes = list(self._table) or list(self._seen)
        return {k: self.at(k) for k in sorted(sizes)}


class StepTimes(Curve):
    """Seconds of one decode step (forward and sampling) by batch rows."""


class PrefillTimes(Curve):
    """Seconds of one prefill by prompt tokens (all prompts of the step together)."""


def _interpolate(table: dict[int, float], size: int) -> float:
    """Linear between the table's sizes; below the first, its value; past the last, on the slope of the
    last two (at least in proportion to the size, for a table of one point)."""
    if not table:
        return 0.0
    keys = list(table)
    if size <= keys[0]:
        return table[keys[0]]
    for lo, hi in zip(keys, keys[1:]):
        if size <= hi:
            return table[lo] + (table[hi] - table[lo]) * (size - lo) / (hi - lo)
    last = keys[-1]
    if len(keys) == 1:
        return table[last] * size / last
    prev = keys[-2]
    slope = max(0.0, (table[last] - table[prev]) / (last - prev))
    return table[last] + slope * (size - last)


def _nearest(values: dict[int, float], b: int, default: float) -> float:
    if b in values:
        return values[b]
    if not values:
        return default
    return values[min(values, key=lambda k: (abs(math.log2(k) - math.log2(b)), -k))]


def extra_latency_s(wait_s: float, new_tokens: float, steps: Curve, join_rows: int, own_rows: int) -> float:
    """Seconds later than alone a request finishes if admitted now, in the simplest case: `wait_s` for
    rows, then `new_tokens` decoded at the step time of a `join_rows` batch instead of its own `own_rows`."""
    slower = max(0.0, steps.at(join_rows) - steps.at(own_rows))
    return wait_s + new_tokens * slower


# -- the schedule, run forward --------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """One request in the plan: `rows` rows, `prompt` tokens still to prefill (0 once running), `tokens`
    new tokens still to decode (the first comes from the prefill), `span` KV positions its rows reserve."""

    key: Hashable
    rows: int
    prompt: int
    tokens: int
    span: int


# (rows, longest span) -> whether that batch's KV cache fits the node's budget
Fits = Callable[[int, int], bool]


def plan(
    running: Sequence[Work],
    waiting: Sequence[Work],
    *,
    max_rows: int,
    fits: Fits,
    steps: Curve,
    prefills: Curve,
) -> dict[Hashable, float]:
    """Seconds from now until each request's last row finishes, if the node runs `running` and then
    admits `waiting` in order as rows and KV memory free up (an empty batch admits anything: a request
    too big for the budget alone was refused at submit). A join costs the prefill of its prompt tokens;
    each decode step the step time of the batch it runs. Requests that never fit are left out."""
    t = 0.0
    clock = 0  # decode steps run so far
    seq = 0
    heap: list[tuple[int, int, Hashable, int, int]] = []  # (finishing step, order, key, rows, span)
    rows = 0
    spans: Counter[int] = Counter()
    finish: dict[Hashable, float] = {}
    queue = deque(waiting)

    def push(w: Work, left: int) -> None:
        nonlocal seq, rows
        heapq.heappush(heap, (clock + max(0, left), seq, w.key, w.rows, w.span))
        seq += 1
        rows += w.rows
        spans[w.span] += w.rows

    def admit() -> None:
        nonlocal t
        tokens = 0
        while queue:
            w = queue[0]
            span = max(w.span, max(spans) if spans else 0)
            if rows and (rows + w.rows > max_rows or not fits(rows + w.rows, span)):
                break
            queue.popleft()
            push(w, w.tokens - 1)  # the prefill gives the first token
            tokens += w.prompt
        if tokens:
            t += prefills.at(tokens)

    for w in running:
        push(w, w.tokens)
    admit()
    while heap:
        at = heap[0][0]
        t += (at - clock) * steps.at(rows)
        clock = at
        while heap and heap[0][0] == clock:
            _, _, key, n, span = heapq.heappop(heap)
            finish[key] = max(finish.get(key, 0.0), t)
            rows -= n
            spans[span] -= n
            if not spans[span]:
                del spans[span]
        admit()
    return finish


def alone_s(w: Work, *, steps: Curve, prefills: Curve) -> float:
    """Seconds `w` takes on an idle node: its prefill, then its tokens after the first at its own batch size."""
    return prefills.at(w.prompt) + max(0, w.tokens - 1) * steps.at(w.rows)
