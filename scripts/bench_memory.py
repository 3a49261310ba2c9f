"""Long prompts, prefix reuse and shared prefills on one generator node of a config, in-process (issue #32).

    .venv/bin/python scripts/bench_memory.py [--config configs/default.yaml] [--node smollm2]
        [--long-tokens 8000] [--streams 8] [--turns 8] [--chunk-tokens 512] [--prefill-step-share 0.5] [--long-only]
        [--long-timeout S] [--alone-s 10] [--no-prefill-lane] [--backend torch --dtype bfloat16]

Prints, for the node's engine (its config's runtime, scheduler and prefix cache; greedy), in this order:
- chat: time to first token of each of --turns turns of one conversation through the node's chat template
  (each turn: the whole history, the last reply and a new ~40-token message), kept prompts and replies on
  and off (ratio turn N / turn 1: target <= 1.3), and the prompt tokens each turn prefilled;
- best_of 3: three identical prompts sent at once, prompt tokens prefilled (target: the prompt once);
- long prompt (unless --long-tokens 0): a prompt of --long-tokens tokens is answered (or the error it got; if
  admission refuses it, that is printed and it is sent again with shedding off, to measure the gaps), its time
  to first token, and the p95 gap between tokens of --streams other streams alone and while it is prefilled,
  until its first token (ratio: target <= 2; alone = the same streams, each sent again when it ends, for
  --alone-s seconds before the long prompt, so both sides hold their restarts' prefills), their p99 and
  longest gap, with the number of gaps that makes, the longest time no stream got a token (they ran beside the
  whole prefill) and the streams admission refused (sent again); their gap after it, while its long row
  decodes in their batch; and the chunks it was read in (their count and mean size: beside running streams
  they are sized by scheduler.prefill_step_share, graph/engine/chunk_budget.py; on runtimes with a prefill
  lane, whole chunks run beside the decode steps instead, scheduler.prefill_lane); the peak of /node_stats'
  kv_mb (the live rows' part) and kv_buffer_mb (the batch buffers as reserved) while it ran, beside
  kv_budget_mb (each side of a hybrid apart).
Timings vary from machine to machine and run to run (2 shared cores): read ratios within one run.
This script asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.chat_format import ChatMessage, ChatPrompt, clean_reply
from graph.config import load_config
from graph.errors import Overloaded
from graph.models.node_engine import engine_for_node
from graph.models.runtimes import cpu_description
from graph.params import GenerationParams

TEXT = (
    "A serving platform keeps every model's whole context within reach: a long document, a chat's history, "
    "the same system prompt sent by many callers. Each token of a prompt costs a forward pass once. "
)


REFUSED = [0]  # streams admission refused (the long prompt's prefill counted against them)


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) >= 20 else max(xs)


def prompt_ids(engine, tokens: int, salt: str = "") -> list[int]:
    ids = engine.tokenizer(salt + TEXT * (tokens // 20 + 1), add_special_tokens=False)["input_ids"]
    return list(ids[:tokens])


async def stream_gaps(engine, prompt: str, new: int, gaps: list[tuple[float, float]], again: bool = False) -> None:
    """One stream's (time, gap since its last event) pairs; with `again`, a new stream whenever one ends."""
    while True:
        last = None
        try:
            async for _ in engine.stream(prompt, GenerationParams(max_new_tokens=new)):
                now = time.monotonic()
                if last is not None:
                    gaps.append((now, now - last))
                last = now
        except Overloaded:  # admission refused a new stream: counted, and sent again shortly
            REFUSED[0] += 1
            await asyncio.sleep(0.05)
            continue
        if not again:
            return


def side_of(engine):
    """The engine whose scheduler serves this script's rows: a hybrid node (what `auto` picks on Intel with AMX)
    starts fewer rows than its crossover (12 on the default models; here at most --streams + 1) on its small
    side, so its counters, chunk size and prefix cache are the small side's."""
    small = getattr(engine, "small", None)
    if small is not None and getattr(engine, "crossover_rows", None) is not None:
        return small
    return engine


async def long_prompt(engine, args) -> None:
    alone: list[tuple[float, float]] = []
    # once to warm the kernels for these batch shapes (torch's first steps at a shape are slow), then measured
    await asyncio.gather(*[stream_gaps(engine, f"Story {i}:", 48, []) for i in range(args.streams)])
    await asyncio.gather(*[stream_gaps(engine, f"Story {i}:", 48, alone) for i in range(args.streams)])
    during: list[tuple[float, float]] = []
    streams = [
        asyncio.ensure_future(stream_gaps(engine, f"Tale {i}:", 256, during, again=True)) for i in range(args.streams)
    ]
    # The same streams (each sent again when it ends: their restarts' prefills are in their gaps) alone for
    # --alone-s seconds: the baseline of the ratio, like for like.
    await asyncio.sleep(2.0)
    t_alone = time.monotonic()
    await asyncio.sleep(args.alone_s)
    same_alone = [g for t, g in during if t >= t_alone]
    ids = prompt_ids(engine, args.long_tokens)
    sched = side_of(engine)._scheduler
    steps_before, tokens_before = sched.counters["prefill_steps_total"], sched.counters["prompt_tokens_total"]
    lane_before = sched.counters["prefill_lane_chunks_total"]
    routed = dict(getattr(engine, "_routed", {}))  # a hybrid: requests started on each side
    start = time.monotonic()
    refused = ""

    async def send():
        return await asyncio.wait_for(engine.generate(ids, GenerationParams(max_new_tokens=8)), args.long_timeout)

    # /node_stats' kv_mb, kv_buffer_mb, kv_budget_mb, sampled per engine (a hybrid's two sides apart)
    sides = {"small": engine.small, "large": engine.large} if routed else {"node": engine}
    gauges: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}

    async def sample() -> None:
        while True:
            for name, side in sides.items():
                s = side.stats()
                gauges[name].append((s["kv_mb"], s["kv_buffer_mb"], s["kv_budget_mb"]))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())

    try:
        try:
            (r,) = await send()
        except Overloaded as exc:  # admission's answer is printed; the gaps are measured with shedding off
            refused = f"refused with shedding on ({exc}); "
            bound, sched.max_wait_s = sched.max_wait_s, None
            steps_before, tokens_before = sched.counters["prefill_steps_total"], sched.counters["prompt_tokens_total"]
            start = time.monotonic()
            try:
                (r,) = await send()
            finally:
                sched.max_wait_s = bound
        status = refused + f"answered ({r.prompt_tokens} prompt tokens, {r.completion_tokens} new)"
        first = r.first_token_ms or 0.0
    except TimeoutError:  # cancelled: the gaps so far are still measured
        read = sched.counters["prompt_tokens_total"] - tokens_before
        status = refused + f"not answered within --long-timeout {args.long_timeout:g} s (about {read} tokens read)"
        first = float("nan")
    except Exception as exc:  # printed, not raised: this is a report
        status, first = refused + f"failed: {type(exc).__name__}: {exc}", float("nan")
    end = time.monotonic()
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    steps = sched.counters["prefill_steps_total"] - steps_before
    tokens = sched.counters["prompt_tokens_total"] - tokens_before
    if routed:  # a side that refuses passes the request to the other: which side served the long prompt and streams
        moved = {side: n - routed[side] for side, n in engine._routed.items()}
        print(f"  hybrid: requests started meanwhile (the long prompt and the streams sent again) per side: {moved}")
    for s in streams:
        s.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    read = start + first / 1000 if first == first else end  # its first token: the prefill is over
    window = [g for t, g in during if start <= t <= read]
    after = [g for t, g in during if read < t <= end]  # its own tokens, its long row in the batch
    once = p95([g for _, g in alone]) * 1000
    a, d = p95(same_alone) * 1000, (p95(window) * 1000 if window else float("nan"))
    print(f"long prompt {args.long_tokens} tokens: {status}; first token {first / 1000:.2f} s")
    print(
        f"  {args.streams} streams' gap p95: alone {a:.1f} ms (the same streams, sent again as they end, for "
        f"{args.alone_s:g} s: {len(same_alone)} gaps), during its prefill {d:.1f} ms ({d / a:.2f}x)"
    )
    print(f"  (alone, each stream once for 48 tokens, no restarts: gap p95 {once:.1f} ms; ratio {d / once:.2f}x)")
    if window:
        q = statistics.quantiles(window, n=100) if len(window) >= 100 else [max(window)] * 99
        med, top = statistics.median(window) * 1000, max(window) * 1000
        print(f"  during its prefill: gap median {med:.1f} ms, p99 {q[98] * 1000:.1f} ms, max {top:.1f} ms")
        span = (read - start) / 4  # does the gap grow with the context read so far?
        parts = [[g for t, g in during if start + i * span <= t < start + (i + 1) * span] for i in range(4)]
        quarters = ", ".join(f"{p95(xs) * 1000:.1f}" if xs else "-" for xs in parts)
        print(f"  gap p95 per quarter of its prefill (ms): {quarters}")
    # the streams ran beside the whole prefill (not only its start): the longest time no stream got a token
    ticks = [start, *sorted(t for t, _ in during if start <= t <= read), read]
    idle = max(b - a for a, b in zip(ticks, ticks[1:]))
    print(f"  gaps during its prefill: {len(window)}; streams refused by admission and sent again: {REFUSED[0]}")
    print(f"  longest time without any stream's token during its prefill: {idle:.2f} s")
    if after:
        late = statistics.median(after) * 1000
        print(f"  their gap median after its first token (its long row in their batch): {late:.1f} ms")
    print(
        f"  prefill steps meanwhile: {steps} for {tokens} prompt tokens (the streams' own prompts included), "
        f"mean {tokens / max(1, steps):.0f} tokens; step share {sched.chunk_sizer.share}; prefill lane "
        f"{'on' if sched.prefill_lane else 'off'} ({sched.counters['prefill_lane_chunks_total'] - lane_before} chunks "
        "on it, beside the decode steps)"
    )
    for name, seen in gauges.items():
        if seen:
            print(
                f"  KV gauges while it ran ({name}, peak): kv_mb {max(g[0] for g in seen):.0f} MB, "
                f"kv_buffer_mb {max(g[1] for g in seen):.0f} MB (reserved), kv_budget_mb {seen[-1][2]:.0f} MB"
            )


def text_of(engine, tokens: int, salt: str = "") -> str:
    return engine.tokenizer.decode(prompt_ids(engine, tokens, salt=salt))


async def chat(engine, args, scope: str) -> tuple[list[float], list[int], int]:
    """One conversation through the node's chat template, every message kept: time to first token and
    prompt tokens prefilled per turn, and the last turn's prompt length."""
    messages = [ChatMessage(role="user", content=text_of(engine, 200, salt=scope))]
    params = GenerationParams(max_new_tokens=32)
    ttft, prefilled, prompt = [], [], 0
    for turn in range(args.turns):
        before = engine.stats()["prompt_tokens_total"]
        (r,) = await engine.generate(ChatPrompt(messages=messages), params, scope=scope)
        ttft.append((r.first_token_ms or 0.0) / 1000)
        prefilled.append(int(engine.stats()["prompt_tokens_total"] - before))
        prompt = r.prompt_tokens
        if r.prompt_messages != len(messages):
            print(f"  turn {turn + 1}: only {r.prompt_messages} of {len(messages)} messages fit (history cut)")
        question = ChatMessage(role="user", content=text_of(engine, 40, salt=f"Question {turn}: "))
        messages = [*messages, ChatMessage(role="assistant", content=clean_reply(r.text)), question]
    return ttft, prefilled, prompt


async def main(args) -> None:
    cfg = load_config(args.config)
    node = cfg.generators[args.node]
    update = {k: v for k, v in (("backend", args.backend), ("dtype", args.dtype)) if v}
    if update:  # e.g. --backend torch --dtype bfloat16
        node = node.model_copy(update={"runtime": node.runtime.model_copy(update=update)})
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    lookups = dict(store_lookup=store_lookup, embedded_lookup=embedded_lookup, onnx_lookup=onnx_lookup)
    engine = engine_for_node(args.node, node, threads=args.threads or node.runtime.threads, **lookups)
    engine.warmup()
    print(f"{cpu_description()}; node {args.node} ({engine.runtime_name}), {os.cpu_count()} cores (shared)")
    limit = engine.prompt_limit(GenerationParams(max_new_tokens=8))
    side = side_of(engine)
    if side is not engine:
        print(f"hybrid node: these rows start on its small side ({side.runtime_name}); its scheduler is measured")
    print(f"context {side._runner.max_positions}, prompt limit at 8 new tokens: {limit}")  # pyright: ignore[reportAttributeAccessIssue]
    sched = side._scheduler  # pyright: ignore[reportAttributeAccessIssue]
    if args.chunk_tokens:
        sched.chunk_tokens = args.chunk_tokens
    if args.no_prefill_lane:
        sched.prefill_lane = False
    if args.prefill_step_share is not None:
        sched.chunk_sizer.share = args.prefill_step_share if args.prefill_step_share > 0 else None
    try:
        if args.long_only:
            await long_prompt(engine, args)
            return
        # a first prompt of a chat turn's size pays the kernels' one-time setup, so turn 1 is not cold
        await engine.generate(prompt_ids(engine, 230, salt="warm-up"), GenerationParams(max_new_tokens=4), scope="w")
        on = await chat(engine, args, "chat-on")
        keep = sched.prefixes
        sched.prefixes = None
        off = await chat(engine, args, "chat-off")
        sched.prefixes = keep

        def fmt(xs: list[float]) -> str:
            return " ".join(f"{x:.2f}" for x in xs)

        for name, (xs, done, prompt) in (("on ", on), ("off", off)):
            ratio = xs[-1] / xs[0]
            print(f"chat TTFT (s) per turn, kept prompts {name}: {fmt(xs)}  (turn {args.turns} / turn 1: {ratio:.2f}x)")
            per_turn = " ".join(map(str, done))
            print(f"  prompt tokens prefilled per turn: {per_turn} (turn {args.turns}'s prompt: {prompt} tokens)")
        ids = prompt_ids(engine, 300, salt="best_of ")
        before = engine.stats()["prompt_tokens_total"]
        await asyncio.gather(*[engine.generate(ids, GenerationParams(max_new_tokens=16), scope="b") for _ in range(3)])
        done = engine.stats()["prompt_tokens_total"] - before
        share = done / len(ids)
        print(f"best_of 3 on a {len(ids)}-token prompt: {done:.0f} prompt tokens prefilled ({share:.2f}x the prompt)")
        if args.long_tokens:
            await long_prompt(engine, args)
        print("counters:", {k: v for k, v in engine.stats().items() if "prefix" in k or "prompt" in k or "kv" in k})
    finally:
        engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--node", default="smollm2")
    parser.add_argument("--long-tokens", type=int, default=8000, help="0: skip the long prompt (it runs last)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-tokens", type=int, default=None, help="prompt tokens prefilled per step (512)")
    parser.add_argument(
        "--prefill-step-share",
        type=float,
        default=None,
        help="a chunk's share of the decode step beside running streams (the config's; 0: off, fixed-size chunks)",
    )
    parser.add_argument(
        "--no-prefill-lane", action="store_true", help="chunks between the decode steps (scheduler.prefill_lane: false)"
    )
    parser.add_argument(
        "--alone-s", type=float, default=10.0, help="seconds the streams run alone before the long prompt (baseline)"
    )
    parser.add_argument("--long-only", action="store_true", help="only the long prompt beside the streams")
    parser.add_argument("--long-timeout", type=float, default=None, help="seconds; the long prompt is then cancelled")
    parser.add_argument("--backend", default=None, help="the node's runtime backend instead of the config's")
    parser.add_argument("--dtype", default=None, help="the node's runtime dtype instead of the config's")
    asyncio.run(main(parser.parse_args()))
