#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian bookworm's source package
# and installs etcd-server, for the Kubernetes test tier (tests/k8s). No registry ships a recent
# kube-apiserver binary, so we build Debian's source once per machine and cache the two binaries.
#
# Output: $DRIFTLOOP_KUBE_CACHE (default ~/.cache/driftloop/kube-1.20.2)/{kube-apiserver,kube-controller-manager}
# A second run finds them and returns at once. Needs root (apt-get) on Debian bookworm or newer.
set -euo pipefail

version=1.20.2
cache="${DRIFTLOOP_KUBE_CACHE:-$HOME/.cache/driftloop/kube-$version}"

have_etcd() { command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]; }

apt_updated=0
apt_update() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
}

if ! have_etcd; then
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
# `ip` (iproute2): the tier's pods answer in a network namespace of the tests' own.
if ! command -v ip >/dev/null 2>&1; then
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

if [ -x "$cache/kube-apiserver" ] && [ -x "$cache/kube-controller-manager" ]; then
  echo "k8s-test-tools: cached in $cache"
  exit 0
fi

# The source package is bookworm's; later Debian releases dropped kubernetes, so the deb-src line
# names bookworm whatever this machine runs.
src_list=/etc/apt/sources.list.d/driftloop-kubernetes-src.sources
if [ ! -f "$src_list" ]; then
  cat >"$src_list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
fi
apt_update
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go dpkg-dev rsync >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# bookworm's package is versioned 1.20.5+really1.20.2: its source is 1.20.2.
apt-get source -qq kubernetes >/dev/null
srcdir="$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
cd "$srcdir"
start=$(date +%s)
# GOFLAGS=-mod=vendor: the package ships its dependencies vendored and the build must not reach out.
GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on KUBE_GIT_VERSION="v$version" \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/build.log" 2>&1 || {
  tail -n 50 "$work/build.log" >&2
  exit 1
}
mkdir -p "$cache"
for bin in kube-apiserver kube-controller-manager; do
  install -m 0755 "$(find _output -type f -name "$bin" | head -n 1)" "$cache/$bin.tmp"
  mv "$cache/$bin.tmp" "$cache/$bin"
done
echo "k8s-test-tools: built in $(($(date +%s) - start)) s into $cache"
