"""A generator node on two engines: each new request starts on the one that is faster at the batch it would join.

    engine = HybridEngine(small, large, name="smollm2")   # two GenerationEngines over the same model
    engine.warmup()                                       # measures the crossover (unless given)
    results = await engine.generate("I have an idea!", GenerationParams(max_new_tokens=32))

Why two: no single runtime is fastest at every batch size. On a 2-core Intel Xeon with AMX, llama.cpp's
quantized kernels decode one SmolLM2 stream about 3x faster than torch bfloat16, while torch bfloat16
makes about 3.6x llama.cpp's tokens/s with 64 rows (issue 31). `small` is the runtime for few rows,
`large` the one for many; each has its own scheduler, runner and KV cache, and the node's API (generate,
stream, open_stream, cancel, stats, admission's Overloaded) is the same as one GenerationEngine's.

Routing. The node's rows are those of both engines: running, queued, and the new request's (with the other
generate() calls of the same event-loop turn: a burst is routed as a whole). A request
starts on `large` when that count is at or above the crossover, or was within the last `hold_s` seconds, else on
`small`; a side whose batch is full while the other has room gives way to it, and a side that refuses (Overloaded)
passes the request to the other before the refusal reaches the caller. Rows never migrate: a request stays where it
started. The hold is for sustained load arriving in waves (clients that send again when answered): between two waves
the node's rows drop to none for the time the entry takes to score and answer, and without it the next wave's first
rows started on `small` again and the two sides took turns for the whole wave (a third of the requests on onnx int8
at 32 clients; torch bfloat16 alone made 1.3-1.5x the hybrid's requests/s there, docs/performance.md).

The crossover is measured at warm-up, not assumed: each engine decodes bursts of 1, 2, 4, 8 ... rows, twice,
the sides alternating (the median of its own scheduler's measured step times, graph/engine/admission.py), and
the crossover is the batch size where
the large engine's step becomes shorter than the small one's (more tokens/s at the same rows), interpolated
between the two measured sizes around it. `crossover_rows` (config) fixes it instead, and so does `runtime: {backend:
auto}` where graph/models/runtimes.py's table picks a hybrid (its crossover from the graph benchmark: the short
bursts misrank sides whose step grows differently with the context, onnx int8 against torch bfloat16 on AMX).

Sharing the cores: the two engines' decode steps take turns under one FIFO lock (the scheduler's
`step_lock`), so each step has every core to itself and, with both sides busy, they alternate. Their forward
passes also run on one compute thread (graph/engine/runners/pinned_runner.py, built by
graph/models/node_engine.py), so torch and ggml share one OpenMP pool; each decode thread keeps its own
torch work (sampling) on one thread.

Admission. Because the sides take turns, each side admits by one plan of both (its scheduler's `beside` is the
other side's `lane_now`, graph/engine/admission.py `plan_lanes`): a request on one side is refused if it would
finish past its bound or push a request admitted on its side past the time promised to it; its alone time is
the faster side's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Literal

from graph.chat_format import ChatMessage, ChatPrompt, FittedChat
from graph.engine.admission import bucket
from graph.engine.api import NodeEngine
from graph.engine.generation import GenerationEngine, RequestStream
from graph.errors import Overloaded
from graph.params import GenerationParams
from graph.results import GenerationResult, StreamEvent

log = logging.getLogger(__name__)

Side = Literal["small", "large"]
# Rows per warm-up burst (powers of two: each is one bucket of the scheduler's step times), up to the node's
# max_batch_size; the small engine stops being measured once the large one is faster.
BURSTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BURST_TOKENS = 6  # new tokens per warm-up row: 6 steps per burst
BURST_REPEATS = 2  # bursts per side and size, alternating sides; the median of all their steps is taken
BURST_PROMPT = 8  # prompt tokens per warm-up row (below the prefix cache's block: nothing is kept)


class TurnLock:
    """A FIFO lock: threads get it in the order they asked for it, so two busy decode threads alternate
    (a plain lock lets the thread that just released it take it again at once)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0  # the next ticket handed out
        self._serving = 0  # the ticket that holds the lock

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class SideStream:
    """A request's stream on one side; counts its rows out of the side's load as their final events arrive
    (the rest when it is closed). aclose() cancels the request, as RequestStream's does."""

    def __init__(self, inner: RequestStream, rows: int, done) -> None:
        self._inner, self._left, self._done = inner, rows, done

    def __aiter__(self) -> SideStream:
        return self

    async def __anext__(self) -> StreamEvent:
        event = await self._inner.__anext__()
        if event.result is not None and self._left:
            self._left -= 1
            self._done(1)
        return event

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._left:
                self._done(self._left)
                self._left = 0


class HybridEngine(NodeEngine):
    """Two GenerationEngines of one model behind one engine's API (graph/engine/api.py), routing each new
    request by load."""

    def __init__(
        self,
        small: GenerationEngine,
        large: GenerationEngine,
        *,
        name: str,
        crossover_rows: int | None = None,
        crossover_source: str | None = None,
        serialize_steps: bool = True,
        max_new_tokens_limit: int = 0,
        on_close: Callable[[], None] | None = None,
        hold_s: float = 0.0,
    ) -> None:
        """`small`, `large`: engines over the same model and tokenizer (not started). `crossover_rows`: node
        rows from which new requests start on `large`; None = measured at warm-up. `crossover_source`: where a given
        crossover comes from, as the start-up line says it (default "config"). `serialize_steps`: the two
        engines' steps take turns (one TurnLock); False lets one side's sampling overlap the other's forward
        (scripts/bench_node.py measures both: hybrid, hybrid-concurrent).
        Both sides take the tighter prompt limit: the prompts of up to `max_new_tokens_limit` new tokens that one
        side admits, the other does too (a request is a 400 or not whatever the load); with one context on both
        sides, a request's limit is that context less its own max_new_tokens, as on one engine. `on_close`: called after
        both engines are closed (graph/models/node_engine.py stops their shared compute thread there). `hold_s`: new
        requests keep starting on `large` for this long after the node's rows were last at or above the crossover."""
        self.small, self.large = small, large
        self.sides: dict[Side, GenerationEngine] = {"small": small, "large": large}
        self.name = name
        self.tokenizer = small.tokenizer
        self.chat_template = small.chat_template
        self.max_batch_size = small.max_batch_size
        contexts = {c for c in (small._runner.max_positions, large._runner.max_positions) if c}
        # One context on both sides (the same model): each side's own checks (the context less the request's
        # max_new_tokens) decide alike, so the prompt limit stays the whole context's. Two contexts: the tighter
        # less `max_new_tokens_limit`, so no prompt one side admits is refused by the other.
        caps = [min(contexts) - max_new_tokens_limit] if len(contexts) > 1 else []
        self.max_prompt_tokens = max(1, min(small.max_prompt_tokens, large.max_prompt_tokens, *caps))
        for engine in (small, large):
            engine.max_prompt_tokens = engine._scheduler.max_prompt_tokens = self.max_prompt_tokens
        self.crossover_rows: int | None = crossover_rows
        self.crossover_source = "not measured yet" if crossover_rows is None else crossover_source or "config"
        # batch rows -> (small's step ms, large's step ms) measured at warm-up
        self.measured: dict[int, tuple[float, float]] = {}
        self.serialize_steps = serialize_steps
        if serialize_steps:
            lock = TurnLock()
            small._scheduler.step_lock = lock
            large._scheduler.step_lock = lock
            # each side's admission plans its steps with the other's in between (they take turns)
            small._scheduler.beside = large._scheduler.lane_now
            large._scheduler.beside = small._scheduler.lane_now
        self._rows: dict[Side, int] = {"small": 0, "large": 0}  # rows submitted to each side and not done
        self._routed: dict[Side, int] = {"small": 0, "large": 0}  # requests started on each side
        self._load_lock = threading.Lock()
        self._pending = 0  # rows of generate() calls waiting for the end of their event-loop turn
        self.hold_s = hold_s
        self._high_at = -math.inf  # time.monotonic() when the node's rows were last at or above the crossover
        self._turn: asyncio.Future[None] | None = None
        self._on_close = on_close

    @property
    def runtime_name(self) -> str:
        """What the node's start-up line and /node_stats say: both runtimes and the crossover."""
        cross = "not measured" if self.crossover_rows is None else f"{self.crossover_rows} rows"
        if self.crossover_rows is not None and self.crossover_rows > self.max_batch_size:
            cross += " (large never faster up to max_batch_size)"
        return (
            f"hybrid (small: {self.small.runtime_name}; large: {self.large.runtime_name}; "
            f"crossover {cross}, {self.crossover_source})"
        )

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.small.start()
        self.large.start()

    def close(self) -> None:
        self.small.close()
        self.large.close()
        if self._on_close is not None:
            self._on_close()

    def warmup(self, timeout: float = 120.0) -> bool:
        """Start both engines, wait for their warm-ups, then measure the crossover (unless configured).
        False if a warm-up took longer than `timeout` seconds."""
        ready = self.small.warmup(timeout)
        ready = self.large.warmup(timeout) and ready
        if self.crossover_rows is None:
            self.crossover_rows = self.measure_crossover()
            self.crossover_source = "measured at warm-up"
            log.warning("%s: %s; step ms by rows (small, large): %s", self.name, self.runtime_name, self.measured)
        return ready

    # -- the crossover -------------------------------------------------------------------------------
    def measure_crossover(self) -> int:
        """The node rows from which `large` decodes more tokens/s than `small`: bursts of 1, 2, 4 ... rows on
        each engine alone (greedy, end-of-sequence masked so every row runs BURST_TOKENS steps), each side's
        step time the median its scheduler measured for that batch size; interpolated between the last size
        where small was faster and the first where large was. max_batch_size + 1 if large never was."""
        sizes = [b for b in BURSTS if b <= self.max_batch_size]
        result: list[int] = []
        # Its own thread and event loop: warmup() may be called from inside a running loop.
        thread = threading.Thread(target=lambda: result.append(asyncio.run(self._measure(sizes))), daemon=True)
        thread.start()
        thread.join()
        for engine in (self.small, self.large):  # the warm-up's requests are not the node's traffic
            counters = engine._scheduler.counters
            for key in counters:
                counters[key] = 0
        return result[0] if result else self.max_batch_size + 1

    async def _measure(self, sizes: list[int]) -> int:
        before: tuple[int, float] | None = None  # (rows, large ms - small ms) at the last size small won
        for rows in sizes:
            small_s = large_s = 0.0
            for _ in range(BURST_REPEATS):  # interleaved: a neighbour's load falls on both sides alike
                small_s = await self._burst(self.small, rows)
                large_s = await self._burst(self.large, rows)
            self.measured[rows] = (round(small_s * 1000, 2), round(large_s * 1000, 2))
            gap = large_s - small_s
            if gap < 0:  # large's step is shorter at the same rows: more tokens/s
                if before is None:
                    return rows
                b1, g1 = before
                cross = b1 + g1 * (rows - b1) / (g1 - gap)
                return max(b1 + 1, min(rows, math.ceil(cross)))
            before = (rows, gap)
        return self.max_batch_size + 1

    async def _burst(self, engine: GenerationEngine, rows: int) -> float:
        """Median step seconds of `engine` decoding `rows` rows together: its scheduler's measurement, the
        median of the recent steps at that batch size (this burst's and the earlier ones')."""
        sched = engine._scheduler
        vocab = len(engine.tokenizer)
        mask = {int(t): -100.0 for t in sched.eos_ids if 0 <= int(t) < vocab}
        params = GenerationParams(max_new_tokens=BURST_TOKENS, logit_bias=mask)
        prompts = [
            [100 + (i * BURST_PROMPT + j) % max(1, vocab - 100) for j in range(BURST_PROMPT)] for i in range(rows)
        ]
        await asyncio.gather(*(engine.generate(p, params) for p in prompts))
        return sched.step_times.snapshot().get(bucket(rows), 0.0)

    # -- routing -------------------------------------------------------------------------------------
    def route(self, rows: int) -> tuple[Side, Side]:
        """(first choice, fallback) for a request of `rows` rows, from the node's rows now (both sides' running
        and queued rows, and those of requests sent in the same event-loop turn) and the crossover."""
        cross = self._cross()
        with self._load_lock:
            load = dict(self._rows)
            pending = self._pending
            high_at = self._high_at
        held = time.monotonic() - high_at < self.hold_s
        first: Side = "large" if load["small"] + load["large"] + pending + rows >= cross or held else "small"
        other: Side = "small" if first == "large" else "large"
        if load[first] + rows > self.max_batch_size >= load[other] + rows:
            first, other = other, first  # its batch is full and the other has room: start there now
        return first, other

    async def _same_turn(self, rows: int) -> None:
        """Wait for the end of this event-loop turn with `rows` counted as pending: requests sent together (a
        burst of calls gathered at once, a multi-prompt /generate) are routed knowing of each other, so a
        burst starts on the large side as a whole instead of its first rows on the small one."""
        loop = asyncio.get_running_loop()
        turn = self._turn
        if turn is None or turn.done() or turn.get_loop() is not loop:
            turn = self._turn = loop.create_future()
            loop.call_soon(_settle, turn)
        with self._load_lock:
            self._pending += rows
        try:
            await asyncio.shield(turn)  # one waiter cancelled must not cancel the others' turn
        finally:
            with self._load_lock:
                self._pending -= rows

    def _cross(self) -> int:
        return self.crossover_rows if self.crossover_rows is not None else self.max_batch_size + 1

    def _add(self, side: Side, rows: int) -> None:
        with self._load_lock:
            self._rows[side] += rows
            self._routed[side] += 1
            if self._rows["small"] + self._rows["large"] >= self._cross():
                self._high_at = time.monotonic()

    def _done(self, side: Side, rows: int) -> None:
        with self._load_lock:
            if self._rows["small"] + self._rows["large"] >= self._cross():
                self._high_at = time.monotonic()  # the last moment at the crossover: the hold counts from here
            self._rows[side] -= rows

    # -- requests (the API of GenerationEngine) --------------------------------------------------------
    async def generate(
        self,
        prompt: str | list[int] | ChatPrompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> list[GenerationResult]:
        """GenerationEngine.generate on the side the request starts on (routed at the end of this event-loop
        turn, with the other requests sent in it); a side's refusal passes it to the other, both sides' refusal
        raises the first side's."""
        n = params.num_return_sequences
        await self._same_turn(n)
        refused: Overloaded | None = None
        for side in self.route(n):
            self._add(side, n)
            try:
                return await self.sides[side].generate(
                    prompt, params, request_id=request_id, scope=scope, reserve_s=reserve_s
                )
            except Overloaded as refusal:  # raised at submission, before anything was queued
                refused = refused or refusal
                log.info("%s: the %s side refused a request (%s); the other side is asked", self.name, side, refusal)
            finally:
                self._done(side, n)
        assert refused is not None
        raise refused

    def open_stream(
        self,
        prompt: str | list[int] | ChatPrompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        interval_ms: int = 0,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> SideStream:
        """GenerationEngine.open_stream on the side the request starts on: a refusal by both sides raises here
        (the first side's)."""
        n = params.num_return_sequences
        refused: Overloaded | None = None
        for side in self.route(n):
            try:
                inner = self.sides[side].open_stream(
                    prompt, params, request_id=request_id, interval_ms=interval_ms, scope=scope, reserve_s=reserve_s
                )
            except Overloaded as refusal:
                refused = refused or refusal
                log.info("%s: the %s side refused a stream (%s); the other side is asked", self.name, side, refusal)
                continue
            self._add(side, n)
            return SideStream(inner, n, functools.partial(self._done, side))
        assert refused is not None
        raise refused

    def cancel(self, request_id: str) -> bool:
        """Cancel the request's rows on whichever side holds them."""
        on_small = self.small.cancel(request_id)
        return self.large.cancel(request_id) or on_small

    def count_tokens(self, text: str, template: bool = True) -> int:
        return self.small.count_tokens(text, template)  # one tokenizer on both sides

    def prompt_limit(self, params: GenerationParams) -> int:
        """Prompt tokens a request may send: the tighter of the two sides' limits."""
        return min(self.small.prompt_limit(params), self.large.prompt_limit(params))

    def fit_chat(self, messages: list[ChatMessage], params: GenerationParams) -> FittedChat:
        tight = min(self.sides.values(), key=lambda e: e.prompt_limit(params))
        return tight.fit_chat(messages, params)

    def stats(self) -> dict[str, int | float | str]:
        """Both engines' counters and gauges added up (step_ms and plan_ratio: the larger of the two, as each
        waits for the other's turn), plus `small_*`/`large_*` per side, `hybrid_crossover_rows` and the runtimes."""
        each = {side: engine.stats() for side, engine in self.sides.items()}
        small, large = each["small"], each["large"]
        out: dict[str, int | float | str] = {k: small[k] + large[k] for k in small if k in large}
        out["step_ms"] = max(small.get("step_ms", 0.0), large.get("step_ms", 0.0))
        out["plan_ratio"] = max(small.get("plan_ratio", 0.0), large.get("plan_ratio", 0.0))
        for side, stats in each.items():
            for key in (
                "active_rows",
                "queued_requests",
                "requests_total",
                "generated_tokens_total",
                "step_ms",
                "admitted_late_total",
                "plan_ratio",
            ):
                out[f"{side}_{key}"] = stats.get(key, 0)
        out["hybrid_crossover_rows"] = self.crossover_rows or 0
        out["hybrid_hold_s"] = self.hold_s
        out["hybrid_crossover_source"] = self.crossover_source
        out["runtime"] = "hybrid"
        out["small_runtime"] = self.small.runtime_name
        out["large_runtime"] = self.large.runtime_name
        return out


def _settle(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)
