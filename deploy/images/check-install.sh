#!/usr/bin/env bash
# Run the lib-installer image's installer once, in a chroot of an image that carries the hamicore build
# (/opt/hami/lib), into a scratch directory, and require the installed layout (versioned libraries, stable
# names, Vulkan manifest, ld.so.preload). Proves the multi-stage build produced an installable hamicore.
# Usage: check-install.sh "<buildah storage flags>" <image>
set -euo pipefail
read -r -a storage <<<"${1:?storage flags}"
image=${2:?image}
ctr=$(buildah "${storage[@]}" from --quiet "$image")
trap 'buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
out=$(buildah "${storage[@]}" run --isolation chroot "$ctr" -- /bin/sh -c \
  '/opt/hami/venv/bin/hami-lib-installer --mode=once --source=/opt/hami/lib --dest=/tmp/vgpu --process-scan=off >/dev/null \
   && cd /tmp/vgpu && ls -1 && cat ld.so.preload' 2>&1) || { echo "check-install: $image: install failed:" >&2; echo "$out" >&2; exit 1; }
for want in libvgpu.so libvgpu_vk.so ld.so.preload vulkan /tmp/vgpu/libvgpu.so; do
  grep -qx -- "$want" <<<"$out" || { echo "check-install: $image: '$want' missing after install:" >&2; echo "$out" >&2; exit 1; }
done
grep -qE '^libvgpu\.so\.[0-9A-Za-z]' <<<"$out" || { echo "check-install: $image: no versioned libvgpu.so.<version>:" >&2; echo "$out" >&2; exit 1; }
echo "check-install: $image: hamicore installs ($(grep -cE '^libvgpu' <<<"$out") library files)"
