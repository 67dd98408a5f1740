#!/usr/bin/env bash
# Run an image's entrypoint with --help in a chroot made from the image (buildah from + run, no daemon) and
# require exit status 0 and a usage line naming the program.
# Usage: check-image.sh "<buildah storage flags>" <image> <program name>
set -euo pipefail
read -r -a storage <<<"${1:?storage flags}"
image=${2:?image}
program=${3:?program name}

mapfile -t argv < <(buildah "${storage[@]}" inspect --type image "$image" \
  | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["OCIv1"]["config"].get("Entrypoint") or []))')
[ "${#argv[@]}" -gt 0 ] || { echo "check-image: $image has no entrypoint" >&2; exit 1; }
ctr=$(buildah "${storage[@]}" from --quiet "$image")
trap 'buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
# tini warns when it is not PID 1 (it is in a real pod); the warning is not part of the check.
out=$(buildah "${storage[@]}" run --isolation chroot --env TINI_SUBREAPER=1 "$ctr" -- "${argv[@]}" --help 2>&1) || {
  echo "check-image: '$image' entrypoint ${argv[*]} --help failed:" >&2; echo "$out" >&2; exit 1; }
grep -q "usage: $program" <<<"$out" || { echo "check-image: $image: no 'usage: $program' in --help output:" >&2; echo "$out" >&2; exit 1; }
echo "check-image: $image: '${argv[*]} --help' ok"
