#!/usr/bin/env bash
# Build one image for `make images` (buildah bud with layer caching): a base image (a target of
# deploy/images/Dockerfile) or a service image (services/<service>/Dockerfile, checked with check-image.sh; the lib
# installer's also with check-install.sh), and record a stamp: the digest of every input's content and the image ID
# it produced. The next run skips buildah altogether when the digest is the same and the image in storage still has
# that ID: inputs are compared by content (file names and bytes), never by mtimes, so a fresh clone of the same
# commit or a `touch` rebuilds nothing.
# Inputs: the Dockerfile, the files and directories named after it (files the build context leaves out, per
# .dockerignore, are left out here too), the IDs of the images it starts from (FROM_IMAGES) and the build flags.
# Usage: build-image.sh <name> <image> <dockerfile> <input>...
#   e.g. build-image.sh hami-webhook localhost/hami-webhook:0.1.0 services/webhook/Dockerfile shared services/webhook
# (env: STORAGE_FLAGS, the buildah storage word list; FROM_IMAGES, words ARG=image: the images the Dockerfile
#  starts from, each passed as --build-arg when the Dockerfile declares that ARG; BUILD_FLAGS, extra `buildah bud`
#  words (a base image's --target); CHECK, "service" to check a service image; STAMP_DIR, where stamps live)
set -euo pipefail
name=${1:?name}
image=${2:?image}
dockerfile=${3:?dockerfile}
shift 3
read -r -a storage <<<"${STORAGE_FLAGS:---storage-driver overlay}"
read -r -a from_images <<<"${FROM_IMAGES:-}"
read -r -a build_flags <<<"${BUILD_FLAGS:-}"
stamp_dir=${STAMP_DIR:?STAMP_DIR}
[ -f "$dockerfile" ] || { echo "build-image: no $dockerfile (run from the repository root)" >&2; exit 2; }

# The digest of a set of files' names and contents, minus what .dockerignore keeps out of the context.
content_digest() {
  find "$@" \( -name __pycache__ -o -name '*.pyc' -o -name .pytest_cache -o -name .mypy_cache -o -name .ruff_cache \
      -o -name .hypothesis -o -name _generated -o -path 'hamicore/build*' \) -prune -o \( -type f -o -type l \) -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

image_id() { buildah "${storage[@]}" inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

from_ids=()
for pair in "${from_images[@]}"; do
  arg=${pair%%=*}
  if grep -q "^ARG ${arg}=" "$dockerfile"; then
    build_flags+=(--build-arg "$pair")
    id=$(image_id "${pair#*=}") || { echo "build-image: $name starts from ${pair#*=}, which is not built" >&2; exit 1; }
    from_ids+=("$arg=$id")
  fi
done
scripts_digest=$(content_digest deploy/images)
digest=$( { content_digest "$dockerfile" "$@"; printf '%s\n' "${from_ids[@]}"; echo "flags=${build_flags[*]}"; } \
  | sha256sum | cut -d' ' -f1)

stamp=$stamp_dir/$name.stamp
if [ -f "$stamp" ]; then
  read -r stamped_digest stamped_id <"$stamp" || true
  current_id=$(image_id "$image" || true)
  if [ "$stamped_digest" = "$digest" ] && [ -n "$current_id" ] && [ "$stamped_id" = "$current_id" ]; then
    echo "make images: $image is up to date (inputs unchanged)"
    exit 0
  fi
fi

echo "make images: building $image"
start=$(date +%s)
rm -f "$stamp"
buildah "${storage[@]}" bud --isolation chroot --layers --force-rm --quiet "${build_flags[@]}" \
  --build-arg HAMI_BUILD_SCRIPTS="$scripts_digest" -f "$dockerfile" -t "$image" . >/dev/null
if [ "${CHECK:-}" = service ]; then
  deploy/images/check-image.sh "${storage[*]}" "$image" "$name"
  if [ "$name" = hami-lib-installer ]; then deploy/images/check-install.sh "${storage[*]}" "$image"; fi
fi
mkdir -p "$stamp_dir"
echo "$digest $(image_id "$image")" >"$stamp"
echo "make images: $image built in $(( $(date +%s) - start )) s"
