"""ggml's CPU variant is chosen once per process (graph/engine/runners/llamacpp_runner.py:load_backend):
a process that loads the tiny float32 GGUF first and a real quantized one (SmolLM2's Q4_1) after must
never load a variant the second one crashes on. On the Intel AMX VM these tests were written on, the
`sapphirerapids` variant passes the tiny file and dies of SIGILL on the Q4_1 file. A local build carries
this CPU's variants only (`make install`, scripts/llama_cpp_variants.py): there `sapphirerapids` and
`zen4`, so the refusal runs as it did with every variant; on a CPU whose best variant decodes both files
(Zen 4: `zen4` alone; AVX2: `haswell`) the first test takes its other branch, the file decoded.

Each scenario runs in a child process (a SIGILL there cannot kill pytest), with its own empty probe
cache (XDG_CACHE_HOME), so the probes really run: about 10-20 s per probe on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, torch
from graph.engine.runners import llamacpp_runner as lr
tiny, real, together = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
first = lr.load_backend(tiny, also=[real] if together else [])
out = {"first": first}
try:
    runner = lr.LlamaCppRunner(real, threads=1, n_seq=2, n_ctx_seq=64)
except RuntimeError as exc:
    out["refused"] = str(exc)
else:
    ids = torch.arange(8).reshape(1, 8) + 10
    logits, _ = runner.prefill(ids, torch.ones(1, 8, dtype=torch.bool))
    out["decoded"] = bool(torch.isfinite(logits).all())
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def files(tiny_dir):
    from graph.models import embedded
    from tests.tiny_models import build_gguf_source

    spec = embedded.get_embedded("smollm2-135m-instruct")
    try:
        real = embedded._gguf_source(spec, Path("."))
    except Exception:  # the package is not installed here
        pytest.skip("SmolLM2's GGUF package is not installed")
    return build_gguf_source(tiny_dir) / "model.gguf", real


def child(tmp_path: Path, tiny: Path, real: Path, together: bool) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("LLAMACPP_CPU_VARIANT", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny), str(real), "1" if together else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"the child died (exit {done.returncode}): {done.stderr[-2000:]}"
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_tiny_first_then_real_never_crashes_the_process(files, tmp_path):
    """Loaded for the tiny file alone, the variant is probed on the real file before llama.cpp touches
    it: it decodes, or the runner refuses with a RuntimeError naming the way out (never a signal)."""
    tiny, real = files
    out = child(tmp_path, tiny, real, together=False)
    if "refused" in out:
        assert "fails its probe" in out["refused"] and "LLAMACPP_CPU_VARIANT" in out["refused"]
        assert out["first"] in out["refused"]
    else:
        assert out["decoded"] is True
    cache = json.loads((tmp_path / "inference-graph" / "llamacpp-variant.json").read_text())
    assert any(k.endswith(f"|{out['first']}") for k in cache)  # probe results are remembered per variant


def test_both_files_up_front_pick_a_variant_both_decode_on(files, tmp_path):
    tiny, real = files
    out = child(tmp_path, tiny, real, together=True)
    assert out == {"first": out["first"], "decoded": True}
