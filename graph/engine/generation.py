"""The generation engine of a generator node: async API over one continuous-batching decode thread.

    engine = GenerationEngine(model, tokenizer, name="smollm2", max_batch_size=32)
    engine.start()
    results = await engine.generate("I have an idea!", GenerationParams(max_new_tokens=32))
    async for event in engine.stream(prompt, params, interval_ms=50): ...

Requests from any asyncio loop are validated here, then queued (bounded: a full queue, or an
expected wait above max_wait_s, raises Overloaded at once; admission is fair between request ids).
scheduler.py runs the batch, a runner (runners/: one per backend behind runners/base.py) the model and its KV cache,
sampling.py chooses tokens, detok.py makes text (all in this package).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncGenerator, Callable

import torch

from graph.chat_format import ChatMessage, ChatPrompt, FittedChat, fit_chat
from graph.engine.api import NodeEngine
from graph.engine.chunk_budget import PREFILL_STEP_SHARE
from graph.engine.detok import make_decoder
from graph.engine.grammar import Grammars
from graph.engine.runners.base import Runner
from graph.engine.runners.torch_runner import ModelRunner
from graph.engine.scheduler import PLANNED_PROMPT, Request, Scheduler
from graph.engine.spec.verify import Speculation
from graph.errors import ConfigError, InvalidRequest
from graph.params import GenerationParams
from graph.results import GenerationResult, StreamEvent, TokenLogprob, TopLogprob

# The longest prompt of a model that names no context (and a node that sets no max_prompt_tokens).
NO_CONTEXT_LIMIT = 32768


def planned_prompt(max_prompt_tokens: int | None) -> int:
    """Prompt columns the batch cache (and the compiled runner's buckets) are sized for up front: not the
    whole context, whose buffers every row would carry; longer prompts grow the cache when they come."""
    return min(max_prompt_tokens or PLANNED_PROMPT, PLANNED_PROMPT)


__all__ = ["GenerationEngine", "GenerationResult", "StreamEvent", "TokenLogprob", "TopLogprob"]


class RequestStream:
    """A submitted request's stream events; aclose() cancels the request's rows, started or not."""

    def __init__(self, events: AsyncGenerator[StreamEvent, None], release: Callable[[], None]) -> None:
        self._events, self._release = events, release

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._release()


class GenerationEngine(NodeEngine):
    """Continuous-batching text generation over one causal LM on CPU (one runtime: torch, onnx or llama.cpp);
    `stream` comes from NodeEngine (graph/engine/api.py), over `open_stream`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str,
        max_batch_size: int = 32,
        max_queue: int = 256,
        max_prompt_tokens: int | None = None,
        threads: int | None = None,
        chat_template: bool = False,
        compile: bool = False,
        max_request_share: float = 1.0,
        max_wait_s: float | None = None,
        admission_margin: float = 1.0,
        max_kv_mb: float | None = None,
        prefix_cache_mb: float | None = None,
        speculation: Speculation | None = None,
        prefill_step_share: float | None = PREFILL_STEP_SHARE,
        prefill_lane: bool = True,
    ) -> None:
        """`model`: a causal LM in eval mode; `tokenizer`: its fast tokenizer. `threads` sets torch's
        (process-wide) thread count. Prompts are tokenized with the tokenizer's special tokens (BOS
        where it adds one), as `pipeline("text-generation")` does; with `chat_template`, a prompt is
        sent as one user message through the tokenizer's chat template (for instruct models).
        `max_request_share`, `max_wait_s`, `admission_margin` (default here 1.0: the table as measured),
        `max_kv_mb`, `prefill_step_share`, `prefill_lane`: see graph.config.SchedulerConfig;
        `speculation`: prompt-lookup drafts verified in the batch (graph/engine/spec/), on runners with
        multi_token_decode. With
        `compile`, decode steps run compiled on shape buckets (graph/engine/runners/torch_compiled.py), compiled
        during warm-up."""
        # A ready runner (graph/engine/runners/), or a transformers model for the torch runner.
        if isinstance(model, Runner):
            runner: Runner = model
        elif compile:
            from graph.engine.runners.torch_compiled import CompiledRunner

            runner = CompiledRunner(model, max_batch_size=max_batch_size, max_length=planned_prompt(max_prompt_tokens))
        else:
            runner = ModelRunner(model)
        self._runner = runner
        self._runtime_name: str = runner.runtime_name
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        # The longest prompt: the configured limit, else the model's context (a request's own limit is
        # that less its max_new_tokens: `prompt_limit`).
        self.max_prompt_tokens: int = max_prompt_tokens or runner.max_positions or NO_CONTEXT_LIMIT
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"generators.{name}.chat_template: true, but this model's tokenizer has no chat template",
                field=f"generators.{name}.chat_template",
            )
        self.chat_template = chat_template
        if threads is not None:
            torch.set_num_threads(threads)
        eos = runner.eos_ids() | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, *sorted(eos)) if t is not None), 0)
        self._bos_id = tokenizer.bos_token_id
        self._grammars = Grammars(tokenizer, runner.vocab_size, eos)  # response_format
        self._decode = make_decoder(tokenizer)
        self._scheduler = Scheduler(
            self._runner,
            tokenizer,
            name=name,
            eos_ids=eos,
            pad_id=pad,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_prompt_tokens=self.max_prompt_tokens,
            threads=threads,
            max_request_share=max_request_share,
            max_wait_s=max_wait_s,
            admission_margin=admission_margin,
            max_kv_mb=max_kv_mb,
            kv_bytes_per_token=runner.kv_bytes_per_token(),
            prefix_cache_mb=prefix_cache_mb,
            speculation=speculation,
            prefill_step_share=prefill_step_share,
            prefill_lane=prefill_lane,
        )

    @property
    def runtime_name(self) -> str:
        """The runner's runtime, e.g. "onnx int8 (onnxruntime 1.32.0)" (graph/models/node_engine.py may say more)."""
        return self._runtime_name

    @runtime_name.setter
    def runtime_name(self, value: str) -> None:
        self._runtime_name = value

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the decode thread (idempotent; does nothing after close())."""
        self._scheduler.start()

    def close(self) -> None:
        """Stop the decode thread for good; waiting and running requests fail with NodeFailure."""
        self._scheduler.close()

    def warmup(self, timeout: float = 120.0) -> bool:
        """Start the decode thread and wait until it has run its warm-up forwards (the first
        calls pay one-time kernel setup). False if that took longer than `timeout` seconds."""
        self.start()
        return self._scheduler.ready.wait(timeout)

    # -- requests ------------------------------------------------------------------------------------
    async def generate(
        self,
        prompt: str | list[int] | ChatPrompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> list[GenerationResult]:
        """All `params.num_return_sequences` completions of `prompt`, in index order. A prompt given
        as token ids (e.g. from `fit_chat`) is used as it is: no chat template, no special tokens;
        a ChatPrompt is fitted here (`fit_chat`)."""
        prompt, params, kept = self._fit(prompt, params)
        req = self._submit(
            prompt, params, request_id, streaming=False, prompt_messages=kept, scope=scope, reserve_s=reserve_s
        )
        total = params.num_return_sequences
        results: list[GenerationResult | None] = [None] * total
        try:
            while req.results_seen < total:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                index, _, result = item
                if result is not None:
                    results[index] = result
                    req.results_seen += 1
        finally:
            if req.results_seen < total:  # cancelled task or error: free the rows
                self._scheduler.cancel(req)
        return [r for r in results if r is not None]

    def open_stream(
        self,
        prompt: str | list[int] | ChatPrompt,
        params: GenerationParams,
        *,
        request_id: str | None = None,
        interval_ms: int = 0,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> RequestStream:
        """`stream`, with the request submitted now: a refusal (Overloaded, InvalidRequest) raises here,
        before the caller has sent anything. The returned stream's aclose() cancels the request,
        whether it was iterated or not."""
        prompt, params, kept = self._fit(prompt, params)
        req = self._submit(
            prompt, params, request_id, streaming=True, prompt_messages=kept, scope=scope, reserve_s=reserve_s
        )
        return RequestStream(self._events(req, interval_ms), lambda: self._release(req))

    def _release(self, req: Request) -> None:
        if req.results_seen < req.params.num_return_sequences:
            self._scheduler.cancel(req)

    async def _events(self, req: Request, interval_ms: int) -> AsyncGenerator[StreamEvent, None]:
        total = req.params.num_return_sequences
        interval = interval_ms / 1000.0
        pending: dict[int, str] = {}
        last_flush = float("-inf")
        try:
            while req.results_seen < total:
                items = []
                if pending and interval > 0:
                    try:
                        wait = max(0.0, last_flush + interval - time.monotonic())
                        items.append(await asyncio.wait_for(req.queue.get(), wait))
                    except TimeoutError:
                        pass
                else:
                    items.append(await req.queue.get())
                while not req.queue.empty():  # coalesce whatever else has arrived
                    items.append(req.queue.get_nowait())
                finals: list[StreamEvent] = []
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    index, text, result = item
                    if result is None:
                        pending[index] = pending.get(index, "") + text
                    else:
                        finals.append(
                            StreamEvent(
                                index=index,
                                text=pending.pop(index, "") + text,
                                result=result,
                                tokens=result.completion_tokens,
                            )
                        )
                now = time.monotonic()
                if pending and now - last_flush >= interval:
                    last_flush = now
                    flush, pending = pending, {}
                    for index, text in flush.items():
                        if text:
                            # tokens so far (the decode thread appends; reading a list's length is safe)
                            yield StreamEvent(index=index, text=text, tokens=len(req.rows[index].tokens))
                for event in finals:
                    req.results_seen += 1
                    yield event
        finally:
            self._release(req)

    def cancel(self, request_id: str) -> bool:
        """Cancel every row of the request(s) with this id; False if none is queued or running.

        Their results come back with finish_reason "cancelled" and the text made so far."""
        return self._scheduler.cancel_id(request_id)

    def stats(self) -> dict[str, int | float]:
        """Counters since start: generated_tokens_total, prompt_tokens_total, requests_total
        (accepted), batch_steps_total (decode forwards), prefill_steps_total, cancelled_total (rows),
        rejected_total (Overloaded), shed_total (of those, refused for max_wait_s), failed_rows_total
        (rows failed alone), malloc_trims_total, spec_draft_tokens_total and spec_accepted_tokens_total
        (speculative decoding: drafts proposed, drafts accepted); gauges: active_rows, queued_requests, step_ms
        (moving average), kv_mb (the live rows' part of the KV cache), kv_buffer_mb (the batch's KV buffers
        as reserved: the rows they hold, the live ones rounded up, x their columns; untouched pages cost no
        RSS), kv_budget_mb (what admission may build up: scheduler.max_kv_mb, else a quarter of the machine's memory),
        chunked_prefills (long prompts being prefilled a chunk per step); admitted_late_total and
        admitted_late_ms_total (requests admitted under max_wait_s and answered after the time promised then,
        and by how much), plan_ratio (the median of answered / planned seconds over admission's recent plans;
        0 before any)."""
        s = self._scheduler
        cache = s._cache
        kv = s.kv_bytes(len(s.rows), cache.length) if cache is not None else 0
        buffer = s.kv_bytes(1, cache.reserved_positions()) if cache is not None else 0
        return {
            **s.counters,
            "active_rows": len(s.rows),
            "queued_requests": s.queued(),
            "step_ms": round(s.step_s * 1000, 3),
            "kv_mb": round(kv / 2**20, 3),
            "kv_buffer_mb": round(buffer / 2**20, 3),
            "kv_budget_mb": round((s.kv_budget or 0) / 2**20, 3),
            "chunked_prefills": len(s._chunking),
            "plan_ratio": round(statistics.median(s.plan_errors), 3) if s.plan_errors else 0.0,
        }

    def _fit(
        self, prompt: str | list[int] | ChatPrompt, params: GenerationParams
    ) -> tuple[str | list[int], GenerationParams, int | None]:
        """A ChatPrompt as this node's prompt ids, params and messages kept (`fit_chat`); any other
        prompt as it is."""
        if not isinstance(prompt, ChatPrompt):
            return prompt, params, None
        fitted = self.fit_chat(list(prompt.messages), params)
        return fitted.ids, fitted.params, fitted.kept

    def fit_chat(self, messages: list[ChatMessage], params: GenerationParams) -> FittedChat:
        """`messages` as this node's prompt ids (its chat template or the plain transcript), the
        oldest cut until it fits max_prompt_tokens and the model's context less max_new_tokens."""
        budget = self.prompt_limit(params)
        return fit_chat(self.tokenizer, messages, params, template=self.chat_template, max_tokens=budget)

    def prompt_limit(self, params: GenerationParams) -> int:
        """Prompt tokens a request with `params` may send: max_prompt_tokens, and the model's context
        less the request's max_new_tokens."""
        context = self._runner.max_positions
        if not context:
            return self.max_prompt_tokens
        return max(0, min(self.max_prompt_tokens, context - params.max_new_tokens))

    def count_tokens(self, text: str, template: bool = True) -> int:
        """Tokens `text` takes as a prompt (special tokens included, as in generate); with `template`
        False, the text's own tokens as the tokenizer encodes it, without the node's chat template."""
        if not template:
            return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        return len(self._encode(text))

    # -- submission ----------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        if self.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _submit(
        self,
        prompt: str | list[int],
        params: GenerationParams,
        request_id: str | None,
        *,
        streaming: bool,
        prompt_messages: int | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> Request:
        ids = list(prompt) if isinstance(prompt, list) else self._encode(prompt)
        if not ids:
            if self._bos_id is None:
                raise InvalidRequest("prompt: must not be empty (this model has no BOS token)", field="prompt")
            ids = [self._bos_id]
        context = self._runner.max_positions
        if context and len(ids) > context - 1:
            raise InvalidRequest(
                f"prompt: {len(ids)} tokens is above this request's limit of {self.prompt_limit(params)} prompt "
                f"tokens (the model's context of {context} tokens less max_new_tokens {params.max_new_tokens})",
                field="prompt",
            )
        if len(ids) > self.max_prompt_tokens:
            raise InvalidRequest(
                f"prompt: {len(ids)} tokens is above this node's limit of {self.max_prompt_tokens} prompt tokens "
                f"(max_prompt_tokens)",
                field="prompt",
            )
        if context and len(ids) + params.max_new_tokens > context:
            raise InvalidRequest(
                f"max_new_tokens: the prompt's {len(ids)} tokens + max_new_tokens {params.max_new_tokens} "
                f"exceed the model's context of {context} tokens (this request's prompt limit is "
                f"{self.prompt_limit(params)} tokens)",
                field="max_new_tokens",
            )
        vocab = self._grammars.vocab_size
        if params.logit_bias and max(params.logit_bias) >= vocab:
            raise InvalidRequest(
                f"logit_bias: token id {max(params.logit_bias)} is not in this model's vocabulary "
                f"(ids 0 to {vocab - 1})",
                field="logit_bias",
            )
        if params.num_return_sequences > self.max_batch_size:
            raise InvalidRequest(
                f"num_return_sequences: {params.num_return_sequences} is above this node's "
                f"max_batch_size of {self.max_batch_size}",
                field="num_return_sequences",
            )
        req = Request(
            request_id or uuid.uuid4().hex,
            ids,
            params,
            streaming=streaming,
            decode=self._decode,
            prompt_messages=prompt_messages,
            grammars=self._grammars.matchers(params, params.num_return_sequences),
            scope=scope,
            reserve_s=reserve_s,
        )
        self._scheduler.submit(req)
        return req
