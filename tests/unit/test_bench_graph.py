"""scripts/bench_graph.py: the llama-server baseline's verdicts against issue 31's targets, its table, and a
clear exit when llama-server is not built."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def bench_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_graph_script", ROOT / "scripts" / "bench_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def level(bg: ModuleType, server: str, c: int, rps: float, p95: float, errors: int = 0):
    return bg.LevelResult(
        server=server,
        concurrency=c,
        requests=2 * c,
        wall_s=2 * c / rps,
        ok=2 * c - errors,
        errors=errors,
        requests_per_s=rps,
        tokens_per_s=64 * rps,
        p50_s=p95 * 0.9,
        p95_s=p95,
    )


def test_llama_server_verdicts_follow_the_targets_per_level() -> None:
    bg = bench_graph()
    results = {
        # 1 client: 1.2x, p95 better -> pass; 8: 1.4x (target 1.5x) -> fail; 32: 2.5x but one error -> fail
        "graph": [
            level(bg, "graph", 1, 1.2, 0.9),
            level(bg, "graph", 8, 1.4, 1.0),
            level(bg, "graph", 32, 5.0, 2.0, 1),
        ],
        "llama-server": [
            level(bg, "llama-server", 1, 1.0, 1.0),
            level(bg, "llama-server", 8, 1.0, 2.0),
            level(bg, "llama-server", 32, 2.0, 3.0),
        ],
    }
    lines = bg.verdicts(results)
    assert [line.split(":")[0] for line in lines] == ["PASS", "FAIL", "FAIL"]
    assert "1.20x llama-server's requests/s (target >= 1.0x)" in lines[0]
    assert "graph errors 1 (target 0)" in lines[2]
    # a p95 worse than theirs fails even above the requests/s target
    results["graph"][0] = level(bg, "graph", 1, 2.0, 1.5)
    assert bg.verdicts(results)[0].startswith("FAIL")
    table = bg.table(results).splitlines()
    assert table[0].split()[:2] == ["conc", "server"] and table[0].rstrip().endswith("p95 ratio")
    row = next(line for line in table if line.split()[:2] == ["8", "graph"])
    assert row.split()[-3:] == ["1.40x", "0.50x", "0.50x"]  # requests/s, p50 and p95: graph / llama-server


def test_llama_server_baseline_says_how_to_build_it(tmp_path: Path) -> None:
    env = {**os.environ, "LLAMA_CPP_DIR": str(tmp_path)}  # an empty folder: nothing built there
    proc = subprocess.run(
        [sys.executable, "scripts/bench_graph.py", "--baseline", "llama-server", "--levels", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith("CPU: ")  # the CPU model and flags come first
    assert f"{tmp_path / 'llama-server'} is missing" in proc.stderr
    assert "make llama-cpp" in proc.stderr
