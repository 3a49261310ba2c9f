"""Per-node speed and quality of every runtime option, beside llama.cpp on the same GGUF files.

    .venv/bin/python scripts/bench_node.py [--models smollm2-135m-instruct,gemma-3-270m] [--threads 2]
        [--runtimes float32,bfloat16,int8,int8_weight,int4_weight,int8_weight+compile,onnx-int4,onnx-int8,llamacpp,
                    llamacpp-fa-on,llamacpp-fa-off,hybrid,hybrid-concurrent,hybrid-onnx]

For each model and runtime option (a generator node's `runtime`: dtype/quantize/compile, or
backend onnx with its precision: onnx-int4, onnx-int4-acc1 (int4 weights, float32 activations),
onnx-int8, onnx-fp32; converted once into the BentoML store like `make prepare` does; or backend
llamacpp on the model's GGUF file, llamacpp-fa-on / llamacpp-fa-off with llama.cpp's flash attention
on / off; or hybrid: llamacpp for few rows and torch bfloat16 for many, built as a
node builds it, its crossover measured at warm-up; hybrid-concurrent without its step lock; hybrid-onnx with
onnx int8 for few rows, the single-stream winner on Intel AMX), one
engine (graph/engine) runs greedy, prompts of exactly --prompt-tokens tokens, --new-tokens new
tokens each, and prints: ms/token of a single stream, tokens/s at 1, 16 and 64 streams (generated
tokens over wall time, prefill included), start-up (load + warm-up) seconds, perplexity on
bench/heldout.txt, and greedy agreement with float32 (share of the first 32 greedy tokens of 4
fixed prompts equal to float32's, up to each prompt's first difference). llama.cpp's llama-bench
(one stream) and llama-batched-bench (16 and 64 sequences, same prompt and new-token counts, same
threads) run on the model's GGUF file when scripts/build_llama_cpp.sh has built them; its tokens/s
is B x new tokens over the whole run's time, the same measure as ours. Without those tools, llama.cpp's
single stream is measured through llama-cpp-python's high-level `Llama` (the library `make install`
builds). The ratio is ours / theirs.

Timings vary from machine to machine and run to run (2 shared cores): read ratios within one run.
The CPU model and its flags are printed first. This script asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from graph.config import ModelRef, RuntimeConfig
from graph.engine import GenerationEngine
from graph.models.runtimes import AUTO_BACKENDS, QUALITY_BOUND, choose, cpu_description, cpu_kind
from graph.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "bench" / "heldout.txt"
LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache" / "inference-graph" / "llama.cpp" / "bin"))
AGREE_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
    "The three primary colours are",
]
RUNTIMES = {
    "float32": RuntimeConfig(dtype="float32"),
    "bfloat16": RuntimeConfig(dtype="bfloat16"),
    "int8": RuntimeConfig(quantize="int8", dtype="float32"),
    "int8_weight": RuntimeConfig(quantize="int8_weight", dtype="bfloat16"),
    "int4_weight": RuntimeConfig(quantize="int4_weight", dtype="bfloat16"),
    "int8_weight+compile": RuntimeConfig(quantize="int8_weight", dtype="bfloat16", compile=True),
    "int4_weight+compile": RuntimeConfig(quantize="int4_weight", dtype="bfloat16", compile=True),
    # backend onnx (graph/engine/runners/onnx_runner.py): the project's engine over an ONNX Runtime conversion
    "onnx-int4": RuntimeConfig(backend="onnx", onnx_precision="int4"),
    "onnx-int4-acc1": RuntimeConfig(backend="onnx", onnx_precision="int4", onnx_accuracy_level=1),
    "onnx-int8": RuntimeConfig(backend="onnx", onnx_precision="int8"),
    "onnx-fp32": RuntimeConfig(backend="onnx", onnx_precision="fp32"),
    # backend llamacpp (graph/engine/runners/llamacpp_runner.py): the project's engine over llama.cpp on the GGUF file
    "llamacpp": RuntimeConfig(backend="llamacpp"),
    # the same with llama.cpp's flash attention named (runtime.flash_attn; llamacpp alone takes the default)
    "llamacpp-fa-on": RuntimeConfig(backend="llamacpp", flash_attn="on"),
    "llamacpp-fa-off": RuntimeConfig(backend="llamacpp", flash_attn="off"),
    # backend hybrid (graph/engine/hybrid.py): llamacpp for few rows, torch bfloat16 for many, the crossover
    # measured at warm-up; -concurrent: the same without the step lock (one side's sampling and bookkeeping
    # overlap the other's forward; the forwards still take turns on the node's one compute thread)
    "hybrid": RuntimeConfig(
        backend="hybrid", small=RuntimeConfig(backend="llamacpp"), large=RuntimeConfig(dtype="bfloat16")
    ),
    "hybrid-concurrent": RuntimeConfig(
        backend="hybrid", small=RuntimeConfig(backend="llamacpp"), large=RuntimeConfig(dtype="bfloat16")
    ),
    # onnx int8 for few rows: the fastest single stream on Intel AMX (docs/performance.md)
    "hybrid-onnx": RuntimeConfig(
        backend="hybrid",
        small=RuntimeConfig(backend="onnx", onnx_precision="int8"),
        large=RuntimeConfig(dtype="bfloat16"),
    ),
}


def model_dir(ref: str) -> str:
    if Path(ref).is_dir():
        return ref
    import bentoml

    return bentoml.models.get(ref).path


def gguf_file(name: str) -> Path | None:
    """The embedded model's GGUF file (assembled once for Gemma), or None."""
    from graph.models import embedded

    try:
        spec = embedded.get_embedded(name)
    except Exception:
        return None
    cache = ROOT / "artifacts" / "gguf"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / spec.gguf_file
    if not target.exists():
        src = embedded._gguf_source(spec, cache)
        if src != target:
            import shutil

            shutil.copyfile(src, target)  # a copy: the package may be reinstalled meanwhile
    return target


def fixed_prompts(tok, n: int, length: int) -> list[str]:
    """n different texts of exactly `length` tokens (BOS included where the tokenizer adds one)."""
    words = HELDOUT.read_text().split()
    out = []
    for i in range(n):
        ids = tok(" ".join(words[i * 7 :]), add_special_tokens=True)["input_ids"][:length]
        out.append(tok.decode(ids, skip_special_tokens=True))
    return out


def perplexity(model, tok, max_tokens: int = 512) -> float:
    ids = tok(HELDOUT.read_text(), return_tensors="pt").input_ids[:, :max_tokens]
    if hasattr(model, "sequence_logits"):  # the onnx runner
        logits = model.sequence_logits(ids)[:-1]
        return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


async def greedy_ids(engine: GenerationEngine, prompts: list[str], n: int) -> list[list[str]]:
    params = GenerationParams(max_new_tokens=n, logprobs=True)
    results = [(await engine.generate(p, params))[0] for p in prompts]
    return [[t.token for t in r.logprobs] for r in results]


def agreement(ours: list[list[str]], ref: list[list[str]]) -> float:
    same = total = 0
    for a, b in zip(ours, ref):
        total += len(b)
        same += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(total, 1)


async def single_stream(engine, text: str, new_tokens: int) -> float:
    params = GenerationParams(max_new_tokens=new_tokens)
    stamps: list[float] = []
    tokens = 0
    async for event in engine.stream(text, params):
        stamps.append(time.perf_counter())
        if event.result is not None:
            tokens = event.result.completion_tokens
    return (stamps[-1] - stamps[0]) / max(tokens - 1, 1) * 1000


async def concurrent(engine, texts: list[str], new_tokens: int) -> float:
    params = GenerationParams(max_new_tokens=new_tokens)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(t, params) for t in texts))
    return sum(r[0].completion_tokens for r in results) / (time.perf_counter() - t0)


def measure(path: str, name: str, runtime: RuntimeConfig, args, ref_ids, label: str = "") -> dict:
    from graph.models.loading import load_causal_lm

    if runtime.backend == "hybrid":
        return measure_hybrid(name, runtime, args, ref_ids, concurrent_steps=label.endswith("-concurrent"))
    t0 = time.perf_counter()
    if runtime.backend == "onnx":
        from graph.models.onnx_model import load
        from services.store import onnx_lookup

        model, tok = load(ModelRef(path=path), runtime, threads=args.threads, onnx_lookup=onnx_lookup)
    elif runtime.backend == "llamacpp":
        from graph.engine.runners.llamacpp_runner import LlamaCppRunner
        from graph.models.loading import load_generator_tokenizer

        gguf = gguf_file(name)
        if gguf is None:
            raise SystemExit(f"{name}: no GGUF file (backend llamacpp runs the embedded generators)")
        tok = load_generator_tokenizer(ModelRef(path=path), path)
        gen = json.loads((Path(path) / "generation_config.json").read_text()).get("eos_token_id")
        model = LlamaCppRunner(
            gguf,
            threads=args.threads,
            n_seq=max(args.levels) + 1,
            n_ctx_seq=max(512, 128 + args.new_tokens + 64),
            eos_ids=[gen] if isinstance(gen, int) else gen,
            flash_attn=runtime.flash_attn,
        )
    else:
        model, tok = load_causal_lm(ModelRef(path=path), runtime)
    loaded = time.perf_counter() - t0
    # Perplexity runs here, on this thread, before the engine starts: the engine's start dismisses
    # this thread's OpenMP pool (graph/engine/runners/torch_runner.py:release_openmp_pool). Run after the start,
    # it would make a second pool beside the decode thread's and every decode step would wake its
    # threads through futexes: measured on SmolLM2 int4_weight, 17.2 -> 30.7 ms/token and 257 ->
    # 233 tokens/s at 64 streams (the figures of the README's run before this fix).
    ppl = perplexity(model, tok)
    t1 = time.perf_counter()
    engine = GenerationEngine(
        model,
        tok,
        name=name,
        max_batch_size=max(args.levels),
        max_queue=1024,
        threads=args.threads,
        max_prompt_tokens=128,
        compile=runtime.compile,
    )
    engine.warmup(timeout=900)
    startup = loaded + time.perf_counter() - t1
    warm_compiles = getattr(engine._runner, "compiles", None)
    out: dict = {"startup_s": startup, "ppl": ppl}
    asyncio.run(drive(engine, tok, args, out))
    runner = engine._runner
    out["compiles_after_warmup"] = None if warm_compiles is None else runner.compiles - warm_compiles
    engine.close()
    out["agree"] = agreement(out["greedy"], ref_ids) if ref_ids is not None else 1.0
    del engine, model
    gc.collect()
    return out


async def drive(engine, tok, args, out: dict) -> None:
    """Greedy agreement prompts, the single stream (ms/token) and tokens/s at each level, into `out`."""
    texts = fixed_prompts(tok, max(args.levels), args.prompt_tokens)
    out["greedy"] = await greedy_ids(engine, AGREE_PROMPTS, 32)
    await concurrent(engine, texts[:4], 8)  # warm the batched paths
    out["ms"] = statistics.median([await single_stream(engine, texts[0], args.new_tokens) for _ in range(2)])
    for c in args.levels:
        out[c] = await concurrent(engine, texts[:c], args.new_tokens)


def measure_hybrid(name: str, runtime: RuntimeConfig, args, ref_ids, *, concurrent_steps: bool = False) -> dict:
    """backend hybrid as a node builds it (graph/models/node_engine.py): both sides loaded, the crossover
    measured at warm-up (its time is in the start-up seconds). Perplexity: the worse of the two sides.
    `concurrent_steps`: the two engines' steps without the step lock (the alternative to taking turns)."""
    from contextlib import nullcontext

    from graph.config import GeneratorNode
    from graph.models.node_engine import engine_for_node
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    node = GeneratorNode(
        model=ModelRef(path=name) if Path(name).is_dir() else ModelRef(embedded=name),
        runtime=runtime.model_copy(update={"threads": args.threads}),
        scheduler={"max_batch_size": max(args.levels), "max_queue": 1024},
        max_prompt_tokens=128,
        max_new_tokens_limit=max(64, args.new_tokens),
    )
    t0 = time.perf_counter()
    engine = engine_for_node(
        name,
        node,
        threads=args.threads,
        store_lookup=store_lookup,
        embedded_lookup=embedded_lookup,
        onnx_lookup=onnx_lookup,
    )
    assert not isinstance(engine, GenerationEngine)
    tok = engine.tokenizer
    compute = engine.large._runner.compute  # the node's compute thread: the sides' forwards run there
    small, large = engine.small._runner.inner, engine.large._runner.inner

    def small_ppl() -> float:  # llama.cpp: in a one-sequence context of its own (the node's rows hold 256 positions)
        from graph.engine.runners.llamacpp_runner import LlamaCppRunner

        if not isinstance(small, LlamaCppRunner):  # onnx: its runner scores a whole sequence itself
            return perplexity(small, tok)
        alone = LlamaCppRunner(small.gguf, threads=args.threads, n_seq=1, n_ctx_seq=512)
        try:
            return perplexity(alone, tok)
        finally:
            alone.close()

    t_ppl = time.perf_counter()
    ppl = max(compute.call(small_ppl), compute.call(lambda: perplexity(large.model, tok)))
    t0 += time.perf_counter() - t_ppl  # start-up without the perplexity runs, as for the other runtimes
    if concurrent_steps:
        for side in (engine.small, engine.large):
            side._scheduler.step_lock = nullcontext()
    engine.warmup(timeout=900)
    startup = time.perf_counter() - t0
    print(f"  {engine.runtime_name}; step ms by rows (small, large): {engine.measured}", flush=True)
    out: dict = {"startup_s": startup, "ppl": ppl, "compiles_after_warmup": None}
    asyncio.run(drive(engine, tok, args, out))
    stats = engine.stats()
    print(
        f"  requests started small / large: {stats['small_requests_total']:.0f} / {stats['large_requests_total']:.0f}"
    )
    engine.close()
    torch.set_num_threads(args.threads)  # the hybrid's engines left this thread's torch at one thread
    out["agree"] = agreement(out["greedy"], ref_ids) if ref_ids is not None else 1.0
    del engine
    gc.collect()
    return out


def llama_cpp_python(gguf: Path, args) -> dict:
    """llama.cpp's own single-sequence decode through llama-cpp-python's high-level `Llama` (the
    library `make install` builds; used where llama.cpp's bench tools are not built): tokens/s of
    --new-tokens greedy tokens after a --prompt-tokens prompt, best of 2."""
    import numpy as np
    from llama_cpp import Llama

    from graph.engine.runners.llamacpp_runner import load_backend

    load_backend(gguf)
    llm = Llama(str(gguf), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    best = float("inf")
    for _ in range(2):
        llm.reset()
        llm.eval(list(range(10, 10 + args.prompt_tokens)))
        t0 = time.perf_counter()
        for _ in range(args.new_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        best = min(best, time.perf_counter() - t0)
    llm.close()
    out = {"tg1": args.new_tokens / best, "ms": best / args.new_tokens * 1000, "source": "llama-cpp-python Llama"}
    for c in args.levels:
        if c > 1:
            out[c] = llama_cpp_batched(gguf, args, c)
    return out


def llama_cpp_batched(gguf: Path, args, streams: int) -> float:
    """llama.cpp's own batched decode through llama-cpp-python's low-level API, where llama-batched-bench is
    not built: `streams` sequences (kv_unified off) of --prompt-tokens prompt tokens each, prefilled, then
    --new-tokens greedy steps of one `llama_decode` holding every sequence's token; B x new tokens over the
    whole run's time, llama-batched-bench's measure (issue 31 measured such a loop at 291 tokens/s for 64
    sequences on Zen 4 where llama-batched-bench gave 288)."""
    import llama_cpp.llama_cpp as L
    import numpy as np

    model = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
    per_seq = -(-(args.prompt_tokens + args.new_tokens + 1) // 256) * 256
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.kv_unified = streams * per_seq, streams, False
    cp.n_batch = cp.n_ubatch = max(512, streams)
    cp.n_threads = cp.n_threads_batch = args.threads
    ctx = L.llama_init_from_model(model, cp)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(cp.n_batch, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """(seq, pos, token, wants logits) -> the greedy next token of each entry that wants logits."""
        nxt = []
        for start in range(0, len(entries), cp.n_batch):
            chunk = entries[start : start + cp.n_batch]
            for j, (seq, pos, tok, want) in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, 1
                batch.seq_id[j][0], batch.logits[j] = seq, want
            batch.n_tokens = len(chunk)
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            for j, (*_, want) in enumerate(chunk):
                if want:
                    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, j), shape=(n_vocab,))
                    nxt.append(int(logits.argmax()))
        return nxt

    p = args.prompt_tokens
    t0 = time.perf_counter()
    toks = decode([(s, i, 10 + (s * p + i) % 1000, i == p - 1) for s in range(streams) for i in range(p)])
    for step in range(args.new_tokens - 1):
        toks = decode([(s, p + step, toks[s], True) for s in range(streams)])
    elapsed = time.perf_counter() - t0
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return streams * args.new_tokens / elapsed


def llama_cpp(gguf: Path, args) -> dict:
    """llama.cpp's tokens/s at 1 stream (llama-bench tg) and at each level (llama-batched-bench);
    without the bench tools, one stream through llama-cpp-python's high-level API and the other levels
    through its low-level batched decode (llama_cpp_batched)."""
    bench, batched = LLAMA_CPP / "llama-bench", LLAMA_CPP / "llama-batched-bench"
    res: dict = {}
    if not (bench.exists() and batched.exists()):
        print(f"  llama.cpp tools: not built ({LLAMA_CPP}; scripts/build_llama_cpp.sh, ~25 min, once)")
        try:
            return llama_cpp_python(gguf, args)
        except ImportError:
            return res
    out = subprocess.run(
        [
            str(bench),
            "-m",
            str(gguf),
            "-t",
            str(args.threads),
            "-p",
            str(args.prompt_tokens),
            "-n",
            str(args.new_tokens),
            "-r",
            "2",
            "-o",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    ).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) > 5 and cells[-1].replace(".", "", 1).isdigit():
            header = [h.strip('"') for h in out.splitlines()[0].split(",")]
            row = dict(zip(header, cells))
            if row.get("n_gen") == str(args.new_tokens) and row.get("n_prompt") == "0":
                res["ms"] = 1000 / float(row["avg_ts"])
                res["tg1"] = float(row["avg_ts"])
    npl = ",".join(str(c) for c in args.levels)
    out = subprocess.run(
        [
            str(batched),
            "-m",
            str(gguf),
            "-t",
            str(args.threads),
            "-c",
            "8192",
            "-npp",
            str(args.prompt_tokens),
            "-ntg",
            str(args.new_tokens),
            "-npl",
            npl,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            b, t = int(cells[2]), float(cells[8])
            res[b] = b * args.new_tokens / t
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m")
    ap.add_argument(
        "--runtimes",
        default="float32,bfloat16,int8,int8_weight,int4_weight,int8_weight+compile,onnx-int8,onnx-int4,llamacpp",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--no-llama-cpp", action="store_true")
    args = ap.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    logging.basicConfig(level=logging.WARNING, format="  [log] %(message)s")
    torch.set_num_threads(args.threads)
    print(
        f"CPU: {cpu_description()} (kind {cpu_kind()}); torch {torch.__version__}, {args.threads} threads, "
        f"{args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens, greedy"
    )
    for name in args.models.split(","):
        path = model_dir(name)
        print(f"\n== {name} ==")
        rows: dict[str, dict] = {}
        ref_ids = None
        for rt in args.runtimes.split(","):
            print(f"  measuring {rt} ...", flush=True)
            rows[rt] = measure(path, name, RUNTIMES[rt], args, ref_ids, label=rt)
            if rt == "float32":
                ref_ids = rows[rt]["greedy"]
        theirs = {} if args.no_llama_cpp or gguf_file(name) is None else llama_cpp(gguf_file(name), args)
        base_ppl = rows.get("float32", {}).get("ppl")
        head = f"{'runtime':<22}{'start s':>8}{'ms/tok':>8}" + "".join(f"{f'{c} str':>9}" for c in args.levels)
        print(head + f"{'ppl':>8}{'vs f32':>8}{'agree':>7}{'recompiles':>11}")
        for rt, r in rows.items():
            d = f"{(r['ppl'] / base_ppl - 1) * 100:+.1f}%" if base_ppl else "-"
            flag = " " if not base_ppl or r["ppl"] <= base_ppl * (1 + QUALITY_BOUND) else "!"
            recompiles = "-" if r["compiles_after_warmup"] is None else r["compiles_after_warmup"]
            print(
                f"{rt:<22}{r['startup_s']:>8.1f}{r['ms']:>8.1f}"
                + "".join(f"{r[c]:>9.1f}" for c in args.levels)
                + f"{r['ppl']:>8.2f}{d:>7}{flag}{r['agree']:>7.0%}{recompiles:>9}"
            )
        if theirs:
            label = "llama.cpp (Python API)" if theirs.get("source") else "llama.cpp (GGUF)"
            print(
                f"{label:<22}{'':>8}{theirs.get('ms', float('nan')):>8.1f}"
                + "".join(f"{theirs.get(c, theirs.get('tg1') if c == 1 else float('nan')):>9.1f}" for c in args.levels)
            )
            print("ratio ours / llama.cpp (tokens/s; ms/token inverted):")
            for rt, r in rows.items():
                cells = "".join(
                    f"{r[c] / theirs.get(c, theirs.get('tg1') if c == 1 else float('nan')):>9.2f}" for c in args.levels
                )
                print(f"  {rt:<20}{'':>8}{theirs.get('ms', float('nan')) / r['ms']:>8.2f}" + cells)
        print(f"('!': perplexity more than {QUALITY_BOUND:.0%} above float32; never picked by quantize: auto)")
        passing = {rt: r for rt, r in rows.items() if not base_ppl or r["ppl"] <= base_ppl * (1 + QUALITY_BOUND)}
        if passing:
            busiest = max(args.levels)
            fastest = {
                "latency": min(passing, key=lambda rt: passing[rt]["ms"]),
                "throughput": max(passing, key=lambda rt: passing[rt][busiest]),
            }
            picks = {goal: choose(model=name, goal=goal, backends=AUTO_BACKENDS)[1] for goal in fastest}
            print(
                f"fastest within the bound: latency (ms/tok) {fastest['latency']}, throughput ({busiest} str) "
                f"{fastest['throughput']}; backend: auto picks on this CPU: "
                + ", ".join(f"{goal} {_label(c)}" for goal, c in picks.items())
            )


def _label(c) -> str:
    if c.backend == "hybrid":
        return f"hybrid ({_label(c.small)} below {c.crossover_rows} rows, {_label(c.large)} from {c.crossover_rows})"
    if c.backend == "llamacpp":
        return "llamacpp"
    if c.backend == "onnx":
        return f"onnx-{c.onnx_precision}" + (f"-acc{c.onnx_accuracy_level}" if c.onnx_accuracy_level else "")
    return c.quantize if c.quantize != "none" else c.dtype


if __name__ == "__main__":
    main()
