"""The decode loop of a generator node: continuous batching of rows on one background thread.

Each step: drop cancelled or timed-out rows; admit waiting requests while rows are free (one
batched prefill for all of them; their KV rows then join the running batch in place); run one
forward for every active row with only its last token; choose a token per row with that row's
parameters; turn tokens into text; hand finished results and, for streams, text fragments to each
request's asyncio queue (one thread-safe call per event loop per step).

Reliability (issue #13):
- Row isolation: a row whose sampling fails (or whose scores are not finite) fails alone, with a
  NodeFailure for its request; the rest of the batch goes on. Only a failed forward fails the batch.
- Fairness: waiting requests are admitted round-robin by request id (the engine requests of one
  multi-prompt call share an id), and one id holds at most `max_request_share` of the batch rows,
  so a large call never takes every row from the small ones that come after it.
- Shedding: with `max_wait_s`, a request that would finish more than that bound later than alone, or
  would push a request admitted earlier past its bound, gets Overloaded at once: the schedule is run
  forward on step and prefill times measured at warm-up per batch size and prompt length and corrected by
  traffic, rows already running and KV memory counted (graph/engine/admission.py, graph/engine/warmup.py).
- Memory: `max_kv_mb` bounds the KV cache admission may build up; after a second idle the decode
  thread returns freed heap memory to the OS (glibc malloc_trim; graph/memory.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from graph.engine.admission import Lane, PrefillTimes, StepTimes, Work, alone_s, plan
from graph.engine.chunk_budget import PREFILL_STEP_SHARE, ChunkSizer
from graph.engine.detok import IncrementalDetokenizer, StopMatcher
from graph.engine.grammar import RowGrammar
from graph.engine.kv.prefix_cache import Hit, PrefixCache
from graph.engine.runners.base import RowCache, Runner
from graph.engine.runners.torch_runner import release_openmp_pool
from graph.engine.sampling import BatchSampler, RowSampling, StepOutput
from graph.engine.spec.ngram import NgramDrafter
from graph.engine.spec.verify import Speculation
from graph.engine.warmup import Table, measure
from graph.errors import InvalidRequest, NodeFailure, Overloaded
from graph.memory import default_kv_budget, malloc_trim
from graph.params import GenerationParams
from graph.results import FinishReason, GenerationResult, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)

# Padded prompt tokens prefilled in one step at most (one request is always admitted): bounds how
# long running rows wait while newcomers are prefilled.
PREFILL_TOKEN_BUDGET = 4096
# Columns a cache buffer keeps free on the right when it is (re)allocated.
RIGHT_ROOM = 256
# Prompt columns a new batch cache plans for on the left (the torch layout right-aligns rows): a
# longer prompt moves the batch into a wider buffer when it joins, so rows never carry context-sized buffers.
PLANNED_PROMPT = 512
# A prompt longer than this is prefilled this many tokens per step, between the running rows' decode
# steps (runners with chunked_prefill), so their streams keep flowing while it is read.
CHUNK_TOKENS = 512
# Idle this long (no rows, nothing waiting): give freed heap memory back to the OS once.
IDLE_TRIM_S = 1.0


class Request:
    """One submitted prompt: its rows, its consumer's event loop and queue, its state.

    The queue receives `(index, text, result_or_None)` tuples, or an exception that ends the request.
    """

    def __init__(
        self,
        rid: str,
        prompt_ids: list[int],
        params: GenerationParams,
        *,
        streaming: bool,
        decode,
        prompt_messages: int | None = None,
        grammars: Sequence[RowGrammar | None] = (),
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> None:
        self.id = rid
        self.scope = scope  # whose kept prompts this one may start from (the caller's API key)
        # seconds of the caller's own work after this node answers (the entry's scoring): taken out of max_wait_s
        self.reserve_s = max(0.0, reserve_s)
        self.looked_up = False  # the kept prompts were searched for its prefix
        self.hit: Hit | None = None
        self.prompt_ids = prompt_ids
        self.prompt_messages = prompt_messages  # a chat prompt's messages kept (reported in results)
        self.params = params
        self.streaming = streaming
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        now = time.monotonic()
        self.promise: float | None = None  # when admission expects it answered at the latest (max_wait_s)
        self.planned: float | None = None  # when admission's plan expected it answered
        self.submitted = now  # the times a trace reports (graph/entry/tracing.py): queue wait, first token
        self.admitted: float | None = None
        self.first_token: float | None = None
        # max_time_ms counts from submission: time spent waiting in the queue is part of the budget.
        self.deadline = now + params.max_time_ms / 1000.0 if params.max_time_ms is not None else None
        self.cancelled = False
        self.failed = False  # a row failed: the request got its error, its other rows are dropped
        self.open_rows = params.num_return_sequences  # rows not finished yet (decode side)
        self.results_seen = 0  # final results the consumer has taken (consumer side)
        self.rows = [Row(self, i, decode) for i in range(params.num_return_sequences)]
        for row, grammar in zip(self.rows, grammars):  # response_format: one matcher per row
            row.grammar = grammar

    def timings(self) -> dict[str, float | None]:
        """Milliseconds from submission to admission (queue wait) and to the first token; None if never."""

        def since(t: float | None) -> float | None:
            return None if t is None else round((t - self.submitted) * 1000.0, 3)

        return {"queue_ms": since(self.admitted), "first_token_ms": since(self.first_token)}


class Row:
    """One sequence being generated (a request has num_return_sequences of them)."""

    __slots__ = ("req", "index", "generator", "tokens", "detok", "stop", "logprobs", "finished", "grammar", "drafter")

    def __init__(self, req: Request, index: int, decode) -> None:
        p = req.params
        self.req = req
        self.index = index
        self.generator: torch.Generator | None = None
        if p.do_sample and p.seed is not None:
            # Seeds seed, seed+1, ... for the samples of one request.
            self.generator = torch.Generator().manual_seed(p.seed + index)
        self.tokens: list[int] = []
        self.detok = IncrementalDetokenizer(decode, req.prompt_ids)
        self.stop = StopMatcher(p.stop)
        self.logprobs: list[TokenLogprob] | None = [] if p.logprobs else None
        self.finished = False
        self.grammar: RowGrammar | None = None
        self.drafter: NgramDrafter | None = None  # speculative decoding's n-gram index (graph/engine/spec/)

    @property
    def position(self) -> int:
        """Position id of the last token (the one the next forward is fed)."""
        return len(self.req.prompt_ids) + len(self.tokens) - 1

    def sampling(self) -> RowSampling:
        return RowSampling(
            self.req.params, self.generator, [*self.req.prompt_ids, *self.tokens], self.grammar, self.tokens
        )


class Chunked:
    """A long prompt being prefilled a chunk per step: its prompt tokens done so far and their cache, and
    the requests with the identical prompt (same scope) that join its prefill as extra rows (best_of, `n`)."""

    __slots__ = ("req", "done", "cache", "followers", "short")

    def __init__(self, req: Request, short: bool = False) -> None:
        self.req = req
        self.done = 0
        self.cache: RowCache | None = None
        self.followers: list[Request] = []
        # at most one chunk to prefill on top of a kept prefix (a chat turn): prefilled whole, before long prompts
        self.short = short

    @property
    def reqs(self) -> list[Request]:
        return [self.req, *self.followers]


class Outbox:
    """Messages for consumers, sent with one thread-safe call per event loop."""

    def __init__(self) -> None:
        self.items: dict[asyncio.AbstractEventLoop, list[tuple[Request, Any]]] = {}

    def put(self, req: Request, item: Any) -> None:
        self.items.setdefault(req.loop, []).append((req, item))

    def send(self) -> None:
        for loop, items in self.items.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                for req, _ in items:
                    req.cancelled = True
        self.items = {}


def _deliver(items: list[tuple[Request, Any]]) -> None:
    for req, item in items:
        req.queue.put_nowait(item)


class Scheduler:
    """Owns the model while running: the waiting queue, the batch, the decode thread, counters."""

    def __init__(
        self,
        runner: Runner,
        tokenizer,
        *,
        name: str,
        eos_ids: frozenset[int],
        pad_id: int,
        max_batch_size: int,
        max_queue: int,
        max_prompt_tokens: int,
        threads: int | None,
        max_request_share: float = 1.0,
        max_wait_s: float | None = None,
        admission_margin: float = 1.0,
        max_kv_mb: float | None = None,
        kv_bytes_per_token: int = 0,
        prefix_cache_mb: float | None = None,
        speculation: Speculation | None = None,
        prefill_step_share: float | None = PREFILL_STEP_SHARE,
        prefill_lane: bool = True,
    ) -> None:
        self.runner = runner
        # Drafts verified in the batch (graph/engine/spec/): on runners that decode several tokens per row.
        self.speculation = speculation if runner.multi_token_decode else None
        cap = runner.max_draft_rows
        if self.speculation is not None and cap is not None and self.speculation.max_rows > cap:
            self.speculation = dataclasses.replace(self.speculation, max_rows=cap)
        self.tokenizer = tokenizer
        self.name = name
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prompt_tokens = max_prompt_tokens
        self.threads = threads
        self.chunk_tokens = CHUNK_TOKENS  # longer prompts are prefilled this many tokens per step at most
        # while rows decode, a chunk takes about prefill_step_share x their step's time (graph/engine/chunk_budget.py)
        self.chunk_sizer = ChunkSizer(prefill_step_share)
        # The prefill lane: on runners that can (concurrent_chunks), a long prompt's chunks run on a thread of their
        # own beside the decode steps instead of between them, whole chunks on one core while the rows decode on
        # the rest (the chunk sizer then has nothing to size); `_lane_job` is the chunk running there now.
        self.prefill_lane = prefill_lane and runner.concurrent_chunks
        self._lane_pool: ThreadPoolExecutor | None = None
        self._lane_job: tuple[Chunked, Future, int] | None = None
        # Rows one request id may hold (its first request is always admissible).
        self.row_cap = max(1, math.floor(max_batch_size * max_request_share))
        self.max_wait_s = max_wait_s
        self.admission_margin = max(1.0, admission_margin)  # the plan's times x this (shared cores)
        # KV bytes admission may build up: the config's max_kv_mb, else a share of the machine's memory
        self.kv_budget: int | None = int(max_kv_mb * 2**20) if max_kv_mb else default_kv_budget()
        self.kv_bytes_per_token = kv_bytes_per_token  # one row, one position, all layers, keys + values
        # Prompts kept for reuse (graph/engine/kv/prefix_cache.py): prefix_cache_mb, else a quarter of the KV budget.
        keep = int(prefix_cache_mb * 2**20) if prefix_cache_mb is not None else (self.kv_budget or 0) // 4
        self.prefixes = (
            PrefixCache(keep, kv_bytes_per_token) if runner.chunked_prefill and keep and kv_bytes_per_token else None
        )
        self.step_s = 0.0  # moving average of a step's wall time (prefill + decode), for expected waits
        self.step_times = StepTimes()  # decode step time per batch size (warm-up table, traffic), for admission
        self.prefill_times = PrefillTimes()  # prefill time per prompt tokens (the same)
        self.warmup_table: Table | None = None  # what the warm-up measured for them
        self._last_step_end: float | None = None  # when the last decode step ended, while rows kept running
        self._prefill_s = 0.0  # prefill seconds since then (admission counts them apart)
        self._lock_wait_s = 0.0  # seconds since then waiting for step_lock (the other side's turn, counted apart)
        # A hybrid node's other side (graph/engine/hybrid.py): its lane_now(), whose steps take turns with ours
        self.beside: Callable[[], Lane] | None = None
        # the requests this step took from the queue: between there and their first token (a prefill of a
        # burst takes a second) they are neither waiting nor rows, and admission must still plan them
        self._admitting: list[Request] = []
        self.length_ratio = 1.0  # moving average of completion tokens / max_new_tokens of finished rows
        # admission plans each row's length at the 90th percentile of the recent ratios (a mean plans a burst of
        # rows that all run to max_new_tokens 30% short after traffic that stopped early)
        self.length_ratios: deque[float] = deque(maxlen=64)
        self.plan_length_ratio = 1.0
        self.lock = threading.RLock()
        # Held around each step (warm-up included): a hybrid node's two engines share one (graph/engine/hybrid.py)
        # so their steps take turns on the cores instead of oversubscribing them.
        self.step_lock: AbstractContextManager[Any] = nullcontext()
        self._wake = threading.Condition(self.lock)
        self._waiting: deque[Request] = deque()
        self._by_id: dict[str, list[Request]] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        self.closed = False
        self.ready = threading.Event()  # set once the decode thread has warmed up
        # Owned by the decode thread.
        self.rows: list[Row] = []
        self._chunking: deque[Chunked] = deque()  # long prompts being prefilled a chunk per step, oldest first
        self._cache: RowCache | None = None
        self._sampler: BatchSampler | None = None
        self._token_texts: dict[int, str] = {}
        self.counters = dict(
            generated_tokens_total=0,
            prompt_tokens_total=0,
            requests_total=0,
            batch_steps_total=0,
            prefill_steps_total=0,
            prefix_hit_tokens_total=0,
            cancelled_total=0,
            rejected_total=0,
            shed_total=0,
            failed_rows_total=0,
            malloc_trims_total=0,
            spec_draft_tokens_total=0,
            spec_accepted_tokens_total=0,
            prefill_lane_chunks_total=0,
            admitted_late_total=0,  # admitted under max_wait_s and answered after the time promised then
            admitted_late_ms_total=0,  # by how much, added up
        )
        # answered / planned seconds of the recent requests admission planned (how far its plan was off)
        self.plan_errors: deque[float] = deque(maxlen=64)

    # -- control (any thread) ----------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            if self.closed or (self._thread is not None and self._thread.is_alive()):
                return
            # All model work happens on the decode thread: the caller's OpenMP pool would only
            # slow it down (see release_openmp_pool).
            release_openmp_pool()
            self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._closing = self.closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self.lock:
            waiting, self._waiting = list(self._waiting), deque()
            self._by_id.clear()
        out = Outbox()
        for req in waiting + list({r.req: None for r in self.rows}) + [q for c in self._chunking for q in c.reqs]:
            out.put(req, NodeFailure(f"{self.name}: the generation engine was closed", node=self.name))
        self.rows, self._cache, self._sampler = [], None, None
        self._chunking.clear()
        self._lane_job = None
        if self._lane_pool is not None:
            self._lane_pool.shutdown(wait=False)
        out.send()

    def submit(self, req: Request) -> None:
        """Queue a request, or raise Overloaded at once when the queue is full or its expected wait
        is above max_wait_s (requests whose id is already queued or running are part of a call that
        was admitted: only the queue bound applies to them)."""
        self.start()
        n = req.params.num_return_sequences
        if (
            self.kv_budget is not None
            and self.kv_bytes(n, len(req.prompt_ids) + req.params.max_new_tokens) > self.kv_budget
        ):
            raise InvalidRequest(
                f"max_new_tokens: {n} rows x ({len(req.prompt_ids)} prompt + {req.params.max_new_tokens} new tokens) "
                f"need {self.kv_bytes(n, len(req.prompt_ids) + req.params.max_new_tokens) / 2**20:.0f} MB of KV cache, "
                f"above this node's KV budget of {self.kv_budget / 2**20:.0f} MB (scheduler.max_kv_mb; by default "
                f"a quarter of the machine's memory)",
                field="max_new_tokens",
            )
        with self._wake:
            if self.closed:
                raise NodeFailure(f"{self.name}: the generation engine is closed", node=self.name)
            if self.max_wait_s is not None and req.id not in self._by_id:
                refusal = self._refusal(req, max(0.0, self.max_wait_s - req.reserve_s))
                if refusal is not None:
                    self.counters["rejected_total"] += 1
                    self.counters["shed_total"] += 1
                    why, retry_s = refusal
                    raise Overloaded(f"{self.name}: {why}; retry later", retry_after_s=max(1, math.ceil(retry_s)))
            # Rows that are free now count as room: between two steps the batch may have just
            # emptied while its replacements wait for the next step (measured: 20 clients against
            # max_batch_size 8 + max_queue 16 had 83 of 100 requests refused without this).
            room = self.max_queue + max(0, self.max_batch_size - len(self.rows))
            if len(self._waiting) >= room:
                self.counters["rejected_total"] += 1
                raise Overloaded(
                    f"{self.name}: {len(self._waiting)} requests are already waiting "
                    f"(max_batch_size={self.max_batch_size} rows busy, max_queue={self.max_queue}); retry later",
                    retry_after_s=max(1, math.ceil(self.expected_wait_s(req))),
                )
            self._waiting.append(req)
            self._by_id.setdefault(req.id, []).append(req)
            self.counters["requests_total"] += 1
            self._wake.notify()

    def cancel_id(self, request_id: str) -> bool:
        with self.lock:
            reqs = list(self._by_id.get(request_id, ()))
        for req in reqs:
            self.cancel(req)
        return bool(reqs)

    def cancel(self, req: Request) -> None:
        """A waiting request finishes here; a running one at the start of the next step."""
        with self._wake:
            if req.cancelled or req.open_rows == 0:
                return
            req.cancelled = True
            try:
                self._waiting.remove(req)
            except ValueError:
                self._wake.notify()
                return
        out = Outbox()
        for row in req.rows:
            self._finish(row, "cancelled", out)
        out.send()

    def queued(self) -> int:
        with self.lock:
            return len(self._waiting)

    def kv_bytes(self, rows: int, span: int) -> int:
        """KV cache of `rows` rows whose longest needs `span` positions (the buffer is rectangular)."""
        return rows * span * self.kv_bytes_per_token

    def expected_wait_s(self, req: Request) -> float:
        """Seconds `req` would wait for batch rows if queued now (call with the lock held).

        Waiting requests that admission would take before it (round-robin by id, within each id's
        row cap) are ahead; if they and `req` fit in the free rows, the wait is one step. Otherwise
        rows must free up: the work of the running rows and of those ahead, in row-steps
        (max_new_tokens x the measured completion ratio), is done max_batch_size rows per step."""
        rows = list(self.rows)
        held = Counter(r.req.id for r in rows)
        ahead_rows, ahead_work = 0, 0.0
        for w in self._waiting:
            n = w.params.num_return_sequences
            if held[w.id] and held[w.id] + n > self.row_cap:
                continue  # over its share: round-robin lets `req` go first
            held[w.id] += n
            ahead_rows += n
            ahead_work += n * max(1.0, w.params.max_new_tokens * self.length_ratio)
        free = self.max_batch_size - len(rows)
        if ahead_rows + req.params.num_return_sequences <= free:
            return self.step_s
        running = sum(max(1.0, r.req.params.max_new_tokens * self.length_ratio - len(r.tokens)) for r in rows)
        return self.step_s * (1 + (running + ahead_work) / self.max_batch_size)

    def _work(self, req: Request, done: int = 0, prefilled: int = 0) -> Work:
        """`req` in admission's plan: its expected new tokens (max_new_tokens x the 90th percentile of the
        recent rows' completion ratios) less `done`, its prompt less `prefilled`, the KV positions its rows reserve."""
        p = req.params
        expected = max(1, min(p.max_new_tokens, math.ceil(p.max_new_tokens * self.plan_length_ratio)))
        span = len(req.prompt_ids) + p.max_new_tokens
        left = len(req.prompt_ids) - prefilled
        # a long prompt beside decoding rows goes to the prefill lane: it delays itself, not the rows
        aside = left if self.prefill_lane and left > self.chunk_tokens else 0
        return Work(req, p.num_return_sequences, left - aside, max(1, expected - done), span, aside)

    def _ahead(self, running: Sequence[Request]) -> list[Work]:
        """The work admission plans after the rows running: requests being prefilled now (taken from the queue
        by this step and not rows yet), the long prompts being prefilled a chunk at a time, then the queue."""
        chunks = [q for c in list(self._chunking) for q in c.reqs]
        seen = set(running) | set(chunks)
        out = [self._work(q) for q in list(self._admitting) if q not in seen and q.open_rows and not q.cancelled]
        out += [self._work(q, prefilled=c.done) for c in list(self._chunking) for q in c.reqs]
        return out + [self._work(w) for w in list(self._waiting)]

    def _refusal(self, req: Request, bound: float) -> tuple[str, float] | None:
        """Why `req` is refused and when to retry, or None when admitting it keeps every bound (call with
        the lock held). The plan (graph/engine/admission.py) runs the rows already running, the prompts
        being prefilled, the waiting requests and `req` forward: `req` must finish within `bound` of its
        alone time, and no request admitted earlier may be pushed past the time it was promised."""
        by_req: dict[Request, int] = {}
        for r in list(self.rows):  # the decode thread's list: a snapshot of it
            by_req[r.req] = max(by_req.get(r.req, 0), len(r.tokens))
        running = [self._work(q, done) for q, done in by_req.items()]
        waiting = self._ahead(list(by_req))
        new = self._work(req)

        beside = [self.beside()] if self.beside is not None else []

        def forward(queue: list[Work]) -> dict[Hashable, float]:
            return plan(
                running,
                queue,
                max_rows=self.max_batch_size,
                fits=self._fits,
                steps=self.step_times,
                prefills=self.prefill_times,
                beside=beside,
            )

        m = self.admission_margin
        finish = {k: m * at for k, at in forward([*waiting, new]).items()}
        # alone: on an idle node, on the faster of its engines (a hybrid starts it on its small side)
        alone = min(alone_s(new, steps=lane.steps, prefills=lane.prefills) for lane in [*beside, self._lane([], [])])
        limit = f"max_wait_s={self.max_wait_s:g}" if self.max_wait_s is not None else f"{bound:g}s"
        if req.reserve_s:
            limit += f" less the {req.reserve_s:.1f}s its caller keeps for its own work after this node (scoring)"
        late = finish.get(req, math.inf) - alone
        if late > bound:
            ahead = [*running, *waiting]
            rows = sum(w.rows for w in ahead) + new.rows
            span = max([new.span, *(w.span for w in ahead)])
            kv = rows > new.rows and rows <= self.max_batch_size and not self._fits(rows, span)
            wait = (
                f"its KV cache does not fit beside the {rows - new.rows} rows running or waiting (KV budget "
                f"{(self.kv_budget or 0) / 2**20:.0f} MB, scheduler.max_kv_mb): it waits for KV memory"
                if kv
                else "its wait for rows, then a slower batch"
            )
            if m != 1.0:
                wait += f"; planned at {m:g}x the measured times, scheduler.admission_margin"
            return f"expected to finish {late:.1f}s later than alone ({wait}), above {limit}", late - bound
        now = time.monotonic()
        # This engine's requests only: a hybrid side that held back the other side's admissions to keep its own
        # few rows' promises refused whole bursts (measured: 116 of 128 refused, 84 answered in time the run
        # before); its rows may then finish past their promise, and admitted_late_total counts them.
        mine = {w.key for w in running} | {w.key for w in waiting}
        pushed = [
            (w, w.promise)
            for w, at in finish.items()
            if w in mine and isinstance(w, Request) and w.promise is not None and now + at > w.promise
        ]
        if pushed:  # past their promise with `req`: refused if they were not already without it
            before = {k: m * at for k, at in forward(waiting).items()}
            harmed = [w for w, promise in pushed if now + before.get(w, math.inf) <= promise]
            if harmed:
                over = max(now + finish[w] - promise for w, promise in pushed if w in harmed)
                return (
                    f"admitting it would make {len(harmed)} request(s) admitted earlier finish {over:.1f}s past "
                    "the time promised them (max_wait_s later than alone)",
                    max(over, min(finish[w] for w in harmed)),
                )
        req.promise = now + alone + bound
        req.planned = now + finish[req]
        return None

    def lane_now(self) -> Lane:
        """This engine's rows running and requests waiting now, as a lane of admission's plan: what a hybrid
        node's other side plans beside its own (its `beside`), as their steps take turns. Reads snapshots
        without the lock: the other side calls it holding its own."""
        done: dict[Request, int] = {}
        for r in list(self.rows):
            done[r.req] = max(done.get(r.req, 0), len(r.tokens))
        return self._lane([self._work(q, n) for q, n in done.items()], self._ahead(list(done)))

    def _lane(self, running: list[Work], waiting: list[Work]) -> Lane:
        return Lane(running, waiting, self.max_batch_size, self._fits, self.step_times, self.prefill_times)

    def _fits(self, rows: int, span: int) -> bool:
        """Whether `rows` rows whose longest reserves `span` positions fit the KV budget."""
        return self.kv_budget is None or self.kv_bytes(rows, span) <= self.kv_budget

    def _unregister(self, req: Request) -> None:
        with self.lock:
            same = self._by_id.get(req.id)
            if same is not None and req in same:
                same.remove(req)
                if not same:
                    del self._by_id[req.id]

    # -- the decode thread -------------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            with self.step_lock:
                self._warmup()
            trimmed = True
            while True:
                trim = False
                with self._wake:
                    while not self._closing and not self._waiting and not self.rows and not self._chunking:
                        if trimmed:
                            self._wake.wait()
                        elif not self._wake.wait(IDLE_TRIM_S):
                            trim = trimmed = True  # idle for a while: give freed KV and logits memory back
                            break
                    if self._closing:
                        return
                if trim:  # outside the lock: submit() and stats() never wait for it
                    if malloc_trim():
                        self.counters["malloc_trims_total"] += 1
                    continue
                trimmed = False
                admitted: list[Request] = []
                start = time.monotonic()
                try:
                    asked = time.perf_counter()
                    self._admitting = admitted  # taken from the queue, being prefilled: admission still counts them
                    with self.step_lock:
                        self._lock_wait_s += time.perf_counter() - asked  # the other side's turn (a hybrid)
                        self._step(admitted)
                except Exception as exc:  # a failed forward (a bug, out of memory) must not kill the node
                    log.exception("%s: decode step failed", self.name)
                    self._fail_all(admitted, exc)
                self._admitting = []
                took = time.monotonic() - start
                self.step_s = took if not self.step_s else self.step_s + 0.2 * (took - self.step_s)

    def _warmup(self, steps: int = 2) -> None:
        """A short prefill and a few decode steps (the first calls pay one-time kernel setup)."""
        try:
            logits, pre = self.runner.prefill(torch.full((1, 4), self.pad_id), torch.ones(1, 4, dtype=torch.bool))
            cache = self.runner.new_cache(1, 4 + steps, left_room=4)
            cache.add_rows(pre, [0], steps)
            for i in range(steps):
                logits = self.runner.decode(logits.argmax(-1, keepdim=True), torch.tensor([[4 + i]]), cache, steps)
            self.runner.warm_up(self.pad_id)  # graph/engine/runners/torch_compiled.py: compile the shape buckets
            # Admission's table: step times per batch size, prefill times per prompt length (graph/engine/warmup.py)
            table = measure(
                self.runner, max_batch=self.max_batch_size, pad_id=self.pad_id, max_prompt=self.max_prompt_tokens
            )
            self.warmup_table = table
            self.step_times.seed(table.steps)
            self.prefill_times.seed(table.prefills)
            log.info("%s: admission table %s", self.name, table.describe())
        except Exception:  # not fatal: the first real request pays the setup, traffic fills admission's table
            log.exception("%s: warm-up failed", self.name)
        finally:
            self.ready.set()

    def _fail_all(self, admitted: list[Request], exc: Exception) -> None:
        reqs = {r.req: None for r in self.rows}
        reqs.update({q: None for c in self._chunking for q in c.reqs})
        reqs.update({r: None for r in admitted})
        out = Outbox()
        for req in reqs:
            req.open_rows = 0
            self._unregister(req)
            out.put(req, NodeFailure(f"{self.name}: generation failed: {exc}", node=self.name))
        self.rows, self._cache, self._sampler = [], None, None
        self._last_step_end = None
        self._chunking.clear()
        self._lane_job = None
        out.send()

    def _step(self, admitted: list[Request]) -> None:
        out = Outbox()
        now = time.monotonic()
        gone = []
        for i, row in enumerate(self.rows):
            if row.req.cancelled:
                self._finish(row, "cancelled", out)
                gone.append(i)
            elif row.req.deadline is not None and now >= row.req.deadline:
                self._finish(row, "time", out)
                gone.append(i)
        self._drop(gone)
        admitted.extend(self._admit(now, out))
        whole = [r for r in admitted if not self._chunked(r)]
        for r in admitted:
            if self._chunked(r):
                self._start_chunked(r)
        if whole:
            self._prefill(whole, out)
            out.send()  # first tokens go out before the next forward
        if self._chunking:
            self._prefill_chunk(now, out)
            out.send()
        if self.rows:
            self._decode(out)
        out.send()

    def _admit(self, now: float, out: Outbox) -> list[Request]:
        """Waiting requests to prefill now: round-robin over request ids (oldest first), FIFO within
        an id, an id at its row cap skipped (it waits while others go); a request that does not fit
        in the free rows (or the KV budget) stops admission, so nobody overtakes it."""
        chunking = sum(q.params.num_return_sequences for c in self._chunking for q in c.reqs)
        free = self.max_batch_size - len(self.rows) - chunking  # rows of prompts still being prefilled are taken
        held = Counter(r.req.id for r in self.rows)
        for q in (q for c in self._chunking for q in c.reqs):
            held[q.id] += q.params.num_return_sequences
        # the KV span: the running rows' and the prompts' being prefilled (they join the batch when read)
        joining = [r.req for r in self.rows] + [q for c in self._chunking for q in c.reqs]
        span = max((len(q.prompt_ids) + q.params.max_new_tokens for q in joining), default=0)
        taken: list[Request] = []
        longest = 0
        with self.lock:
            expired = [r for r in self._waiting if r.deadline is not None and now >= r.deadline]
            for req in expired:
                self._waiting.remove(req)
                for row in req.rows:
                    self._finish(row, "time", out)
            groups: dict[str, deque[Request]] = {}
            for req in self._waiting:
                groups.setdefault(req.id, deque()).append(req)
            while groups:
                for rid in list(groups):
                    req = groups[rid][0]
                    n = req.params.num_return_sequences
                    if held[rid] and held[rid] + n > self.row_cap:
                        del groups[rid]  # at its share of the batch: its other requests wait
                        continue
                    chunked = self._chunked(req)  # prefilled a chunk per step: not in this step's batch
                    p = longest if chunked else max(longest, len(req.prompt_ids))
                    new_span = max(span, len(req.prompt_ids) + req.params.max_new_tokens)
                    rows = self.max_batch_size - free + n
                    if (
                        n > free
                        or (taken and not chunked and p * (len(taken) + 1) > PREFILL_TOKEN_BUDGET)
                        or (self.kv_budget is not None and rows > n and self.kv_bytes(rows, new_span) > self.kv_budget)
                    ):
                        groups.clear()
                        break
                    groups[rid].popleft()
                    if not groups[rid]:
                        del groups[rid]
                    taken.append(req)
                    req.admitted = now
                    held[rid] += n
                    free -= n
                    longest, span = p, new_span
            if taken:
                chosen = set(map(id, taken))
                self._waiting = deque(r for r in self._waiting if id(r) not in chosen)
        return taken

    def _prefill(self, reqs: list[Request], out: Outbox) -> None:
        """One batched prefill of `reqs`' prompts; identical prompts of one scope (best_of candidates,
        cascade steps sent at once) are prefilled once and share the row. Each prompt is kept for reuse."""
        unique: dict[tuple[str, tuple[int, ...]], int] = {}
        of_req = [unique.setdefault((r.scope, tuple(r.prompt_ids)), len(unique)) for r in reqs]
        prompts = list(unique)
        b, p = len(prompts), max(len(ids) for _, ids in prompts)
        ids = torch.full((b, p), self.pad_id, dtype=torch.long)
        mask = torch.zeros(b, p, dtype=torch.bool)
        for i, (_, prompt) in enumerate(prompts):
            n = len(prompt)
            ids[i, p - n :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, p - n :] = True
        t0 = time.perf_counter()
        logits, cache = self.runner.prefill(ids, mask)
        took = time.perf_counter() - t0
        self.prefill_times.record(b * p, took)
        self._prefill_s += took
        self.counters["prefill_steps_total"] += 1
        self.counters["prompt_tokens_total"] += sum(len(prompt) for _, prompt in prompts)
        self.counters["prefix_hit_tokens_total"] += sum(len(r.prompt_ids) for r in reqs) - sum(
            len(prompt) for _, prompt in prompts
        )
        for i, (scope, prompt) in enumerate(prompts):
            self._keep(scope, prompt, cache, i)
        self._join(reqs, logits, cache, out, of_req)

    def _keep(self, scope: str, ids: Sequence[int], cache: RowCache, row: int) -> None:
        """Keep row `row` of `cache` (it holds `ids`: a prompt, or a finished row's prompt and reply) for
        later prompts of `scope`, in whole blocks. A copy that fails is logged, never fails a request."""
        if self.prefixes is None:
            return
        n = self.prefixes.wants(scope, ids)
        if not n:
            return
        try:
            self.prefixes.keep(scope, ids[:n], cache.keep_row(row, n))
        except Exception:
            log.exception("%s: keeping a prefix of %d tokens failed", self.name, n)

    def _chunked(self, req: Request) -> bool:
        """Whether `req`'s prompt is prefilled on its own, a chunk per step (runners with chunked_prefill):
        a long prompt, or one that starts with a kept prompt (only the rest is prefilled)."""
        if not self.runner.chunked_prefill:
            return False
        if not req.looked_up:
            req.looked_up = True
            req.hit = self.prefixes.lookup(req.scope, req.prompt_ids) if self.prefixes is not None else None
        return req.hit is not None or len(req.prompt_ids) > self.chunk_tokens

    def _start_chunked(self, req: Request) -> None:
        """Prefill `req` a chunk per step; a prompt identical (same scope) to one being chunked joins that
        prefill as extra rows instead (best_of candidates, `n`, a repeated call): prefilled once."""
        for c in self._chunking:
            if c.req.scope == req.scope and c.req.prompt_ids == req.prompt_ids:
                req.hit = None  # the kept prompt it found may be evicted now
                c.followers.append(req)
                return
        hit = req.hit
        short = hit is not None and len(req.prompt_ids) - hit.tokens <= self.chunk_tokens
        self._chunking.append(Chunked(req, short))

    def _prefill_chunk(self, now: float, out: Outbox) -> None:
        """Chunks of the long (or partly kept) prompts being prefilled, oldest first, up to one chunk's
        tokens in all (one chunk at least): `chunk_tokens`, or while rows decode what fits the step budget
        in time (graph/engine/chunk_budget.py). A prompt's rows join the batch after its last chunk.
        Prompts with at most `chunk_tokens` left on top of a kept prefix (a chat turn, a repeated stream) go
        first and whole, as a short uncached prompt is prefilled whole: queued behind a long prompt they
        would wait for all its chunks, and the streams measured beside it would stop."""
        if self._lane_job is not None:
            c, running, n = self._lane_job
            if running.done() or not self.rows:  # with no rows decoding, nothing to run beside: wait for it
                self._lane_job = None
                logits, cache = running.result()  # its exception fails the step, as a chunk run here would
                self.counters["prefill_lane_chunks_total"] += 1
                self._chunk_done(c, n, logits, cache, out)
        budget = self.chunk_sizer.size(self.chunk_tokens, len(self.rows))
        if any(c.short for c in self._chunking):  # short ones first: behind a long prompt they would wait for all of it
            self._chunking = deque(sorted(self._chunking, key=lambda c: not c.short))
        while self._chunking and (budget > 0 or self._chunking[0].short):
            c = self._chunking[0]
            if self._lane_job is not None and not c.short:
                return  # a chunk runs on the lane: the long prompts wait for it, the rows decode meanwhile
            for q in c.reqs:  # cancelled or out of time: its rows finish; a follower takes over the prefill
                if q.cancelled or (q.deadline is not None and now >= q.deadline):
                    for row in q.rows:
                        self._finish(row, "cancelled" if q.cancelled else "time", out)
                    if q is c.req:
                        c.req = c.followers.pop(0) if c.followers else q
                    if q in c.followers:
                        c.followers.remove(q)
            req = c.req
            if req.cancelled or (req.deadline is not None and now >= req.deadline):
                self._chunking.popleft()
                continue
            total = len(req.prompt_ids)
            if c.cache is None and req.hit is not None:  # start from the kept prefix: prefill only the rest
                hit, req.hit = req.hit, None  # the kept prompt may be evicted now
                try:
                    c.cache = hit.kept.cache.resume(hit.tokens, total)
                    c.done = hit.tokens
                    self.counters["prefix_hit_tokens_total"] += c.done
                except Exception:  # prefilled from the start instead, in chunks
                    c.short = False
                    log.exception("%s: resuming a kept prefix of %d tokens failed", self.name, hit.tokens)
            if self.prefill_lane and self.rows and not c.short:  # beside the decode steps, a whole chunk at a time
                chunk = req.prompt_ids[c.done : c.done + self.chunk_tokens]
                if self._lane_pool is None:
                    self._lane_pool = ThreadPoolExecutor(1, thread_name_prefix=f"lane-{self.name}")
                ids = torch.tensor([chunk], dtype=torch.long)
                self._lane_job = (c, self._lane_pool.submit(self._lane_chunk, ids, c.cache, total), len(chunk))
                return
            chunk = req.prompt_ids[c.done : total if c.short else c.done + budget]
            t0 = time.perf_counter()
            logits, cache = self.runner.prefill_chunk(torch.tensor([chunk], dtype=torch.long), c.cache, total)
            took = time.perf_counter() - t0
            self.prefill_times.record(len(chunk), took)
            self.chunk_sizer.chunked(len(chunk), took)
            self._prefill_s += took
            budget -= 0 if c.short else len(chunk)
            if not self._chunk_done(c, len(chunk), logits, cache, out):
                return

    def _lane_chunk(self, ids: torch.Tensor, cache: RowCache | None, total: int) -> tuple[torch.Tensor, RowCache]:
        """One chunk on the prefill lane's thread (torch's inference mode is per thread)."""
        with torch.inference_mode():
            return self.runner.prefill_chunk_beside(ids, cache, total)

    def _chunk_done(self, c: Chunked, n: int, logits: torch.Tensor, cache: RowCache, out: Outbox) -> bool:
        """`n` more tokens of `c`'s prompt were prefilled into `cache`: once the prompt is done, it is kept for
        reuse and its rows join the batch (True)."""
        req = c.req
        c.cache = cache
        c.done += n
        self.counters["prefill_steps_total"] += 1
        self.counters["prompt_tokens_total"] += n
        if c.done < len(req.prompt_ids):
            return False
        self._chunking.remove(c)
        self._keep(req.scope, req.prompt_ids, cache, 0)
        self._join(c.reqs, logits, cache, out, [0] * len(c.reqs))
        return True

    def _join(self, reqs: list[Request], logits: torch.Tensor, cache: RowCache, out: Outbox, of_req: list[int]) -> None:
        """First tokens of prefilled prompts `reqs` (a prefill's logits and cache; request i's prompt
        is row of_req[i]); their unfinished rows join the running batch."""
        # The samples of one prompt share its prefill: its logits and KV rows are repeated.
        rows = [row for req in reqs for row in req.rows]
        src = [of_req[i] for i, req in enumerate(reqs) for _ in req.rows]
        if src != list(range(logits.shape[0])):
            logits = logits.index_select(0, torch.tensor(src, dtype=torch.long))
        step = self._choose(BatchSampler([r.sampling() for r in rows], logits.shape[-1]), rows, logits, out)
        now = time.monotonic()
        for req in reqs:
            req.first_token = now
        for j, row in enumerate(rows):
            if not row.finished:  # a failed row is finished already
                self._accept(row, step.tokens[j], step.logprobs.get(j), out, now)
        keep = [j for j, row in enumerate(rows) if not row.finished]
        if not keep:
            return
        batch_cache = self._cache
        if batch_cache is None:
            room = min(self.max_prompt_tokens, PLANNED_PROMPT)  # not the whole context: longer prompts grow it
            batch_cache = self._cache = self.runner.new_cache(self.max_batch_size, room + RIGHT_ROOM, left_room=room)
            batch_cache.max_bytes = self.kv_budget  # its buffers' room beyond the live rows stays within it
        batch_cache.add_rows(cache, [src[j] for j in keep], RIGHT_ROOM)
        self.rows.extend(rows[j] for j in keep)
        self._sampler = None

    def _decode(self, out: Outbox) -> None:
        assert self._cache is not None
        t0, stepped = time.perf_counter(), len(self.rows)
        drafts = self.speculation.drafts(self.rows) if self.speculation is not None else None
        if drafts is not None:
            self._decode_drafts(drafts, out)
            self._record_step(t0, stepped)
            return
        ids = torch.tensor([[r.tokens[-1]] for r in self.rows], dtype=torch.long)
        positions = torch.tensor([[r.position] for r in self.rows], dtype=torch.long)
        if self._sampler is None:
            self._sampler = BatchSampler([r.sampling() for r in self.rows], self.runner.vocab_size)
        if self._sampler.plain_rows and self.speculation is None:  # greedy rows: argmax; the sampler: the rest
            step = self._decode_split(self._sampler, ids, positions, out)
        else:
            logits = self.runner.decode(ids, positions, self._cache, RIGHT_ROOM)
            step = self._choose(self._sampler, self.rows, logits, out)
        self.counters["batch_steps_total"] += 1
        now = time.monotonic()
        gone = []
        for i, row in enumerate(self.rows):
            if not row.finished:
                self._accept(row, step.tokens[i], step.logprobs.get(i), out, now)
            if row.finished:
                gone.append(i)
        self._drop(gone)
        self._record_step(t0, stepped)

    def _decode_split(
        self, sampler: BatchSampler, ids: torch.Tensor, positions: torch.Tensor, out: Outbox
    ) -> StepOutput:
        """A decode step through Runner.decode_split: the plain greedy rows' tokens are the argmax of
        their scores (as the sampler's greedy path takes it), the other rows go to `sampler.rest`."""
        assert self._cache is not None
        rest = sampler.rest_rows
        full = torch.tensor(rest, dtype=torch.long)
        tokens, bad, logits = self.runner.decode_split(ids, positions, self._cache, RIGHT_ROOM, full)
        step = StepOutput(tokens=tokens.clamp_(0, self.runner.vocab_size - 1).tolist(), logprobs={})
        if rest:
            rows = [self.rows[i] for i in rest]
            if sampler.rest is None:
                sampler.rest = BatchSampler([sampler.rows[i] for i in rest], self.runner.vocab_size)
            sub = self._choose(sampler.rest, rows, logits, out)
            for j, i in enumerate(rest):
                step.tokens[i] = sub.tokens[j]
                if j in sub.logprobs:
                    step.logprobs[i] = sub.logprobs[j]
        for i in sampler.plain_rows if bool(bad.any()) else ():
            if bool(bad[i]):
                self._fail_row(self.rows[i], "the model's scores for this row were not finite (NaN or inf)", out)
        return step

    def _record_step(self, t0: float, stepped: int) -> None:
        # A row's time per token: from the last step's end (the loop, admission, deliveries, a thread
        # waiting for a core or the GIL on a busy machine) to this one's, less the prefills between.
        end = time.perf_counter()
        self.chunk_sizer.decoded(end - t0)  # a prefill chunk beside these rows gets a share of it
        last = self._last_step_end
        since = end - last - self._prefill_s - self._lock_wait_s if last is not None else 0.0
        self.step_times.record(stepped, max(end - t0, since))
        self._last_step_end = end if self.rows else None  # idle next: the gap until work comes is no step
        self._prefill_s = self._lock_wait_s = 0.0

    def _decode_drafts(self, drafts: list[list[int]], out: Outbox) -> None:
        """A decode step whose rows carry draft tokens after their last token (graph/engine/spec/verify.py)."""
        assert self._cache is not None and self.speculation is not None
        feed = [[r.tokens[-1], *d] for r, d in zip(self.rows, drafts)]
        logits = self.runner.decode_drafts(feed, self._cache, RIGHT_ROOM)
        self.counters["batch_steps_total"] += 1
        starts = [0]
        for f in feed[:-1]:
            starts.append(starts[-1] + len(f))
        first = logits[torch.tensor(starts, dtype=torch.long)]
        if self._sampler is None:
            self._sampler = BatchSampler([r.sampling() for r in self.rows], logits.shape[-1])
        step = self._choose(self._sampler, self.rows, first, out)
        now = time.monotonic()
        for i, row in enumerate(self.rows):
            if not row.finished:
                self._accept(row, step.tokens[i], step.logprobs.get(i), out, now)

        def choose(sampler: BatchSampler, rows: list[Row], logits: torch.Tensor) -> StepOutput:
            return self._choose(sampler, rows, logits, out)

        def accept(row: Row, token: int, lp) -> None:
            self._accept(row, token, lp, out, time.monotonic())

        accepted = self.speculation.verify(self.rows, drafts, logits, starts, choose, accept)
        self.counters["spec_draft_tokens_total"] += sum(map(len, drafts))
        self.counters["spec_accepted_tokens_total"] += sum(accepted)
        if any(accepted):
            self._sampler = None  # its per-row state (seen tokens, penalties) took one token per row
        gone = []
        for i, row in enumerate(self.rows):
            if row.finished:
                gone.append(i)
            elif drafts[i]:
                self._cache.truncate_row(i, row.position)  # the cache holds every token but the last
        self._drop(gone)

    def _choose(self, sampler: BatchSampler, rows: list[Row], logits: torch.Tensor, out: Outbox) -> StepOutput:
        """One token per row. A row the sampler reports as failed, or whose sampling raises when
        retried alone (after the batched call raised), is failed by itself: the batch goes on."""
        try:
            step = sampler.step(logits)
        except Exception:
            log.exception("%s: batched sampling failed; retrying row by row", self.name)
            self._sampler = None  # its state (seen tokens) is no longer trusted: rebuilt next step
            step = StepOutput(tokens=[0] * len(rows), logprobs={})
            for i, row in enumerate(rows):
                try:
                    one = BatchSampler([row.sampling()], logits.shape[-1]).step(logits[i : i + 1].clone())
                except Exception as exc:
                    self._fail_row(row, f"sampling failed: {type(exc).__name__}: {exc}", out)
                    continue
                step.tokens[i] = one.tokens[0]
                if 0 in one.logprobs:
                    step.logprobs[i] = one.logprobs[0]
                if one.failed:
                    step.failed.append(i)
        for i in step.failed:
            self._fail_row(rows[i], "the model's scores for this row were not finite (NaN or inf)", out)
        return step

    def _fail_row(self, row: Row, why: str, out: Outbox) -> None:
        """Fail one row: its request gets a NodeFailure (once) and its other rows are dropped."""
        if row.finished:
            return
        log.error("%s: request %s row %d failed: %s", self.name, row.req.id, row.index, why)
        self.counters["failed_rows_total"] += 1
        row.finished = True
        req = row.req
        if not req.failed:
            req.failed = req.cancelled = True
            out.put(req, NodeFailure(f"{self.name}: generation failed for this request: {why}", node=self.name))
        req.open_rows -= 1
        if req.open_rows == 0:
            self._unregister(req)

    def _drop(self, gone: list[int]) -> None:
        if not gone:
            return
        assert self._cache is not None
        for i in gone:  # a finished row's prompt and reply (all but its last token are cached): a chat's next turn
            row = self.rows[i]
            if not row.req.failed and row.tokens:
                self._keep(row.req.scope, [*row.req.prompt_ids, *row.tokens[:-1]], self._cache, i)
        order = self._cache.remove_rows(gone)
        self.rows = [self.rows[i] for i in order]
        self._sampler = None
        if not self.rows:
            self._cache = None  # idle: give the KV memory back
            self._last_step_end = None  # and the wait until work comes is no step

    # -- per-token bookkeeping -----------------------------------------------------------------
    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def _accept(self, row: Row, token: int, lp, out: Outbox, now: float) -> None:
        """Record one generated token; finish the row if a stop condition is met."""
        row.tokens.append(token)
        self.counters["generated_tokens_total"] += 1
        if lp is not None and row.logprobs is not None:
            chosen, top_ids, top_vals = lp
            row.logprobs.append(
                TokenLogprob(
                    token=self._token_text(token),
                    logprob=chosen,
                    top_logprobs=[TopLogprob(token=self._token_text(t), logprob=v) for t, v in zip(top_ids, top_vals)],
                )
            )
        if token in self.eos_ids:
            self._finish(row, "stop", out)  # the end-of-sequence token adds no text
            return
        fragment = row.detok.add(token)
        if fragment:
            send, hit = row.stop.add(fragment)
            if hit:
                self._finish(row, "stop", out, sent_now=send, stopped=True)
                return
            if send and row.req.streaming:
                out.put(row.req, (row.index, send, None))
        if len(row.tokens) >= row.req.params.max_new_tokens:
            self._finish(row, "length", out)
        elif row.req.deadline is not None and now >= row.req.deadline:
            self._finish(row, "time", out)

    def _answered(self, req: Request) -> None:
        """Admission's plan against what happened: a request admitted under max_wait_s and answered after its
        promise counts as late (admitted_late_total, admitted_late_ms_total); answered / planned seconds go
        to plan_errors (/node_stats' plan_ratio)."""
        if req.promise is None or req.planned is None or req.cancelled or req.failed:
            return
        now = time.monotonic()
        if now > req.promise:
            self.counters["admitted_late_total"] += 1
            self.counters["admitted_late_ms_total"] += round((now - req.promise) * 1000)
        planned = req.planned - req.submitted
        if planned > 0:
            self.plan_errors.append((now - req.submitted) / planned)

    def _finish(
        self, row: Row, reason: FinishReason, out: Outbox, *, sent_now: str = "", stopped: bool = False
    ) -> None:
        if row.finished:
            return
        row.finished = True
        text = sent_now
        if not stopped:
            send, hit = row.stop.add(row.detok.flush())
            text += send
            if hit:
                reason = "stop"
            else:
                text += row.stop.rest()
        if reason == "cancelled":
            self.counters["cancelled_total"] += 1
        elif row.tokens:  # how much of max_new_tokens rows really use, for expected waits
            ratio = min(1.0, len(row.tokens) / row.req.params.max_new_tokens)
            self.length_ratio += 0.05 * (ratio - self.length_ratio)
            self.length_ratios.append(ratio)
            ordered = sorted(self.length_ratios)
            self.plan_length_ratio = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        result = GenerationResult(
            index=row.index,
            text=row.stop.text,
            finish_reason=reason,
            prompt_tokens=len(row.req.prompt_ids),
            completion_tokens=len(row.tokens),
            logprobs=row.logprobs,
            prompt_messages=row.req.prompt_messages,
            created=time.time(),
            **row.req.timings(),
        )
        out.put(row.req, (row.index, text, result))
        row.req.open_rows -= 1
        if row.req.open_rows == 0:
            self._unregister(row.req)
            self._answered(row.req)
