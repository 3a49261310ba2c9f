"""What `runtime: {quantize: auto}` picks on this CPU: a table measured by `make bench-node`.

The choice is made from a table, not by timing at start-up: start-up stays short and two replicas
on the same kind of machine make the same choice. Each entry is the fastest option, for one goal
(`runtime.optimize`: latency = one stream, throughput = 16-64 streams), that
scripts/bench_node.py measured on a machine of that CPU kind whose perplexity on
bench/heldout.txt stayed within QUALITY_BOUND of float32 (options above the bound are never
entered here). Where a kind was never measured, the entry says so and falls back to the measured
kind it most resembles.

CPU kinds, from /proc/cpuinfo flags: amx (Intel AMX: bfloat16 matrix units), avx512_bf16 (AVX-512
with bfloat16 dot products, e.g. AMD EPYC Zen 4), avx512 (AVX-512 without bfloat16), avx2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

QUALITY_BOUND = 0.03  # perplexity at most 3% above float32's


@dataclass(frozen=True)
class Choice:
    dtype: str  # float32 | bfloat16 (torch backend)
    quantize: str  # none | int8 | int8_weight | int4_weight (torch backend)
    compile: bool
    why: str
    models: frozenset[str] | None = None  # measured within the bound for these models only; None = any
    backend: str = "torch"  # torch | onnx (runners/onnx_runner.py) | llamacpp (runners/llamacpp_runner.py) | hybrid
    onnx_precision: str = "int4"  # backend onnx: int4 | int8 | fp32
    onnx_accuracy_level: int | None = None  # backend onnx: the builder's accuracy_level (None = its default)
    # backend hybrid (graph/engine/hybrid.py): the choice for few rows, the one for many, and the node rows from
    # which new requests start on `large`; the `why` names the measurement the crossover comes from.
    small: Choice | None = None
    large: Choice | None = None
    crossover_rows: int | None = None


Goal = Literal["latency", "throughput"]
# What `runtime: {backend: auto}` may resolve to (a hybrid: one node on two of the others).
AUTO_BACKENDS = ("hybrid", "llamacpp", "onnx", "torch")

# Measured with `make bench-node` (SmolLM2-135M-Instruct and Gemma 3 270M, 2 threads); see
# docs/performance.md. Dynamic int8 (`quantize: int8`) is never entered: its perplexity on
# bench/heldout.txt was +232% over float32 on SmolLM2 (+93% on Gemma), far outside the bound. The
# compiled step is not entered either: it measured no faster than eager on the AVX-512 EPYC and its
# warm-up took 42-76 s there (SmolLM2 int8 weights 22.1 vs 20.6 ms/token).
#
# Two goals (`runtime.optimize`), because the fastest option depends on the batch: ATen's
# weight-only kernels read a quarter (int4) or half (int8) of bfloat16's bytes, which is what a
# single stream waits on, but they unpack the weights again for every row block, so with 16-64 rows
# in the batch plain bfloat16 matrix products (oneDNN) are faster. (Tried and dropped for throughput:
# one-token attention as two matrix products instead of SDPA, 2-3.5x faster per layer on contiguous
# keys, but slower than SDPA on the KV cache's strided views: 64 streams with 256-token prompts
# 149-161 -> 118-123 tokens/s.)
SMOLLM2 = frozenset({"smollm2-135m-instruct"})
_EPYC = "measured on AMD EPYC with AVX-512 + AVX512-BF16 (make bench-node, 2 threads)"
_AMX = Choice(
    "bfloat16",
    "none",
    False,
    "measured on Intel with AMX (make bench-engine): bfloat16 32 ms/token single stream, "
    "436 tokens/s at 64 streams; weight-only int4 not measured there yet",
)
# Intel with AMX, re-measured with the llamacpp runner (issue 31): `scripts/bench_node.py --models
# smollm2-135m-instruct,gemma-3-270m --runtimes llamacpp,onnx-int8,bfloat16 --threads 2 --concurrency 1,16,64` on a
# 2-core Intel Xeon (Sapphire Rapids) KVM guest, 32-token prompts, 64 new tokens, greedy (docs/performance.md,
# "Intel with AMX"; SmolLM2 from a second run after a lint process had overlapped the first one's llamacpp row).
# ms/token at one stream, tokens/s at 1 / 16 / 64 streams, perplexity on bench/heldout.txt:
#   SmolLM2  onnx int8 10.7 ms, 87.2 / 257.3 / 321.5, 20.88 | llamacpp 11.8 ms, 77.6 / 123.6 / 135.3, 20.81 |
#            torch bfloat16 42.8 ms, 25.0 / 266.3 / 511.8, 20.60                     (float32 on the EPYC: 20.63)
#   Gemma 3  onnx int8 17.9 ms, 50.7 / 199.7 / 172.8, 19.03 | llamacpp 29.2 ms, 32.1 / 82.2 / 93.5, 18.97 |
#            torch bfloat16 56.6 ms, 16.3 / 189.9 / 346.0, 18.95                (float32 on the AVX2 EPYC: 18.89)
# Every perplexity is within the bound. latency = the fastest single stream (ms/token): onnx int8 on both models;
# throughput = the most tokens/s at 64 streams: torch bfloat16 on both. The llamacpp runner wins neither here.
_AMX_RUN = "measured on Intel Xeon with AMX (scripts/bench_node.py, 2 threads, issue 31)"
_ONNX_INT8_AMX = Choice(
    "float32",
    "none",
    False,
    f"{_AMX_RUN}: onnx int8 the fastest single stream on both models, SmolLM2 10.7 ms/token (llamacpp 11.8, "
    "torch bfloat16 42.8), Gemma 3 17.9 (llamacpp 29.2, bfloat16 56.6); perplexity +1.2% / +0.7% vs float32",
    frozenset({"smollm2-135m-instruct", "gemma-3-270m"}),
    backend="onnx",
    onnx_precision="int8",
)
_BFLOAT16_AMX = Choice(
    "bfloat16",
    "none",
    False,
    f"{_AMX_RUN}: torch bfloat16 the most tokens/s at 64 streams on both models, SmolLM2 512 (onnx int8 322, "
    "llamacpp 135), Gemma 3 346 (onnx int8 173, llamacpp 94); perplexity -0.1% / +0.3% vs float32",
)
# backend hybrid on AMX, for latency (issue 31): neither side alone wins at both loads here (onnx int8 is the
# fastest single stream, torch bfloat16 the most tokens/s at 64 streams), and the graph benchmark against a graph
# of llama-server processes measured one node on both, each new request starting on onnx int8 below 12 node rows
# and on torch bfloat16 from 12, past either alone at 1, 8 and 32 clients:
#   `scripts/bench_graph.py --baseline llama-server --levels 1,8,32 --max-new-tokens 32`, both generators of
#   configs/default.yaml, quiet, requests/s ours / llama-server's: onnx int8 1.22x / 1.83x / 1.88x (1.19 / 1.96 /
#   1.99 again), torch bfloat16 0.47x / 1.33x / 2.60x, hybrid (crossover 12) 1.32x / 2.08x / 2.01x.
#   Again with this entry in the table (the default config on the hybrid), four quiet runs: 1.23-1.32x / 1.99-2.24x /
#   2.42, 2.03, 1.79, 1.81x; onnx int8 alone between them 1.30, 1.38x / 2.13, 2.17x / 1.85, 1.92x. The graph's own
#   requests/s at 32 clients: 3.44-3.83 on the hybrid, 3.32-3.53 on onnx int8 alone (a few percent; at 1 and 8
#   clients every request starts on onnx int8, as before).
#   With the hold (graph/engine/hybrid.py, `crossover_hold_s`, default 8 s: a busy node keeps starting requests on
#   bfloat16 between waves of load), three quiet runs in the evening: 1.30-1.37x / 2.01-2.19x / 2.83-3.07x, the graph
#   at 4.04-4.93 requests/s at 32 (without it, four runs just before: 1.29-1.54x / 1.92-2.24x / 1.84-3.07x, 2.75-3.93).
# 12 rows, not a crossover measured at warm-up: the warm-up's 6-token bursts ranked onnx int8's 64-row step
# shorter than bfloat16's (131.7 vs 162.2 ms), while at the lengths of real traffic bfloat16 makes 1.5x onnx's
# tokens/s at 64 streams (434 vs 282, the same run of scripts/bench_node.py); so no crossover ever came.
# The per-node single stream stays onnx int8's (every request below 12 rows starts there).
_HYBRID_AMX = Choice(
    "float32",
    "none",
    False,
    f"{_AMX_RUN}; scripts/bench_graph.py --baseline llama-server (both default generators, quiet): onnx int8 for "
    "fewer than 12 node rows, torch bfloat16 from 12 gave 1.23-1.32x / 1.99-2.24x / 1.79-2.42x llama-server's "
    "requests/s at 1 / 8 / 32 clients in four runs (3.44-3.83 requests/s at 32 against 3.32-3.53 on onnx int8 alone "
    "in the same window), and bfloat16 alone 0.47x at 1 client; with the 8 s hold 2.83-3.07x at 32 in three runs",
    frozenset({"smollm2-135m-instruct", "gemma-3-270m"}),
    backend="hybrid",
    small=_ONNX_INT8_AMX,
    large=_BFLOAT16_AMX,
    crossover_rows=12,
)
_FLOAT32_AVX2 = Choice(
    "float32",
    "none",
    False,
    "measured on AMD EPYC with AVX2 only (MODELS.md): ATen weight-only kernels slower than "
    "float32; dynamic int8 2x faster but fails the perplexity bound (+232% on SmolLM2)",
)
_FLOAT32_AVX512 = Choice(
    "float32",
    "none",
    False,
    "not measured; AVX-512 without bfloat16: the weight-only kernels' bfloat16 activations "
    "are emulated there, so float32 as on avx2",
)
GEMMA3 = frozenset({"gemma-3-270m"})
# backend onnx (graph/engine/runners/onnx_runner.py) on AVX2, entered per model: only where its perplexity on
# bench/heldout.txt was measured within the bound (docs/performance-avx2.md). Perplexity (float32 torch
# = reference) on AMD EPYC, AVX2 only: SmolLM2 20.63; onnx int8 20.86 (+1.1%), onnx int4 27.65 (+34%,
# the builder's default RTN, symmetric, block 32; `accuracy_level` 1 gave the same 27.65; asymmetric
# int4 and an int8 lm_head failed to load in onnxruntime 1.32). Gemma 3 18.89; onnx int8 18.94 (+0.3%),
# onnx int4 28.36 (+50%).
_ONNX_INT8_AVX2 = Choice(
    "float32",
    "none",
    False,
    "measured on AMD EPYC with AVX2 only (2 threads): onnx int8 (MatMulNBits) under the project's scheduler, "
    "perplexity +1.1% (SmolLM2) / +0.3% (Gemma 3); int4 was +34% / +50%; docs/performance-avx2.md",
    SMOLLM2 | GEMMA3,
    backend="onnx",
    onnx_precision="int8",
)
# backend llamacpp (graph/engine/runners/llamacpp_runner.py): the model's GGUF file as it ships (SmolLM2
# Q4_1, Gemma 3 Q4_K_M) on llama.cpp under the project's scheduler; entered only for the embedded models
# (the ones with a GGUF file). Its perplexity is the GGUF's own: the float32 reference is that same
# file dequantized (graph/models/embedded.py), so the bound is about ggml's int8 activations.
_LLAMACPP_ZEN4 = Choice(
    "float32",
    "none",
    False,
    "not re-measured with the llamacpp runner; issue 31 on AMD EPYC Zen 4 (AVX-512 + BF16, 2 threads): a Python "
    "loop over llama.cpp's low-level API decoded SmolLM2's GGUF at 115-116 tokens/s for one stream (llama-bench "
    "118-150), torch int4 weights 56.7 and onnx int8 114.6",
    SMOLLM2,
    backend="llamacpp",
)
# kind -> goal -> choices, fastest first; the first whose `models` admits the node's model is taken.
TABLE: dict[str, dict[Goal, tuple[Choice, ...]]] = {
    # Other models (onnx not measured for them on this kind) keep torch bfloat16 for latency (_AMX, not re-measured).
    # `backend: auto` takes the hybrid for the measured models; the torch backend's `quantize: auto` skips to _AMX.
    "amx": {"latency": (_HYBRID_AMX, _ONNX_INT8_AMX, _AMX), "throughput": (_BFLOAT16_AMX,)},
    "avx512_bf16": {
        "latency": (
            _LLAMACPP_ZEN4,
            Choice(
                "bfloat16",
                "int4_weight",
                False,
                f"{_EPYC}: SmolLM2 with int4 weights and bfloat16 activations the fastest single stream "
                "(17.2 ms/token; bfloat16 33.6, float32 61.9), perplexity -0.2%",
                SMOLLM2,
            ),
            Choice(
                "bfloat16",
                "int8_weight",
                False,
                f"{_EPYC}: int8 weights, bfloat16 activations: the fastest single stream within the bound, "
                "perplexity +0.2% (SmolLM2) / +0.4% (Gemma 3; its int4 was +27%, outside the bound)",
            ),
        ),
        "throughput": (
            Choice(
                "bfloat16",
                "none",
                False,
                f"{_EPYC}: bfloat16 the most tokens/s at 16 and 64 streams on both models (SmolLM2 470 "
                "tokens/s at 64 against 281 with int4 weights, Gemma 272 against 129 with int8 weights), "
                "perplexity +0.1% / +0.5%",
            ),
        ),
    },
    "avx512": {"latency": (_FLOAT32_AVX512,), "throughput": (_FLOAT32_AVX512,)},
    "avx2": {"latency": (_ONNX_INT8_AVX2, _FLOAT32_AVX2), "throughput": (_ONNX_INT8_AVX2, _FLOAT32_AVX2)},
}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def cpu_kind(flags: set[str] | None = None) -> str:
    """amx, avx512_bf16, avx512 or avx2 (anything below AVX-512 counts as avx2)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def cpu_description(flags: set[str] | None = None) -> str:
    """'AMD EPYC ...; AVX-512, AVX512-BF16, no AMX' — what benchmarks print beside their figures."""
    flags = cpu_flags() if flags is None else flags
    model = "unknown CPU"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    have = [
        name
        for flag, name in (
            ("amx_bf16", "AMX"),
            ("avx512f", "AVX-512"),
            ("avx512_bf16", "AVX512-BF16"),
            ("avx512_vnni", "AVX512-VNNI"),
            ("avx2", "AVX2"),
        )
        if flag in flags
    ]
    missing = [name for flag, name in (("amx_bf16", "AMX"), ("avx512f", "AVX-512")) if flag not in flags]
    return f"{model}; {', '.join(have) or 'no AVX2'}" + (f"; no {', no '.join(missing)}" if missing else "")


def choose(
    flags: set[str] | None = None, model: str = "", goal: Goal = "latency", backends: tuple[str, ...] = ("torch",)
) -> tuple[str, Choice]:
    """(CPU kind, the first choice for it and `goal` on one of `backends` measured within the bound
    for `model`: an embedded model's name or a store tag's name; unknown models get the choices
    measured on every model). `runtime: {backend: auto}` passes AUTO_BACKENDS; `quantize: auto` on
    the torch backend passes ("torch",)."""
    kind = cpu_kind(flags)
    return kind, choose_for_kind(kind, model, goal, backends)


def choose_for_kind(
    kind: str, model: str = "", goal: Goal = "latency", backends: tuple[str, ...] = ("torch",)
) -> Choice:
    """`choose` for a CPU kind (a key of TABLE) rather than this machine's."""
    return next(c for c in TABLE[kind][goal] if c.backend in backends and (c.models is None or model in c.models))
