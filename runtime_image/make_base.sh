#!/usr/bin/env bash
# Makes the Ubuntu 24.04 base image with debootstrap when the official `ubuntu:24.04` cannot be pulled
# (no Docker Hub here). The archive keyring comes from Ubuntu's pool, checked against a pinned sha256,
# so the bootstrap verifies every package it installs.
# Usage: runtime_image/make_base.sh [TAG]   (default kiln/ubuntu:24.04; needs root, debootstrap, a docker engine)
set -euo pipefail
TAG="${1:-kiln/ubuntu:24.04}"
MIRROR="${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
KEYRING_DEB="ubuntu-keyring_2023.11.28.1_all.deb"
KEYRING_SHA256="36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8"
DOCKER="${DOCKER:-/usr/bin/docker}"

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already exists"; exit 0
fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
curl -fsS -m 60 -o "$work/$KEYRING_DEB" "$MIRROR/pool/main/u/ubuntu-keyring/$KEYRING_DEB"
echo "$KEYRING_SHA256  $work/$KEYRING_DEB" | sha256sum -c --quiet
dpkg-deb -x "$work/$KEYRING_DEB" "$work/keyring"
cat "$work"/keyring/etc/apt/trusted.gpg.d/ubuntu-keyring-2018-archive.gpg > "$work/ubuntu-archive.gpg"

# Debian's debootstrap has no `noble` script; gutsy's is the one every later Ubuntu release uses.
debootstrap --variant=minbase --components=main,universe --keyring="$work/ubuntu-archive.gpg" \
  noble "$work/rootfs" "$MIRROR" /usr/share/debootstrap/scripts/gutsy >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
printf 'deb %s noble main universe\ndeb %s noble-updates main universe\n' "$MIRROR" "$MIRROR" \
  > "$work/rootfs/etc/apt/sources.list"
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "built base image $TAG ($("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
