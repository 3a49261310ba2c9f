"""Candidates generated as streams, side by side: their text so far, pruning rounds (one batched classifier
call, trailing candidates cancelled by their own request id), and their events for the SSE stream."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from graph.entry.policies.config import Prune
from graph.entry.policies.run import Run, Spec, token_event
from graph.entry.policies.schemas import PruneEvent, PruneRound
from graph.errors import GraphError, NodeFailure
from graph.results import GenerationResult, StreamEvent

log = logging.getLogger("graph")
Item = tuple[int, StreamEvent | BaseException | None]  # None: that candidate's stream is over


@dataclass
class Streams:
    """The live state of a request's candidates while they generate."""

    run: Run
    specs: list[Spec]
    prune: Prune | None = None
    texts: list[str] = field(init=False)
    tokens: list[int] = field(init=False)
    results: list[GenerationResult | None] = field(init=False)
    pruned: dict[str, int] = field(default_factory=dict)  # candidate id -> tokens when cancelled
    rounds: list[PruneRound] = field(default_factory=list)
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        n = len(self.specs)
        self.texts, self.tokens, self.results = [""] * n, [0] * n, [None] * n

    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.specs) if self.results[i] is None and s.id not in self.pruned]

    async def run_all(self) -> list[GenerationResult]:
        """Every candidate to its end (or its cancellation); results in candidate order."""
        tasks = [asyncio.create_task(self._pump(i)) for i in range(len(self.specs))]
        open_streams = len(tasks)
        every = self.prune.every_tokens if self.prune is not None else 0
        next_round = every
        try:
            while open_streams:
                if not await self._take(await self.queue.get()):
                    open_streams -= 1
                    continue
                live = self.live()
                if (
                    every
                    and len(live) > 1
                    and min(self.tokens[i] for i in live) >= next_round
                    and self._time_for_round()
                ):
                    await self._round(live)
                    live = self.live()
                    low = min((self.tokens[i] for i in live), default=0)
                    next_round = (low // every + 1) * every
        finally:
            for t in tasks:
                t.cancel()
        out = [r for r in self.results if r is not None]
        if len(out) != len(self.specs):
            missing = next(s for s, r in zip(self.specs, self.results) if r is None)
            raise NodeFailure(
                f"node {missing.node!r} ended candidate {missing.id}'s stream without a result", node=missing.node
            )
        return out

    async def _pump(self, i: int) -> None:
        spec = self.specs[i]
        try:
            async for ev in self.run.stream(spec):
                await self.queue.put((i, ev))
        except GraphError as exc:
            await self.queue.put((i, exc))
        except Exception as exc:  # a node died mid-stream: say which one
            log.exception("stream of %s from node %s failed", spec.id, spec.node)
            await self.queue.put(
                (i, NodeFailure(f"node {spec.node!r} failed: {type(exc).__name__}: {exc}", node=spec.node))
            )
        finally:
            await self.queue.put((i, None))

    async def _take(self, item: Item) -> bool:
        """Apply one stream item; False when that candidate's stream is over."""
        i, ev = item
        if ev is None:
            return False
        if isinstance(ev, BaseException):
            raise ev
        spec = self.specs[i]
        self.texts[i] += ev.text
        if ev.tokens is not None:
            self.tokens[i] = ev.tokens
        if ev.result is not None:
            self.results[i] = ev.result
            self.tokens[i] = ev.result.completion_tokens
        await self.run.send(token_event(spec.index, spec.node, ev))
        return True

    def _time_for_round(self) -> bool:
        d = self.run.deadline
        return d is None or d.can_score_more()

    async def _round(self, live: list[int]) -> None:
        """Score every live candidate's text so far in one call; cancel those trailing the leader by more
        than the margin (each by its own request id)."""
        assert self.prune is not None
        snapshot = {i: self.tokens[i] for i in live}
        scores = await self.run.score([self.run.scored(self.texts[i]) for i in live])
        by_index = dict(zip(live, (c.score for c in scores)))
        leader = max(live, key=lambda i: (by_index[i], -i))
        while not self.queue.empty():  # catch up with what arrived while scoring (tokens, finished ones)
            item = self.queue.get_nowait()
            if not await self._take(item):
                self.queue.put_nowait(item)  # an end marker: the main loop counts it
                break
        cut = [i for i in live if by_index[i] < by_index[leader] - self.prune.margin and self.results[i] is None]
        for i in cut:
            self.pruned[self.specs[i].id] = self.tokens[i]
        await asyncio.gather(*[self.run.cancel(self.specs[i]) for i in cut])
        ids = {i: self.specs[i].id for i in live}
        rnd = PruneRound(
            round=len(self.rounds) + 1,
            tokens={ids[i]: snapshot[i] for i in live},
            scores={ids[i]: by_index[i] for i in live},
            leader=ids[leader],
            cancelled=[ids[i] for i in cut],
        )
        self.rounds.append(rnd)
        await self.run.send(PruneEvent(**rnd.model_dump()))
