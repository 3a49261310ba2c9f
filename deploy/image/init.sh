#!/bin/bash
# PID 1 of the image: BentoML's entry point (env/docker/entrypoint.sh) in a process group of its own, and
# SIGTERM/SIGINT forwarded to that whole group. `podman stop`, `docker stop` and Kubernetes signal PID 1
# only; `bentoml serve` passed it on to no worker, so the entry never drained and the engine's SIGKILL
# came after its timeout (tests/image: exit 137, the request in flight cut). Every process of the group
# getting SIGTERM is what `make serve` sees on Ctrl-C and what tests/e2e/test_edge.py checks.
# First the generators' bfloat16 weights, written from the GGUF files the image carries (gguf_weights.py:
# byte for byte what the model store holds, sha256-checked; skipped when a restart finds them written).
python3.11 /usr/local/lib/graph-image/gguf_weights.py rebuild /home/bentoml/bento/models || exit 1
set -m
/home/bentoml/bento/env/docker/entrypoint.sh "$@" &
child=$!
trap 'kill -TERM -- "-$child" 2>/dev/null' TERM INT
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
exit "${rc:-0}"
