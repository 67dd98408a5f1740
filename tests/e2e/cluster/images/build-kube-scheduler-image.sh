#!/usr/bin/env bash
# Build the e2e suite's kube-scheduler image (kube-scheduler.Containerfile next to this script) from a static
# kube-scheduler binary, unless the image in buildah's storage already carries the digest of exactly these inputs
# (the binary's and the Containerfile's content, in the label hami.e2e.inputs): a rebuild of an unchanged binary
# costs one `buildah inspect`.
# Usage: build-kube-scheduler-image.sh <kube-scheduler binary> <image> <work dir>   (env: STORAGE_FLAGS)
set -euo pipefail
binary=${1:?kube-scheduler binary}
image=${2:?image}
work=${3:?work dir}
read -r -a storage <<<"${STORAGE_FLAGS:---storage-driver overlay}"
here=$(cd "$(dirname "$0")" && pwd)
containerfile=$here/kube-scheduler.Containerfile

# Static, or it would not start FROM scratch.
if ! file -b "$binary" 2>/dev/null | grep -q 'statically linked'; then
  ldd "$binary" >/dev/null 2>&1 && { echo "build-kube-scheduler-image: $binary is dynamically linked" >&2; exit 1; }
fi
digest=$(cat "$binary" "$containerfile" "$0" | sha256sum | cut -d' ' -f1)
have=$(buildah "${storage[@]}" inspect --type image --format '{{index .ImageAnnotations "hami.e2e.inputs"}}' "$image" 2>/dev/null || true)
if [ "$have" = "$digest" ]; then
  echo "make e2e-images: $image is up to date"
  exit 0
fi
start=$(date +%s)
rm -rf "$work"
mkdir -p "$work"
cp "$binary" "$work/kube-scheduler"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/group"
buildah "${storage[@]}" bud --isolation chroot --layers=false --quiet --annotation "hami.e2e.inputs=$digest" \
  -f "$containerfile" -t "$image" "$work" >/dev/null
rm -rf "$work"
echo "make e2e-images: $image built in $(( $(date +%s) - start )) s"
