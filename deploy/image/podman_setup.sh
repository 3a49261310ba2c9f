#!/bin/sh
# `make podman`: the container engine these machines can run (docs/deployment.md, "Container image").
# Debian's podman with runc (crun, podman's default runtime, fails here: "setrlimit RLIMIT_NOFILE:
# Operation not permitted", then "cgroups in hybrid mode not supported"), mmdebstrap for the base
# image, and /etc/containers/containers.conf with the settings that make runc containers start.
# Idempotent: installs only what is missing, rewrites the file only when its content differs.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=""
for pkg in podman runc mmdebstrap uidmap slirp4netns netavark aardvark-dns; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "make podman: installing$missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing || {
    $SUDO apt-get update && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing; }
fi
conf=/etc/containers/containers.conf
want=$(cat <<'CONF'
# Written by `make podman` (deploy/image/podman_setup.sh). runc, not crun; no default ulimits
# (raising RLIMIT_NOFILE is not permitted here); cgroupfs, not systemd; events to a file (no journald).
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
)
if [ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ]; then
  echo "make podman: $conf up to date"
else
  if [ -f "$conf" ]; then
    $SUDO cp "$conf" "$conf.bak"
    echo "make podman: previous $conf kept as $conf.bak"
  fi
  printf '%s\n' "$want" | $SUDO tee "$conf" >/dev/null
  echo "make podman: wrote $conf"
fi
podman --version
