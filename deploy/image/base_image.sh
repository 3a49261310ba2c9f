#!/bin/sh
# `make base-image`: Debian 12 (bookworm) with Debian's python3.11, made from Debian's packages with
# mmdebstrap and imported into podman (no image registry is needed). Skipped when the image exists.
# Docker users: BASE_ENGINE=docker (`docker import` of the same tarball).
# Kept small: variant minbase (Essential + apt), no recommends, no docs/man pages/locales.
set -eu
IMAGE=${BASE_IMAGE:-localhost/inference-graph-base:bookworm}
ENGINE=${BASE_ENGINE:-podman}
OUT=${BASE_OUT:-artifacts/image}
if $ENGINE image exists "$IMAGE" 2>/dev/null || $ENGINE image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "make base-image: $IMAGE exists (remove it with '$ENGINE rmi $IMAGE' to rebuild)"
  exit 0
fi
mkdir -p "$OUT"
tarball="$OUT/base-bookworm.tar"
start=$(date +%s)
# python3.11-venv: ensurepip, so the image's venv has pip; libjemalloc2: every served process runs on
# jemalloc (bentofile.yaml's LD_PRELOAD); ca-certificates: pip over https during the image build.
mmdebstrap --variant=minbase --mode=root \
  --include=python3.11,python3.11-venv,libjemalloc2,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
  bookworm "$tarball" http://deb.debian.org/debian
$ENGINE import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/usr/bin/python3.11"]' \
  "$tarball" "$IMAGE"
rm -f "$tarball"
echo "make base-image: $IMAGE in $(( $(date +%s) - start )) s"
$ENGINE image ls "$IMAGE"
