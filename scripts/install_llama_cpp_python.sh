#!/bin/sh
# Installs llama-cpp-python (the `llamacpp` runtime, graph/engine/runners/llamacpp_runner.py) from its sdist:
# the registry has no wheel for this glibc. ggml's CPU kernels are built as loadable modules
# (GGML_BACKEND_DL), one per x86 variant, and the runner picks one at run time.
#   LLAMA_CPP_VARIANTS=host (default): only the variants this CPU uses (scripts/llama_cpp_variants.py: the
#     best one it runs, and the best without AMX after an AMX one): minutes instead of ~46 min on 2 cores.
#     The wheel is kept in ~/.cache/inference-graph/wheels/llama-cpp-python-VERSION/VARIANTS/ (LLAMA_CPP_WHEELS
#     for another folder than ~/.cache/inference-graph/wheels), never under the sdist's key in pip's cache
#     (pip keys a built wheel by the sdist alone: an all-variants install would pick up a host-only wheel).
#   LLAMA_CPP_VARIANTS=all: every x86 variant (GGML_CPU_ALL_VARIANTS), a build that runs on any x86-64 CPU
#     (wheels/llama-cpp-python-VERSION/all/). Bentos and images always carry this one (deploy/image/Containerfile).
#   LLAMA_CPP_VARIANTS="zen4 haswell": those.
#   --build-only: build the wheel into that cache and stop (`make install` runs it beside pip's install of the
#     other packages, then this script again to install the wheel).
# "Already installed" means this version AND a module for each wanted variant: a .venv made on another
# CPU kind (an AVX2-only EPYC after an AMX Xeon) is rebuilt for this one. Progress: ninja's [n/N] lines.
set -eu
PIP=${PIP:-.venv/bin/pip}
PY=$(dirname "$PIP")/python
VERSION=$(sed -n 's/^llama-cpp-python==//p' requirements.txt)
SELECT="$PY scripts/llama_cpp_variants.py"
BUILD_ONLY=$([ "${1:-}" = --build-only ] && echo 1 || echo 0)
VARIANTS=$($SELECT ${LLAMA_CPP_VARIANTS:-host})
SET=$(echo $VARIANTS | tr ' ' '+')
[ "$VARIANTS" = "$($SELECT all)" ] && SET=all
LIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')/llama_cpp/lib
if "$PIP" show llama-cpp-python 2>/dev/null | grep -x "Version: $VERSION" >/dev/null; then
  if $SELECT --check "$LIB" $VARIANTS; then
    echo "llama-cpp-python $VERSION already installed (CPU modules for $VARIANTS)"; exit 0
  fi
  echo "llama-cpp-python $VERSION: rebuilding for this CPU"
fi
export CMAKE_ARGS="-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_NATIVE=OFF \
-DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# -v shows the build; kept: ninja's [n/N] steps (as "[n/N] file"), errors, pip's last words.
progress() {
  awk '/^ *\[[0-9]+\/[0-9]+\]/ { n = split($NF, p, "/"); print "  " $1, p[n]; fflush(); next }
       /[Ee]rror|Successfully|Using cached|Building wheel|Created wheel/ { print; fflush() }'
}
start=$(date +%s)
wheels=${LLAMA_CPP_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-graph/wheels}/llama-cpp-python-$VERSION/$SET
wheel=$(ls "$wheels"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "llama-cpp-python $VERSION: building from source (ggml CPU variants: $VARIANTS; minutes, once)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work" 2>&1 |
    grep -v "^WARNING: Location" || true
  tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
  $SELECT --patch "$work/llama_cpp_python-$VERSION" $VARIANTS
  # The wheel goes to our own cache, named by the variants. pip 26 (make install upgrades pip first) keeps
  # no wheel of a local folder in its own cache; pip 23 keeps one under the folder's temporary path, which
  # no later install asks for (pip's cache of the build tools, scikit-build-core, stays in use).
  "$PIP" wheel -v --no-deps -w "$work/wheel" "$work/llama_cpp_python-$VERSION" 2>&1 | progress
  ls "$work"/wheel/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1 ||
    { echo "llama-cpp-python $VERSION: the build failed (its errors are above)" >&2; exit 1; }
  mkdir -p "$wheels"
  mv "$work"/wheel/llama_cpp_python-"$VERSION"-*.whl "$wheels"/
  wheel=$(ls "$wheels"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
  echo "llama-cpp-python $VERSION: built in $(( $(date +%s) - start )) s ($wheel)"
elif [ "$BUILD_ONLY" = 0 ]; then
  echo "llama-cpp-python $VERSION: the wheel built earlier for $VARIANTS ($wheel)"
fi
[ "$BUILD_ONLY" = 1 ] && exit 0
"$PIP" install --quiet --no-deps --force-reinstall "$wheel"
"$PIP" show llama-cpp-python | grep -x "Version: $VERSION" >/dev/null
$SELECT --check "$LIB" $VARIANTS
echo "llama-cpp-python $VERSION installed in $(( $(date +%s) - start )) s (CPU modules: $VARIANTS)"
