#!/bin/sh
# Installs llama-cpp-python (the `llamacpp` runtime, graph/engine/runners/llamacpp_runner.py) from its sdist:
# the registry has no wheel for this glibc. The build is portable: every x86-64 CPU variant of ggml's
# kernels is compiled (GGML_CPU_ALL_VARIANTS) as a loadable module (GGML_BACKEND_DL), and the runner
# picks one at run time for the CPU it runs on, so a Bento or image built here runs on other CPUs.
# pip keeps the built wheel in its cache (keyed by the sdist, not by CMAKE_ARGS: keep the flags stable),
# so a second install is instant. Progress: CMake/ninja's [n/N] lines.
set -eu
PIP=${PIP:-.venv/bin/pip}
VERSION=$(sed -n 's/^llama-cpp-python==//p' requirements.txt)
if "$PIP" show llama-cpp-python 2>/dev/null | grep -x "Version: $VERSION" >/dev/null; then
  echo "llama-cpp-python $VERSION already installed"; exit 0
fi
export CMAKE_ARGS="-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_NATIVE=OFF \
-DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
echo "llama-cpp-python $VERSION: building from source (every CPU variant; minutes on 2 cores, once)"
start=$(date +%s)
# -v shows the build; kept: ninja's [n/N] steps (as "[n/N] file"), errors, pip's last words.
"$PIP" install -v --no-deps "llama-cpp-python==$VERSION" 2>&1 | awk '
  /^ *\[[0-9]+\/[0-9]+\]/ { n = split($NF, p, "/"); print "  " $1, p[n]; fflush(); next }
  /[Ee]rror|Successfully|Using cached|Building wheel|Created wheel/ { print; fflush() }'
"$PIP" show llama-cpp-python | grep -x "Version: $VERSION" >/dev/null
echo "llama-cpp-python $VERSION installed in $(( $(date +%s) - start )) s"
