#!/usr/bin/env bash
# The runtime stage every service image starts from (services/*/Dockerfile, stage `runtime`; the build stage
# builds on it too): Python 3 with venv, CA roots and tini, installed from Debian only when the base lacks them
# (the official debian:bookworm-slim does; the debootstrap base of `make images`, deploy/images/debian-base.sh,
# already has them and is left as it is).
# Usage: runtime-deps.sh
set -euo pipefail
if ! python3 -c 'import ensurepip' 2>/dev/null || ! command -v tini >/dev/null; then
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini
  rm -rf /var/lib/apt/lists/*
fi
