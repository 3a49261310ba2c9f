"""Benchmark tool calls: N sampled calls per generator node of a config, every one parsed and validated.

    .venv/bin/python scripts/bench_tools.py [--config configs/default.yaml] [--calls 200] [--streams 16]

Each node is built as the server builds it (graph.models.node_engine.engine_for_node: runtime, quantization), and
asked `--calls` times, `--streams` at a time, for a call of one of two tools with `tool_choice:
required` at temperature 1.0 (graph/tools.py holds each call to its tool's schema). Every answer is
parsed back (graph/tools.parse_calls) and its arguments validated against the tool's JSON Schema
(jsonschema_rs); the script prints the count of valid calls and exits 1 if any answer was not one.
Then the same prompts (the tools' instructions written in) run free, without the grammar, for at most
as many new tokens as each call took; it prints the decode speed of each and the ratio.
Timings vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.chat_format import ChatMessage, ChatPrompt, generic_messages
from graph.config import load_config
from graph.params import GenerationParams
from graph.tools import ToolCalling, parse_calls

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIMER = {
    "type": "object",
    "properties": {
        "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
        "label": {"type": "string", "maxLength": 24},
    },
    "required": ["minutes", "label"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "set_timer": TIMER}
TOOLS = ToolCalling.model_validate(
    {
        "tools": [
            {"name": "get_weather", "description": "The weather forecast for a city.", "parameters": WEATHER},
            {"name": "set_timer", "description": "Start a kitchen timer.", "parameters": TIMER},
        ],
        "choice": "required",
        "parallel": False,
    }
)
QUESTIONS = [
    "What will the weather be in Lisbon this week?",
    "Set a timer for the pasta, 9 minutes.",
    "Is it going to rain in Oslo tomorrow?",
    "Remind me in an hour to call mum.",
    "How cold is it in Montreal in Fahrenheit?",
    "Time my run: 30 minutes.",
    "Weather for Tokyo for the next 3 days, please.",
    "I need a 5 minute timer for tea.",
]


def prompt(i: int, *, with_tools: bool = False) -> ChatPrompt:
    """Question i; `with_tools`: with the tools' instructions written in (the prompt a request with
    tools gets), so a free run prefills the same tokens as a held one and only the grammar differs."""
    messages = [ChatMessage(role="user", content=QUESTIONS[i % len(QUESTIONS)])]
    return ChatPrompt(messages=generic_messages(messages, TOOLS) if with_tools else messages)


async def ask(engine, streams: int, params: list[GenerationParams], *, free: bool = False) -> tuple[list, float]:
    """One request per params (request i: prompt i), at most `streams` at a time; (results, seconds)."""
    gate = asyncio.Semaphore(streams)

    async def one(i: int):
        async with gate:
            return (await engine.generate(prompt(i, with_tools=free), params[i]))[0]

    t0 = time.perf_counter()
    out = await asyncio.gather(*[one(i) for i in range(len(params))])
    return out, time.perf_counter() - t0


def check(results) -> tuple[int, list[str]]:
    """How many answers are one valid call, and why the others are not."""
    import jsonschema_rs

    valid, bad = 0, []
    for r in results:
        parsed = parse_calls(r.text, TOOLS)
        if len(parsed.calls) != 1 or parsed.content is not None:
            bad.append(f"{r.finish_reason}: {r.text[:120]!r}")
            continue
        call = parsed.calls[0]
        try:
            jsonschema_rs.validate(SCHEMAS[call.name], json.loads(call.arguments))
            valid += 1
        except jsonschema_rs.ValidationError as exc:
            bad.append(f"invalid {call.name}: {exc}")
    return valid, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--nodes", default="", help="Comma-separated nodes (default: every generator).")
    args = ap.parse_args()
    from graph.models.node_engine import engine_for_node
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    config = load_config(args.config)
    nodes = args.nodes.split(",") if args.nodes else list(config.generators)
    held = GenerationParams(max_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, tools=TOOLS)
    failed = False
    print(f"{'node':>10} {'valid':>9} {'free tok/s':>11} {'tools tok/s':>12} {'ratio':>6}  (streams {args.streams})")
    for name in nodes:
        node = config.generators[name]
        # A benchmark queues on purpose: no 429 from admission control (max_wait_s) while it does.
        node = node.model_copy(update={"scheduler": node.scheduler.model_copy(update={"max_wait_s": 3600.0})})
        engine = engine_for_node(
            name,
            node,
            threads=config.generator_threads(name),
            store_lookup=store_lookup,
            embedded_lookup=embedded_lookup,
            onnx_lookup=onnx_lookup,
        )
        engine.warmup()
        try:
            asyncio.run(ask(engine, 1, [held]))  # warm-up: llguidance's view of the tokenizer (once)
            asked = [held.model_copy(update={"seed": i}) for i in range(args.calls)]
            results, held_s = asyncio.run(ask(engine, args.streams, asked))
            valid, bad = check(results)
            tokens = [r.completion_tokens for r in results]
            # Free decoding, at most as many tokens per request as its call took, same prompts and streams.
            free_params = [GenerationParams(max_new_tokens=max(1, t), do_sample=True, temperature=1.0) for t in tokens]
            free, free_s = asyncio.run(ask(engine, args.streams, free_params, free=True))
            held_rate = sum(tokens) / held_s
            free_rate = sum(r.completion_tokens for r in free) / free_s
            ratio = held_rate / free_rate
            print(f"{name:>10} {valid:>4}/{len(results):<4} {free_rate:>11.1f} {held_rate:>12.1f} {ratio:>6.2f}")
            for why in bad[:5]:
                print(f"    not a valid call: {why}")
            failed |= valid != len(results)
        finally:
            engine.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
