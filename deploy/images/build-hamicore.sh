#!/usr/bin/env bash
# Build hamicore inside the image build's hamicore stage (services/{device-plugin,lib-installer}/Dockerfile) and
# collect what the lib installer installs: libvgpu.so, libvgpu_vk.so, the Vulkan layer manifest, VERSION.
# Usage: build-hamicore.sh <hamicore source dir> <output dir>
set -euo pipefail
src=${1:?hamicore source dir}
out=${2:?output dir}
build=$(mktemp -d)
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
mkdir -p "$out/vulkan/implicit_layer.d"
cp "$build/libvgpu.so" "$build/libvgpu_vk.so" "$out/"
cp "$build"/vulkan/implicit_layer.d/*.json "$out/vulkan/implicit_layer.d/"
if [ -f "$build/VERSION" ]; then cp "$build/VERSION" "$out/VERSION"; fi
rm -rf "$build"
ls -l "$out"
