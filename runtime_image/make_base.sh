#!/usr/bin/env bash
# Makes the Ubuntu 24.04 base image with debootstrap when the official `ubuntu:24.04` cannot be pulled
# (no Docker Hub here). The archive keyring comes from Ubuntu's pool, checked against a pinned sha256,
# so the bootstrap verifies every package it installs.
#
# Built once per machine: the image carries a content key (this script's sha256) as the label kiln.base.key,
# and a copy is saved under KILN_BASE_CACHE (default ~/.cache/kiln/base-images). An image of that tag with the
# same key is used as it is; else the saved copy of that key is loaded (seconds: a new dockerd, as every CI run
# starts, has no images); else debootstrap runs (minutes) and its image is saved for the next time. Editing this
# script changes the key, so the next run builds again.
# Usage: runtime_image/make_base.sh [TAG]   (default kiln/ubuntu:24.04; needs root, debootstrap, a docker engine)
set -euo pipefail
TAG="${1:-kiln/ubuntu:24.04}"
MIRROR="${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
KEYRING_DEB="ubuntu-keyring_2023.11.28.1_all.deb"
KEYRING_SHA256="36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8"
DOCKER="${DOCKER:-/usr/bin/docker}"
KEY="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
CACHE="${KILN_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/base-images}"
SAVED="$CACHE/ubuntu-24.04-$KEY.tar"

key_of_tag() { "$DOCKER" image inspect -f '{{index .Config.Labels "kiln.base.key"}}' "$TAG" 2>/dev/null || true; }

if [ "$(key_of_tag)" = "$KEY" ]; then
  echo "base image $TAG already exists (key $KEY)"; exit 0
fi
if [ -s "$SAVED" ]; then
  if "$DOCKER" load -q -i "$SAVED" >/dev/null && [ "$(key_of_tag)" = "$KEY" ]; then
    echo "base image $TAG loaded from $SAVED (key $KEY)"; exit 0
  fi
  echo "$SAVED did not load as $TAG with key $KEY: building it again" >&2
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
tar -C "$work/rootfs" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' --change "LABEL kiln.base.key=$KEY" \
  - "$TAG" >/dev/null
echo "built base image $TAG ($("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec), key $KEY)"
# kept for the next dockerd on this machine; older keys' copies go (written whole, then renamed: runs may overlap)
if mkdir -p "$CACHE" && "$DOCKER" save -o "$SAVED.$$" "$TAG"; then
  mv "$SAVED.$$" "$SAVED"
  find "$CACHE" -maxdepth 1 -name 'ubuntu-24.04-*.tar' ! -name "$(basename "$SAVED")" -delete
  echo "saved as $SAVED"
else
  rm -f "$SAVED.$$"; echo "warning: could not save $TAG under $CACHE: the next new dockerd builds it again" >&2
fi
