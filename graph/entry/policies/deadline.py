"""The deadline splitter: a request's deadline_ms becomes the generators' time cap, a share kept for scoring and
a share for the generators' overrun past their cap, both sized from recent calls."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pydantic import BaseModel

from graph.entry.policies.schemas import Budget
from graph.params import GenerationOverrides

DEFAULT_SCORE_MS = 150.0  # assumed classifier latency before any call was measured
DEFAULT_OVERRUN_MS = 100.0  # assumed lateness of a capped generator call (last decode step, hops) before any
SLACK_SHARE = 0.04  # share of the deadline kept for the entry's own work
MIN_SLACK_MS = 30.0


MAX_OVERRUN_SHARE = 0.4  # the overrun share never takes more of the deadline than this (the generators keep time)


def _quantile(window: deque[float], q: float, default: float) -> float:
    if not window:
        return default
    ordered = sorted(window)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Latencies:
    """Recent classifier call durations (the 90th percentile of the last 64: a slow call still fits) and
    generator overruns past their cap (the 75th percentile of the last 32: it follows the machine's load
    without one slow burst starving the generators for long)."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    overruns: deque[float] = field(default_factory=lambda: deque(maxlen=32))

    texts: deque[int] = field(default_factory=lambda: deque(maxlen=64))  # texts of each call in `window`

    def record(self, ms: float, texts: int = 1) -> None:
        self.window.append(ms)
        self.texts.append(max(1, texts))

    def record_overrun(self, ms: float) -> None:
        self.overruns.append(max(0.0, ms))

    def score_ms(self) -> float:
        return _quantile(self.window, 0.9, DEFAULT_SCORE_MS)

    def overrun_ms(self) -> float:
        return _quantile(self.overruns, 0.75, DEFAULT_OVERRUN_MS)

    def scoring_reserve_s(self, ahead_texts: int = 0) -> float:
        """Seconds a scored request's scoring may take beyond its alone time: what its generators keep out of
        their max_wait_s, so it is answered within max_wait_s of its alone time, scoring included. The larger of
        what scoring calls take now beyond the fastest (the 90th percentile of the recent calls less their
        minimum) and the `ahead_texts` completions of the scored requests in flight scored first, at the
        lowest time per text a recent call measured (they may all finish at once: a burst's do). 0 before any
        call."""
        if not self.window:
            return 0.0
        loaded = _quantile(self.window, 0.9, DEFAULT_SCORE_MS) - min(self.window)
        per_text = min(ms / n for ms, n in zip(self.window, self.texts))
        return max(0.0, loaded, ahead_texts * per_text) / 1000.0


@dataclass
class Deadline:
    """A request's clock: when it started, when it must answer, and the shares to keep."""

    deadline_ms: int
    score_ms: float
    overrun_ms: float = DEFAULT_OVERRUN_MS
    latencies: Latencies | None = None
    started: float = field(default_factory=time.monotonic)
    cap_ends: float = 0.0  # when the last time cap given to generators runs out (monotonic)

    @classmethod
    def of(cls, deadline_ms: int | None, latencies: Latencies) -> Deadline | None:
        if deadline_ms is None:
            return None
        return cls(deadline_ms, latencies.score_ms(), latencies.overrun_ms(), latencies)

    def left_ms(self) -> float:
        return self.deadline_ms - (time.monotonic() - self.started) * 1000.0

    def slack_ms(self) -> float:
        return max(MIN_SLACK_MS, SLACK_SHARE * self.deadline_ms)

    def reserve_ms(self, scoring_calls: int = 1) -> float:
        """Time kept back from the generators: scoring, their measured overrun, the entry's slack."""
        overrun = min(self.overrun_ms, MAX_OVERRUN_SHARE * self.deadline_ms)
        return scoring_calls * self.score_ms + overrun + self.slack_ms()

    def generate_cap_ms(self, scoring_calls: int = 1) -> int:
        """The generators' max_time_ms from now: what is left minus the reserve (at least 1 ms: a generator
        then stops after its first token, with finish_reason `time`)."""
        cap = max(1, int(self.left_ms() - self.reserve_ms(scoring_calls)))
        self.cap_ends = time.monotonic() + cap / 1000.0
        return cap

    def generated(self) -> None:
        """The capped generators have answered: record how late past the cap (the overrun share learns it)."""
        if self.latencies is not None and self.cap_ends:
            self.latencies.record_overrun((time.monotonic() - self.cap_ends) * 1000.0)

    def can_score_more(self, reserve_calls: int = 2) -> bool:
        """Whether an extra classifier call (a pruning round) still fits before the final scoring."""
        return self.left_ms() > self.reserve_ms(reserve_calls)

    def budget(self, generate_ms: int) -> Budget:
        return Budget(
            deadline_ms=self.deadline_ms,
            generate_ms=generate_ms,
            score_ms=int(self.score_ms),
            overrun_ms=int(self.overrun_ms),
        )

    @staticmethod
    def capped(deadline: Deadline | None, overrides: BaseModel | None) -> BaseModel | None:
        """The request's overrides with max_time_ms at most the generators' share of the deadline."""
        if deadline is None:
            return overrides
        base = overrides if overrides is not None else GenerationOverrides()
        cap = deadline.generate_cap_ms()
        mine = base.model_dump().get("max_time_ms")
        return base.model_copy(update={"max_time_ms": min(cap, mine or cap)})
