#!/usr/bin/env bash
# Build hamicore inside the hamicore stage of deploy/images/Dockerfile (the hami-hamicore base image the device
# plugin's and the lib installer's images copy from) and collect what the lib installer installs: libvgpu.so,
# libvgpu_vk.so, the Vulkan layer manifest(s), VERSION; and, in another directory, the region and spec layouts for
# Python (region_layout.py, hamicore/tools/gen_region_layout.py: the device plugin's core/layout.py reads it).
# Two steps, so that a layer-caching build keeps the toolchain layer when only hamicore/ changes:
#   toolchain  the compilers and headers from Debian (the stage starts from the bare base)
#   build      cuda.h and nvml.h from NVIDIA's header wheels at the versions pinned in uv.lock (as for
#              `make hamicore`), then hamicore itself, then the layouts for Python
# Downloaded .debs and wheels go to /var/cache/apt/archives and /root/.cache/pip, which the Dockerfiles mount as
# build caches (kept between builds, never in an image).
# Usage: build-hamicore.sh toolchain
#        build-hamicore.sh build <hamicore source dir> <uv.lock> <output dir> <layout output dir>
set -euo pipefail
step=${1:?step: toolchain or build}
# The CA bundle `make images` mounts behind a TLS-intercepting proxy (see build-venv.sh).
if [ -s /run/hami-build/ca.crt ]; then export SSL_CERT_FILE=/run/hami-build/ca.crt PIP_CERT=/run/hami-build/ca.crt; fi

if [ "$step" = toolchain ]; then
  apt-get update
  apt-get install -y --no-install-recommends \
    gcc libc6-dev make cmake pkg-config libvulkan-dev python3 python3-venv ca-certificates
  rm -rf /var/lib/apt/lists/*
  exit 0
fi
[ "$step" = build ] || { echo "build-hamicore: unknown step '$step' (toolchain or build)" >&2; exit 2; }
src=${2:?hamicore source dir}
lock=${3:?uv.lock}
out=${4:?output dir}
layout=${5:?layout output dir}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pins=$(python3 - "$lock" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    packages = {p["name"]: p["version"] for p in tomllib.load(f)["package"]}
print(" ".join(f"{n}=={packages[n]}" for n in ("nvidia-cuda-runtime", "nvidia-nvml-dev")))
PY
)
python3 -m venv "$work/headers"
# shellcheck disable=SC2086  # pins is a word list on purpose
"$work/headers/bin/pip" install --quiet --disable-pip-version-check --no-deps $pins
include=$(dirname "$(find "$work/headers" -name cuda.h -path '*include*' | head -n 1)")
[ -f "$include/nvml.h" ] || { echo "build-hamicore: no nvml.h next to $include/cuda.h" >&2; exit 1; }

cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCUDA_INCLUDE_DIR="$include" >"$work/cmake.log" 2>&1 \
  || { tail -n 40 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" -j"$(nproc)" >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log" >&2; exit 1; }

mkdir -p "$out/vulkan/implicit_layer.d"
for lib in libvgpu.so libvgpu_vk.so; do
  found=$(find "$work/build" -name "$lib" -type f | head -n 1)
  [ -n "$found" ] || { echo "build-hamicore: the build made no $lib" >&2; exit 1; }
  cp "$found" "$out/$lib"
done
manifests=$(find "$work/build" -path '*vulkan/implicit_layer.d/*.json' -type f)
[ -n "$manifests" ] || { echo "build-hamicore: the build made no Vulkan layer manifest" >&2; exit 1; }
cp $manifests "$out/vulkan/implicit_layer.d/"
if [ -f "$work/build/VERSION" ]; then cp "$work/build/VERSION" "$out/VERSION"; fi
python3 "$src/tools/gen_region_layout.py" --include "$src/src/accounting" --out "$layout/region_layout.py"
ls -lR "$out" "$layout"
