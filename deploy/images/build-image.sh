#!/usr/bin/env bash
# Build one service image for `make images` (services/<service>/Dockerfile, buildah bud with layer caching), check
# it (check-image.sh; the lib installer's also check-install.sh), and record a stamp: the digest of every input's
# content and the image ID it produced. The next run skips buildah altogether when the digest is the same and the
# image in storage still has that ID: inputs are compared by content (file names and bytes), never by mtimes, so
# a fresh clone of the same commit or a `touch` rebuilds nothing.
# Inputs: the Dockerfile, deploy/images/, the workspace's pyproject.toml and uv.lock, every member's
# pyproject.toml, shared/, the service's directory, hamicore/ when the Dockerfile copies it (files the build
# context leaves out, per .dockerignore, are left out here too), the base image's ID and the build flags.
# Usage: build-image.sh <service> <image>     e.g. build-image.sh webhook localhost/hami-webhook:0.1.0
# (env: STORAGE_FLAGS, the buildah storage word list; BASE_IMAGE; BUILD_FLAGS, extra `buildah bud` words;
#  STAMP_DIR, where stamps live)
set -euo pipefail
service=${1:?service}
image=${2:?image}
read -r -a storage <<<"${STORAGE_FLAGS:---storage-driver overlay}"
base_image=${BASE_IMAGE:?BASE_IMAGE}
read -r -a build_flags <<<"${BUILD_FLAGS:-}"
stamp_dir=${STAMP_DIR:?STAMP_DIR}
dockerfile=services/$service/Dockerfile
[ -f "$dockerfile" ] || { echo "build-image: no $dockerfile (run from the repository root)" >&2; exit 2; }

# The digest of a set of files' names and contents, minus what .dockerignore keeps out of the context.
content_digest() {
  find "$@" \( -name __pycache__ -o -name '*.pyc' -o -name .pytest_cache -o -name .mypy_cache -o -name .ruff_cache \
      -o -name .hypothesis -o -name _generated -o -path 'hamicore/build*' \) -prune -o \( -type f -o -type l \) -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

inputs=("$dockerfile" deploy/images pyproject.toml uv.lock shared "services/$service")
for member in services/*/pyproject.toml; do inputs+=("$member"); done
if grep -q '^COPY hamicore/' "$dockerfile"; then inputs+=(hamicore); fi
scripts_digest=$(content_digest deploy/images)
base_id=$(buildah "${storage[@]}" inspect --type image --format '{{.FromImageID}}' "$base_image")
digest=$( { content_digest "${inputs[@]}"; echo "base=$base_id"; echo "flags=${build_flags[*]}"; } | sha256sum | cut -d' ' -f1)

stamp=$stamp_dir/hami-$service.stamp
if [ -f "$stamp" ]; then
  read -r stamped_digest stamped_id <"$stamp" || true
  current_id=$(buildah "${storage[@]}" inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)
  if [ "$stamped_digest" = "$digest" ] && [ -n "$current_id" ] && [ "$stamped_id" = "$current_id" ]; then
    echo "make images: $image is up to date (inputs unchanged)"
    exit 0
  fi
fi

echo "make images: building $image"
start=$(date +%s)
rm -f "$stamp"
buildah "${storage[@]}" bud --isolation chroot --layers --force-rm --quiet "${build_flags[@]}" \
  --build-arg BASE_IMAGE="$base_image" --build-arg HAMI_BUILD_SCRIPTS="$scripts_digest" \
  -f "$dockerfile" -t "$image" . >/dev/null
deploy/images/check-image.sh "${storage[*]}" "$image" "hami-$service"
if [ "$service" = lib-installer ]; then deploy/images/check-install.sh "${storage[*]}" "$image"; fi
mkdir -p "$stamp_dir"
echo "$digest $(buildah "${storage[@]}" inspect --type image --format '{{.FromImageID}}' "$image")" >"$stamp"
echo "make images: $image built and checked in $(( $(date +%s) - start )) s"
