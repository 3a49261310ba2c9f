#!/usr/bin/env bash
# Runs CI several times in a row, each in a fresh clone of the committed HEAD, one of them with a
# busy-loop process beside it: the check that the suite fails on defects, not on timing or races.
# docs/development.md, "Is the suite reliable?".
#
#   scripts/repeat_ci.sh [--runs N] [--busy I] [--out DIR] [--command CMD]
#
#   --runs N       how many runs (default 3)
#   --busy I       the run with a busy loop (`while :; do :; done`) on one core beside it (default 2; 0: none)
#   --out DIR      where the clones and logs go (default /tmp/repeat-ci); DIR/run-I/ and DIR/run-I.log
#   --command CMD  what each clone runs (default `CI=true bash .ci/run`); it sees REPEAT_CI_RUN (the run's
#                  number) and REPEAT_CI_BUSY_PID (the busy loop's process id, empty when none)
#
# Uncommitted changes are not in the clones. Prints one line per run (exit code, time, pytest's summary,
# test servers restarted after an address already in use), exits 1 if any run failed.
set -uo pipefail

runs=3 busy=2 out=/tmp/repeat-ci command="CI=true bash .ci/run"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --busy) busy=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --command) command=$2; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "repeat_ci.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$runs$busy" in *[!0-9]*) echo "repeat_ci.sh: --runs and --busy take a whole number" >&2; exit 2 ;; esac
[ "$runs" -ge 1 ] || { echo "repeat_ci.sh: --runs must be at least 1" >&2; exit 2; }

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel) || exit 2
rev=$(git -C "$repo" rev-parse --short HEAD) || exit 2
[ -z "$(git -C "$repo" status --porcelain)" ] || echo "note: uncommitted changes are not in the clones"
mkdir -p "$out"
echo "$runs run(s) on $rev, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "each runs: $command"

failed=0 loop=""
trap '[ -n "$loop" ] && kill "$loop" 2>/dev/null' EXIT  # no busy loop outlives an interrupted run
trap 'exit 130' INT TERM
for i in $(seq 1 "$runs"); do
  dir=$out/run-$i log=$out/run-$i.log loop=""
  rm -rf "$dir"
  git clone -q "$repo" "$dir" || exit 2
  if [ "$i" = "$busy" ]; then
    sh -c 'while :; do :; done' &
    loop=$!
  fi
  start=$(date +%s)
  echo "run $i$([ -n "$loop" ] && echo ' (busy loop beside it)'): started $(date -u +%H:%M:%S) UTC, log $log"
  (cd "$dir" && REPEAT_CI_RUN=$i REPEAT_CI_BUSY_PID=$loop bash -c "$command") >"$log" 2>&1
  rc=$?
  if [ -n "$loop" ]; then kill "$loop" 2>/dev/null; wait "$loop" 2>/dev/null; loop=""; fi
  [ "$rc" = 0 ] || failed=1
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
  # tests/e2e/test_server_harness.py provokes one restart on purpose (its server is "harness-retry").
  restarts=$(cat "$dir"/artifacts/logs/*.log 2>/dev/null | grep -c 'exited early on an address already in use' || true)
  provoked=$(cat "$dir"/artifacts/logs/harness-retry-*.log 2>/dev/null | grep -c 'exited early on an address already in use' || true)
  echo "run $i: rc=$rc, $(($(date +%s) - start)) s, ${summary:-no pytest summary}, restarts: $((restarts - provoked)) (+$provoked provoked)"
done
exit "$failed"
