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
far as the measured times do. `plan_lanes` runs several engines whose steps take turns (a hybrid node's two
sides) in one plan; the scheduler multiplies the plan's times by its admission_margin (shared cores).
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
    records, submitters read). `reach`: how many buckets away a traffic ratio still applies (None: any)."""

    reach: int | None = None

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
                return _interpolate(self._table, size) * _nearest(self._ratio, b, 1.0, self.reach)
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
    """Seconds of one prefill by prompt tokens (all prompts of the step together). A traffic ratio applies two
    buckets either side at most: what short prompts measured under load (their fixed costs) does not scale an
    8,000-token prefill (measured: a served node's onnx side refused one, scaled by its short prompts' ratio,
    and its torch side read it between the steps)."""

    reach = 2


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


def _nearest(values: dict[int, float], b: int, default: float, reach: int | None = None) -> float:
    if b in values:
        return values[b]
    near = {k: v for k, v in values.items() if reach is None or abs(math.log2(k) - math.log2(b)) <= reach}
    if not near:
        return default
    return near[min(near, key=lambda k: (abs(math.log2(k) - math.log2(b)), -k))]


def extra_latency_s(wait_s: float, new_tokens: float, steps: Curve, join_rows: int, own_rows: int) -> float:
    """Seconds later than alone a request finishes if admitted now, in the simplest case: `wait_s` for
    rows, then `new_tokens` decoded at the step time of a `join_rows` batch instead of its own `own_rows`."""
    slower = max(0.0, steps.at(join_rows) - steps.at(own_rows))
    return wait_s + new_tokens * slower


# -- the schedule, run forward --------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """One request in the plan: `rows` rows, `prompt` tokens still to prefill (0 once running), `tokens`
    new tokens still to decode (the first comes from the prefill), `span` KV positions its rows reserve,
    `aside` prompt tokens prefilled beside the batch (the prefill lane: they delay this request only)."""

    key: Hashable
    rows: int
    prompt: int
    tokens: int
    span: int
    aside: int = 0


# (rows, longest span) -> whether that batch's KV cache fits the node's budget
Fits = Callable[[int, int], bool]


@dataclass
class Lane:
    """One engine's part of a plan: its rows running and requests waiting (in the order it admits them), its
    batch limit, KV budget and measured times. A hybrid node (graph/engine/hybrid.py) plans two lanes whose
    steps take turns."""

    running: Sequence[Work]
    waiting: Sequence[Work]
    max_rows: int
    fits: Fits
    steps: Curve
    prefills: Curve


def plan(
    running: Sequence[Work],
    waiting: Sequence[Work],
    *,
    max_rows: int,
    fits: Fits,
    steps: Curve,
    prefills: Curve,
    beside: Sequence[Lane] = (),
) -> dict[Hashable, float]:
    """Seconds from now until each request's last row finishes, if the node runs `running` and then
    admits `waiting` in order as rows and KV memory free up (an empty batch admits anything: a request
    too big for the budget alone was refused at submit). A join costs the prefill of its prompt tokens;
    each decode step the step time of the batch it runs. Requests that never fit are left out.
    `beside`: other engines whose steps take turns with this one's (a hybrid node's other side): each round
    of steps costs every busy lane's step at its own batch, and their requests are in the result too."""
    return plan_lanes([Lane(running, waiting, max_rows, fits, steps, prefills), *beside])


class _LaneRun:
    """A lane's state while the plan runs forward."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.heap: list[tuple[int, int, Hashable, int, int]] = []  # (finishing round, order, key, rows, span)
        self.rows = 0
        self.spans: Counter[int] = Counter()
        self.queue = deque(lane.waiting)
        self.seq = 0
        self.aside: dict[Hashable, float] = {}  # key -> seconds of its prompt prefilled beside the batch

    def push(self, w: Work, at: int) -> None:
        heapq.heappush(self.heap, (at, self.seq, w.key, w.rows, w.span))
        self.seq += 1
        self.rows += w.rows
        self.spans[w.span] += w.rows

    def admit(self, clock: int) -> float:
        """Join the waiting requests that fit now; the seconds of their prefill."""
        tokens = 0
        while self.queue:
            w = self.queue[0]
            span = max(w.span, max(self.spans) if self.spans else 0)
            if self.rows and (self.rows + w.rows > self.lane.max_rows or not self.lane.fits(self.rows + w.rows, span)):
                break
            self.queue.popleft()
            self.push(w, clock + max(0, w.tokens - 1))  # the prefill gives the first token
            tokens += w.prompt
            if w.aside:
                self.aside[w.key] = self.lane.prefills.at(w.aside)
        return self.lane.prefills.at(tokens) if tokens else 0.0

    def finish(self, clock: int, t: float, out: dict[Hashable, float]) -> None:
        while self.heap and self.heap[0][0] == clock:
            _, _, key, n, span = heapq.heappop(self.heap)
            out[key] = max(out.get(key, 0.0), t + self.aside.get(key, 0.0))
            self.rows -= n
            self.spans[span] -= n
            if not self.spans[span]:
                del self.spans[span]


def plan_lanes(lanes: Sequence[Lane]) -> dict[Hashable, float]:
    """`plan` over engines whose decode steps take turns (one after the other, each on the whole machine): in
    each round every lane with rows runs one step of its batch, so a round costs the sum of their step
    times, and each lane admits its own waiting requests as its rows and KV memory free up (a join costs that
    lane's prefill). Seconds from now until each request of every lane finishes."""
    runs = [_LaneRun(lane) for lane in lanes]
    t = 0.0
    clock = 0  # rounds of steps run so far
    finish: dict[Hashable, float] = {}
    for r in runs:
        for w in r.lane.running:
            r.push(w, max(0, w.tokens))
        t += r.admit(clock)
    while any(r.heap for r in runs):
        at = min(r.heap[0][0] for r in runs if r.heap)
        t += (at - clock) * sum(r.lane.steps.at(r.rows) for r in runs if r.rows)
        clock = at
        for r in runs:
            r.finish(clock, t, finish)
        for r in runs:
            t += r.admit(clock)
    return finish


def alone_s(w: Work, *, steps: Curve, prefills: Curve) -> float:
    """Seconds `w` takes on an idle node: its prefill, then its tokens after the first at its own batch size."""
    return prefills.at(w.prompt + w.aside) + max(0, w.tokens - 1) * steps.at(w.rows)
