"""One stream on a llamacpp or onnx node: speculative decoding (prompt-lookup drafts) on vs off vs llama.cpp's decode.

    .venv/bin/python scripts/bench_spec.py [--model smollm2-135m-instruct] [--threads 2] [--new-tokens 128]
        [--drafts 4a,4] [--repeats 2] [--backend llamacpp|onnx]

The node is the default config's SmolLM2 node on `runtime: {backend: llamacpp}` (its packaged Q4_1
GGUF, chat template on), or with --backend onnx on `{backend: onnx, onnx_precision: int8}`, greedy, one
request at a time; the baseline is always llama.cpp's own decode of the packaged GGUF. Two kinds of
prompts: ones whose answers repeat their prompt (quote a text, correct a text, answer from a passage:
drafts hit) and free writing (drafts rarely hit). For each prompt, decode tokens/s (tokens after the first over the time
from the first streamed token to the last; prefill excluded): speculation off; on, for each --drafts
value (draft_tokens; a trailing "a" = adaptive: true); and llama.cpp's own one-token-at-a-time greedy
decode of the same prompt ids for the same number of tokens (llama-cpp-python's high-level `Llama`,
same GGUF, threads and CPU variant; its per-token time, prefill excluded). Best of --repeats. Also
drafts accepted / proposed (summed over the speculative runs) and whether every run's text equals
the plain one. The CPU model and flags are printed first. Timings vary 15-25% from run to run on 2
shared cores: compare within one run. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.params import GenerationParams

TEXT = (
    "The lighthouse on Gull Point was built in 1872 from granite quarried on the island itself. For ninety "
    "years a keeper lived in the cottage at its foot, climbed the 114 steps every evening at dusk, lit the "
    "lamp, wound the clockwork that turned the lens, and wrote one line in the logbook before bed. The light "
    "was automated in 1962, and the last keeper, Margaret Hale, moved to the mainland that spring. Today the "
    "cottage is a small museum, open from May to September, and the logbooks are kept in the town library."
)
TYPOS = TEXT.replace("granite", "granit").replace("evening", "evenning").replace("library", "libary")
HIT = {
    "quote": f"Repeat the following text exactly, word for word:\n\n{TEXT}",
    "edit": f"Correct the spelling mistakes in this text and return the whole corrected text:\n\n{TYPOS}",
    "rag": f"Passage:\n{TEXT}\n\nUsing only the passage, describe what a keeper did every evening and what "
    "happened in 1962. Quote the passage where you can.",
}
MISS = {
    "poem": "Write a short poem about the sea.",
    "story": "Tell me a story about a dragon who is afraid of the dark.",
    "advice": "Give me three tips for sleeping better.",
}


def node_engine(model: str, threads: int, spec: dict | None, backend: str = "llamacpp"):
    from graph.config import GeneratorNode
    from graph.models.node_engine import engine_for_node
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    sched = {"max_batch_size": 4, "speculative": spec}  # None = off
    runtime: dict = {"backend": backend, "threads": threads}
    if backend == "onnx":
        runtime["onnx_precision"] = "int8"
    node = GeneratorNode(model={"embedded": model}, chat_template=True, runtime=runtime, scheduler=sched)
    lookups = dict(embedded_lookup=embedded_lookup, store_lookup=store_lookup, onnx_lookup=onnx_lookup)
    engine = engine_for_node(model, node, **lookups)
    engine.start()
    engine.warmup(timeout=300)
    return engine


async def one_stream(engine, ids: list[int], new_tokens: int) -> tuple[float, int, str]:
    """Decode ms/token (first streamed token to last), completion tokens, text."""
    stamps: list[float] = []
    result = None
    async for event in engine.stream(ids, GenerationParams(max_new_tokens=new_tokens)):
        stamps.append(time.perf_counter())
        if event.result is not None:
            result = event.result
    assert result is not None
    # Tokens after the first over the time from the first event to the last.
    return (stamps[-1] - stamps[0]) / max(result.completion_tokens - 1, 1) * 1000, result.completion_tokens, result.text


def llama_own(gguf: Path, threads: int):
    from llama_cpp import Llama

    from graph.engine.runners.llamacpp_runner import load_backend

    load_backend(gguf)
    return Llama(str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)


def llama_ms(llm, ids: list[int], n: int) -> float:
    """llama.cpp's greedy decode of `n` tokens after `ids`, one token per llama_decode: ms/token."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(n - 1):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return (time.perf_counter() - t0) / max(n - 1, 1) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--drafts", default="8a", help="draft_tokens per speculative run, 'a' = adaptive (e.g. 4a,4,8a)")
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--min-ngram", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", default="hit,miss")
    ap.add_argument(
        "--backend", default="llamacpp", choices=["llamacpp", "onnx"], help="the node's runtime (onnx: int8)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from graph.models.gguf_model import embedded_gguf
    from graph.models.runtimes import cpu_description

    on = "GGUF on llamacpp" if args.backend == "llamacpp" else "on onnx int8"
    print(f"CPU: {cpu_description()}; threads {args.threads}; {args.model} {on}; greedy, one stream")
    prompts = {**(HIT if "hit" in args.prompts else {}), **(MISS if "miss" in args.prompts else {})}
    configs: dict[str, dict | None] = {"off": None}
    for d in (d for d in args.drafts.split(",") if d):
        spec = {"ngram": args.ngram, "min_ngram": args.min_ngram, "draft_tokens": int(d.rstrip("a"))}
        configs[f"on k={d}"] = {**spec, "adaptive": d.endswith("a")}
    engines = {name: node_engine(args.model, args.threads, spec, args.backend) for name, spec in configs.items()}
    plain = engines["off"]
    ids = {name: plain._encode(text) for name, text in prompts.items()}
    llm = llama_own(embedded_gguf(args.model), args.threads)
    print(f"prompt tokens: {', '.join(f'{n} {len(v)}' for n, v in ids.items())}; {args.new_tokens} new tokens")
    head = ["prompt", "kind", "llama.cpp tok/s", *(f"{c} tok/s" for c in configs)]
    head += [f"{c} / llama.cpp" for c in configs if c != "off"] + ["accepted", "same text"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    ratios: dict[str, dict[str, list[float]]] = {c: {"hit": [], "miss": []} for c in configs}
    for name, pid in ids.items():
        kind = "hit" if name in HIT else "miss"
        best = {c: float("inf") for c in configs}
        texts, tokens = {}, {}
        drafted = accepted = 0
        ref_ms = float("inf")
        for _ in range(args.repeats):
            for c, eng in engines.items():
                before = eng.stats()
                ms, n, text = asyncio.run(one_stream(eng, pid, args.new_tokens))
                best[c], texts[c], tokens[c] = min(best[c], ms), text, n
                if c != "off":
                    after = eng.stats()
                    drafted += after["spec_draft_tokens_total"] - before["spec_draft_tokens_total"]
                    accepted += after["spec_accepted_tokens_total"] - before["spec_accepted_tokens_total"]
            ref_ms = min(ref_ms, llama_ms(llm, pid, tokens["off"]))
        ref = 1000 / ref_ms
        for c in configs:
            ratios[c][kind].append(1000 / best[c] / ref)
        row = [name, kind, f"{ref:.1f}", *(f"{1000 / best[c]:.1f}" for c in configs)]
        row += [f"{1000 / best[c] / ref:.2f}x" for c in configs if c != "off"]
        row += [f"{accepted}/{drafted}", "yes" if all(t == texts["off"] for t in texts.values()) else "NO"]
        print("| " + " | ".join(row) + " |")
    for c in configs:
        parts = [f"{k} {statistics.geometric_mean(v):.2f}x" for k, v in ratios[c].items() if v]
        print(f"{c}: geometric mean vs llama.cpp: {', '.join(parts)}")
    for eng in engines.values():
        eng.close()
    llm.close()


if __name__ == "__main__":
    main()
