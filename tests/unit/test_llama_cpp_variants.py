"""Which ggml CPU variants a local build carries (scripts/llama_cpp_variants.py): ggml's own score, the host
set per CPU kind, the sdist patch that builds only that set, and the install script's "has this CPU's
modules" check."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "llama_cpp_variants.py"
_spec = importlib.util.spec_from_file_location("llama_cpp_variants", SCRIPT)
assert _spec and _spec.loader
V = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V)

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2"
AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw"
# /proc/cpuinfo flags (the ones ggml looks at) of the three kinds this project runs on.
EPYC_AVX2 = set(BASE.split())  # Zen 2/3: AVX2, no AVX-512, no AVX-VNNI
ZEN4 = set(f"{BASE} {AVX512} avx512vbmi avx512_vnni avx512_bf16".split())
INTEL_AMX = ZEN4 | {"avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}


def test_the_host_set_per_cpu_kind() -> None:
    assert V.host_set(EPYC_AVX2) == ["haswell"]
    assert V.host_set(ZEN4) == ["zen4"]
    # The AMX variant first, and the best one without AMX for the runner's probe to fall back on.
    assert V.host_set(INTEL_AMX) == ["sapphirerapids", "zen4"]
    assert V.host_set({"sse4_2"}) == ["sse42"]
    assert V.host_set(set()) == ["x64"]


def test_a_variant_needing_a_missing_instruction_scores_zero() -> None:
    assert V.score("zen4", EPYC_AVX2) == 0
    assert V.score("alderlake", ZEN4) == 0  # AVX-VNNI (the 256-bit one) is not on Zen 4
    assert V.score("haswell", EPYC_AVX2) > V.score("piledriver", EPYC_AVX2) > 0


def test_scores_equal_ggml_s_own_for_every_module_installed() -> None:
    """The table and the score against the built modules' `ggml_backend_score` on this CPU."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
    from graph.engine.runners.llamacpp_runner import cpu_variants

    built = cpu_variants()
    assert built, "llama-cpp-python without loadable CPU modules"
    flags = V.cpu_flags()
    assert {name: V.score(name, flags) for name, _, _ in built} == {name: score for name, score, _ in built}
    # `make install` (re)builds until the .venv has this CPU's modules: the host set is among them.
    assert set(V.host_set(flags)) <= {name for name, _, _ in built}


def fake_sdist(tmp_path: Path) -> Path:
    """The two CMake files --patch edits, with their lines as llama-cpp-python 0.3.36 ships them."""
    src = tmp_path / "llama_cpp_python-0.3.36"
    ggml = src / "vendor" / "llama.cpp" / "ggml" / "src"
    ggml.mkdir(parents=True)
    lines = [f"        ggml_add_cpu_backend_variant({name:<18} {' '.join(f)})\n" for name, f in V.VARIANTS.items()]
    arm = "            ggml_add_cpu_backend_variant(armv8.2_1    DOTPROD)\n"
    (ggml / "CMakeLists.txt").write_text('if (GGML_SYSTEM_ARCH STREQUAL "x86")\n' + "".join(lines) + "else()\n" + arm)
    (src / "CMakeLists.txt").write_text(
        'if (LLAMA_BUILD)\n    set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)\n'
    )
    return src


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_patch_keeps_only_the_chosen_variants_and_drops_common(tmp_path: Path) -> None:
    src = fake_sdist(tmp_path)
    assert run("--patch", str(src), "zen4,haswell").returncode == 0
    text = (src / "vendor" / "llama.cpp" / "ggml" / "src" / "CMakeLists.txt").read_text()
    active = [ln.split("(")[1].split()[0] for ln in text.splitlines() if ln.lstrip().startswith("ggml_add")]
    assert active == ["haswell", "zen4", "armv8.2_1"]  # other architectures' lines are left alone
    assert text.count("# (scripts/llama_cpp_variants.py) ggml_add_cpu_backend_variant(") == len(V.VARIANTS) - 2
    assert (
        'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "Build llama.cpp common library" FORCE)'
        in (src / "CMakeLists.txt").read_text()
    )


def test_patch_fails_loudly_on_an_sdist_it_does_not_know(tmp_path: Path) -> None:
    src = fake_sdist(tmp_path)
    (src / "CMakeLists.txt").write_text("project(llama_cpp)\n")
    done = run("--patch", str(src), "zen4")
    assert done.returncode != 0 and "LLAMA_BUILD_COMMON" in done.stderr


def test_check_names_the_missing_module(tmp_path: Path) -> None:
    (tmp_path / "libggml-cpu-zen4.so").touch()
    assert run("--check", str(tmp_path), "zen4").returncode == 0
    done = run("--check", str(tmp_path), "zen4", "haswell")  # a .venv built on Zen 4, run on an AVX2 EPYC
    assert done.returncode == 1 and "libggml-cpu" not in done.stdout and "haswell" in done.stderr


def test_unknown_variant_names_are_refused_with_the_list() -> None:
    done = run("zen5")
    assert done.returncode != 0 and "zen5" in done.stderr and "sapphirerapids" in done.stderr
    assert run("all").stdout.split() == list(V.VARIANTS)
    assert run("haswell,zen4").stdout.split() == ["haswell", "zen4"]
