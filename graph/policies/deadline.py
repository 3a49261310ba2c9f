"""The deadline splitter: a request's deadline_ms becomes the generators' time cap plus a share kept for
scoring, sized from recent classifier calls."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel

from graph.params import GenerationOverrides
from graph.policies.schemas import Budget

DEFAULT_SCORE_MS = 150.0  # assumed classifier latency before any call was measured
SLACK_MS = 0.08  # share of the deadline kept for the entry's own work and the HTTP hops
MIN_SLACK_MS = 40.0


@dataclass
class Latencies:
    """Recent classifier call durations (ms); the estimate is a high percentile, so a slow call fits."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=64))

    def record(self, ms: float) -> None:
        self.window.append(ms)

    def score_ms(self) -> float:
        if not self.window:
            return DEFAULT_SCORE_MS
        ordered = sorted(self.window)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@dataclass
class Deadline:
    """A request's clock: when it started, when it must answer, and the scoring share to keep."""

    deadline_ms: int
    score_ms: float
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, deadline_ms: Optional[int], latencies: Latencies) -> Optional["Deadline"]:
        return None if deadline_ms is None else cls(deadline_ms, latencies.score_ms())

    def left_ms(self) -> float:
        return self.deadline_ms - (time.monotonic() - self.started) * 1000.0

    def slack_ms(self) -> float:
        return max(MIN_SLACK_MS, SLACK_MS * self.deadline_ms)

    def generate_cap_ms(self, scoring_calls: int = 1) -> int:
        """The generators' max_time_ms from now: what is left minus the scoring share and the slack
        (at least 1 ms: a generator then stops after its first token, with finish_reason `time`)."""
        return max(1, int(self.left_ms() - scoring_calls * self.score_ms - self.slack_ms()))

    def can_score_more(self, reserve_calls: int = 2) -> bool:
        """Whether an extra classifier call (a pruning round) still fits before the final scoring."""
        return self.left_ms() > reserve_calls * self.score_ms + self.slack_ms()

    def budget(self, generate_ms: int) -> Budget:
        return Budget(deadline_ms=self.deadline_ms, generate_ms=generate_ms, score_ms=int(self.score_ms))

    @staticmethod
    def capped(deadline: Optional["Deadline"], overrides: Optional[BaseModel]) -> Optional[BaseModel]:
        """The request's overrides with max_time_ms at most the generators' share of the deadline."""
        if deadline is None:
            return overrides
        base = overrides if overrides is not None else GenerationOverrides()
        cap = deadline.generate_cap_ms()
        mine = base.model_dump().get("max_time_ms")
        return base.model_copy(update={"max_time_ms": min(cap, mine or cap)})
