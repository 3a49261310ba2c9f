"""Which of ggml's x86 CPU variants a local llama-cpp-python build needs on this CPU (stdlib only).

scripts/install_llama_cpp_python.sh builds only these for a local .venv (a full GGML_CPU_ALL_VARIANTS
build is ~46 min on 2 cores); Bentos and images keep every variant. The table and the score are ggml's
own, from llama-cpp-python 0.3.36's vendored ggml/src/CMakeLists.txt (`ggml_add_cpu_backend_variant`) and
ggml/src/ggml-cpu/arch/x86/cpu-feats.cpp (`ggml_backend_cpu_x86_score`); tests/unit/test_llama_cpp_variants.py
checks them against the built modules' own scores.

    python scripts/llama_cpp_variants.py host            # the host set, e.g. "sapphirerapids zen4"
    python scripts/llama_cpp_variants.py all             # every x86 variant
    python scripts/llama_cpp_variants.py --check LIBDIR zen4 haswell   # exit 1 unless LIBDIR has both modules
    python scripts/llama_cpp_variants.py --patch SRCDIR zen4 haswell   # the sdist builds only those (no common)

The host set is the best-scoring variant this CPU runs and, when that one uses AMX, also the best one
without AMX: on an Intel AMX KVM guest the `sapphirerapids` module dies of SIGILL on quantized GGUFs
(MODELS.md) and the runner's probe (llamacpp_runner.load_backend) falls back to the next one.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# ggml's x86 variants (name: features), in CMakeLists.txt's order.
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": (
        *("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
        *("AMX_TILE", "AMX_INT8"),
    ),
}

# A feature: the /proc/cpuinfo flags it needs, and its bit in ggml's score (AMX_TILE is not scored).
FEATURES: dict[str, tuple[tuple[str, ...], int]] = {
    "FMA": (("fma",), 1),
    "F16C": (("f16c",), 1 << 1),
    "SSE42": (("sse4_2",), 1 << 2),
    "BMI2": (("bmi2",), 1 << 3),
    "AVX": (("avx",), 1 << 4),
    "AVX2": (("avx2",), 1 << 5),
    "AVX_VNNI": (("avx_vnni",), 1 << 6),
    "AVX512": (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), 1 << 7),
    "AVX512_VBMI": (("avx512vbmi",), 1 << 8),
    "AVX512_BF16": (("avx512_bf16",), 1 << 9),
    "AVX512_VNNI": (("avx512_vnni",), 1 << 10),
    "AMX_TILE": (("amx_tile",), 0),
    "AMX_INT8": (("amx_int8",), 1 << 11),
}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def score(variant: str, flags: set[str]) -> int:
    """ggml's score of `variant` on a CPU with `flags`: 0 = it lacks an instruction the variant uses."""
    total = 1
    for feature in VARIANTS[variant]:
        needs, bit = FEATURES[feature]
        if not all(f in flags for f in needs):
            return 0
        total += bit
    return total


def host_set(flags: set[str]) -> list[str]:
    """The variants a local build needs: the best this CPU runs, plus the best without AMX after it."""
    ranked = sorted((v for v in VARIANTS if score(v, flags) > 0), key=lambda v: -score(v, flags))
    chosen = ranked[:1]
    if chosen and "AMX_INT8" in VARIANTS[chosen[0]]:
        chosen += [v for v in ranked if "AMX_INT8" not in VARIANTS[v]][:1]
    return chosen


def patch(src: Path, keep: list[str]) -> None:
    """Edit an extracted sdist so GGML_CPU_ALL_VARIANTS builds only `keep` (the other x86 variants'
    `ggml_add_cpu_backend_variant` lines are commented out), and without llama.cpp's `common` library:
    llama-cpp-python forces LLAMA_BUILD_COMMON on, though the Python package never loads libllama-common
    (with tests, tools and examples off nothing links it), and it was 45% of the build's time."""
    cmake = src / "vendor" / "llama.cpp" / "ggml" / "src" / "CMakeLists.txt"
    call = re.compile(r"^(\s*)ggml_add_cpu_backend_variant\((\w+)\b")
    lines, kept = [], set()
    for line in cmake.read_text().splitlines(keepends=True):
        m = call.match(line)
        if m and m.group(2) in VARIANTS:
            if m.group(2) in keep:
                kept.add(m.group(2))
            else:
                line = f"{m.group(1)}# (scripts/llama_cpp_variants.py) {line.lstrip()}"
        lines.append(line)
    if kept != set(keep):
        raise SystemExit(f"{cmake}: no ggml_add_cpu_backend_variant line for {sorted(set(keep) - kept)}")
    cmake.write_text("".join(lines))
    top = src / "CMakeLists.txt"
    forced = 'set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'
    text = top.read_text()
    if forced not in text:
        raise SystemExit(f"{top}: no line {forced!r} (another llama-cpp-python version?)")
    top.write_text(text.replace(forced, forced.replace(" ON ", " OFF ")))


def resolve(names: list[str]) -> list[str]:
    """`host`, `all` or variant names (spaces or commas) into variant names, in ggml's order."""
    words = [w for n in names for w in n.replace(",", " ").split()]
    if words == ["host"]:
        return host_set(cpu_flags())
    if words == ["all"]:
        return list(VARIANTS)
    unknown = [w for w in words if w not in VARIANTS]
    if unknown or not words:
        raise SystemExit(f"llama.cpp CPU variants: {words} is not 'host', 'all' or names among {list(VARIANTS)}")
    return [v for v in VARIANTS if v in words]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, metavar="LIBDIR", help="exit 1 unless LIBDIR has every variant's module")
    ap.add_argument("--patch", type=Path, metavar="SRCDIR", help="make the extracted sdist build only the variants")
    ap.add_argument("variants", nargs="*", default=["host"], help="host (default), all, or variant names")
    args = ap.parse_args()
    wanted = resolve(args.variants)
    if not wanted:
        print("no ggml x86 variant runs on this CPU", file=sys.stderr)
        return 1
    if args.patch:
        patch(args.patch, wanted)
    elif args.check:
        missing = [v for v in wanted if not (args.check / f"libggml-cpu-{v}.so").exists()]
        if missing:
            print(f"llama-cpp-python: {args.check} has no CPU module {' '.join(missing)}", file=sys.stderr)
            return 1
    else:
        print(" ".join(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
