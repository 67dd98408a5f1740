#!/usr/bin/env bash
# Assemble the local Debian bookworm base image for `make images` with debootstrap, for machines that
# reach Debian's package mirror but no container registry. The result is imported into buildah's local
# storage as ${BASE_NAME} (default localhost/hami-debian:bookworm) and is what every service Dockerfile
# starts FROM (ARG BASE_IMAGE). Idempotent: an existing image with the same package set is kept.
#
# Usage: deploy/images/debian-base.sh <work-dir>      (env: BASE_NAME, DEBIAN_MIRROR, STORAGE_FLAGS: buildah storage words, default overlay)
set -euo pipefail

work_dir=${1:?usage: debian-base.sh <work-dir>}
base_name=${BASE_NAME:-localhost/hami-debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# STORAGE_FLAGS is a word list on purpose (e.g. "--storage-driver vfs --root /x").
read -r -a storage <<<"${STORAGE_FLAGS:---storage-driver overlay}"
# Runtime needs of every service image: Python 3.11 (the workspace's version) and CA roots for TLS.
packages=python3,python3-venv,ca-certificates,tini
stamp_label="hami.base.packages=${packages}"

if buildah "${storage[@]}" inspect --type image --format '{{index .ImageAnnotations "org.opencontainers.image.description"}}' \
    "$base_name" 2>/dev/null | grep -qx "$stamp_label"; then
  echo "debian-base: $base_name is up to date"
  exit 0
fi

rootfs="$work_dir/rootfs"
rm -rf "$rootfs"
mkdir -p "$work_dir"
echo "debian-base: debootstrap bookworm ($packages) into $rootfs"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$work_dir/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work_dir/debootstrap.log" >&2; exit 1; }
# Slim the tree the way the official slim images do: no apt lists, docs, man pages or caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
# debootstrap leaves the host's resolver config; an image must not carry it.
: >"$rootfs/etc/resolv.conf"

tar -C "$rootfs" --numeric-owner -cf "$work_dir/rootfs.tar" .
ctr=$(buildah "${storage[@]}" from scratch)
trap 'buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah "${storage[@]}" add "$ctr" "$work_dir/rootfs.tar" /
buildah "${storage[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd /bin/bash --annotation "org.opencontainers.image.description=$stamp_label" "$ctr"
buildah "${storage[@]}" commit --quiet "$ctr" "$base_name" >/dev/null
rm -rf "$rootfs" "$work_dir/rootfs.tar"
echo "debian-base: committed $base_name"
