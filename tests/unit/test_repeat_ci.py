"""scripts/repeat_ci.sh: fresh clones of HEAD, the busy loop beside one run only, every run's result.

The real use runs `.ci/run` (three runs: about 45 minutes on 2 cores); here each clone runs a short
command that records what it saw, so the orchestration is checked, not the suite.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "repeat_ci.sh"

# Run by each clone: the commit it holds, whether the script's busy loop is alive and what it runs,
# two logged restarts (one from the server the harness test provokes), then a pytest-like summary;
# the third run fails.
RECORD = r"""git rev-parse HEAD > seen-rev
if [ -n "$REPEAT_CI_BUSY_PID" ] && kill -0 "$REPEAT_CI_BUSY_PID"; then
  tr '\0' ' ' < /proc/$REPEAT_CI_BUSY_PID/cmdline > seen-busy
fi
mkdir -p artifacts/logs
echo "tests.server: x: bentoml serve exited early on an address already in use (port 1)" > artifacts/logs/x-1.log
echo "tests.server: harness-retry: bentoml serve exited early on an address already in use" \
  > artifacts/logs/harness-retry-2.log
echo "4 passed in 1.00s"
[ "$REPEAT_CI_RUN" != 3 ]
"""


def cpu_model() -> str:
    line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    return " ".join(line.split(":", 1)[1].split())


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )


def test_each_run_is_a_fresh_clone_of_head_with_the_busy_loop_beside_one(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    out = tmp_path / "runs"
    (out / "run-1").mkdir(parents=True)
    (out / "run-1" / "stale").write_text("from an earlier run")

    proc = run("--runs", "3", "--busy", "2", "--out", str(out), "--command", RECORD)

    assert proc.returncode == 1, proc.stdout + proc.stderr  # run 3 failed
    lines = proc.stdout.splitlines()
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    cores = len(os.sched_getaffinity(0))
    assert f"3 run(s) on {short.stdout.strip()}, {cores} cores, {cpu_model()}" in lines, lines
    results = [line for line in lines if "rc=" in line]
    assert [r.split(",")[0] for r in results] == ["run 1: rc=0", "run 2: rc=0", "run 3: rc=1"]
    for r in results:
        assert "4 passed in 1.00s" in r and "restarts: 1 (+1 provoked)" in r, r
    assert any(line.startswith("run 2 (busy loop beside it): started") for line in lines), lines

    for i in (1, 2, 3):
        clone = out / f"run-{i}"
        assert (clone / "seen-rev").read_text() == head  # the committed HEAD
        assert (out / f"run-{i}.log").read_text().strip() == "4 passed in 1.00s"
    assert not (out / "run-1" / "stale").exists()  # each run starts from a new clone
    assert not (out / "run-1" / "seen-busy").exists() and not (out / "run-3" / "seen-busy").exists()
    assert (out / "run-2" / "seen-busy").read_text().strip() == "sh -c while :; do :; done"


def test_no_busy_loop_outlives_the_script(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    pid_file = tmp_path / "busy-pid"
    proc = run("--runs", "1", "--busy", "1", "--out", str(out), "--command", f'echo "$REPEAT_CI_BUSY_PID" > {pid_file}')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "while" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_bad_arguments_are_refused_with_the_reason() -> None:
    proc = run("--runs", "three")
    assert proc.returncode == 2 and "--runs and --busy take a whole number" in proc.stderr
    proc = run("--fast")
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr
    proc = run("--runs", "0")
    assert proc.returncode == 2 and "--runs must be at least 1" in proc.stderr
