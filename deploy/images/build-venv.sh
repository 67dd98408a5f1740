#!/usr/bin/env bash
# Build one service's virtual environment inside the build stage of services/<name>/Dockerfile (which starts from the
# hami-build base image, deploy/images/Dockerfile, where this script lives as /opt/hami-build/build-venv.sh), in two
# steps so that a source change reuses the (slow) dependency layer of a layer-caching build:
#   uv    (the base image's step) uv itself, in /opt/uv: outside the service's environment and the runtime image.
#   deps  exactly the versions of the service's dependencies locked in uv.lock (uv export --frozen). Needs
#         only the workspace's pyproject.toml, uv.lock and the members' pyproject.toml files.
#   app   the shared library and the service itself, without dependencies (a service with protos gets its gRPC
#         stubs generated first); the service's console script (named like the package) must answer --help.
#         Needs shared/ and the service's directory.
# Run from the workspace root as the Dockerfile copies it. Downloads go to uv's and pip's caches under
# /root/.cache, which the Dockerfiles mount as build caches (RUN --mount=type=cache): kept between builds, never
# stored in an image; without such mounts they are plain directories of the throwaway build stage.
# Usage: build-venv.sh uv
#        build-venv.sh deps <package> <venv dir>                 e.g. deps hami-webhook /opt/hami/venv
#        build-venv.sh app <package> <service dir> <venv dir>    e.g. app hami-webhook services/webhook /opt/hami/venv
# (env: UV_VERSION, the uv that reads the lock; build-arg UV_VERSION of deploy/images/Dockerfile's build target)
set -euo pipefail
step=${1:?step: uv, deps or app}
uv_version=${UV_VERSION:-0.13.8}
# Behind a TLS-intercepting proxy `make images` mounts the host's CA bundle at /run/hami-build/ca.crt
# (buildah bud --volume; never stored in the image); without it the image's own CA roots are used.
if [ -s /run/hami-build/ca.crt ]; then export SSL_CERT_FILE=/run/hami-build/ca.crt PIP_CERT=/run/hami-build/ca.crt; fi
# The cache is another mount: uv's default hard links would fail across it, so it copies.
export UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never PIP_DISABLE_PIP_VERSION_CHECK=1

case "$step" in
  uv)
    python3 -m venv /opt/uv
    /opt/uv/bin/pip install --quiet "uv==${uv_version}"
    ;;
  deps)
    package=${2:?package}
    venv=${3:?venv dir}
    /opt/uv/bin/uv export --frozen --no-dev --no-hashes --no-emit-workspace --package "$package" -o /tmp/requirements.txt
    python3 -m venv "$venv"
    /opt/uv/bin/uv pip install --quiet --python "$venv/bin/python" -r /tmp/requirements.txt
    ;;
  app)
    package=${2:?package}
    service=${3:?service dir}
    venv=${4:?venv dir}
    if [ -d "$service/proto" ]; then
      # The gRPC stubs of a service with protos (the device plugin's kubelet API) are build products, never
      # committed, and the build context leaves out any the host generated (.dockerignore): generate them here
      # with the grpcio-tools version locked in uv.lock, installed into uv's environment (build-only, never in
      # the image), so that the image does not depend on the build host's state.
      tools=$(python3 -c 'import sys, tomllib
print(next(p["version"] for p in tomllib.load(open(sys.argv[1], "rb"))["package"] if p["name"] == "grpcio-tools"))' uv.lock)
      /opt/uv/bin/uv pip install --quiet --python /opt/uv/bin/python "grpcio-tools==${tools}"
      PYTHONPATH="$service/src" /opt/uv/bin/python -m "${package//-/_}.adapters.protos" --force >/dev/null
    fi
    # uv keys its cache of a local project's wheel on pyproject.toml, not on the sources: with the cache mounted
    # across builds it would install the wheel of an earlier build, so these two are always rebuilt.
    /opt/uv/bin/uv pip install --quiet --python "$venv/bin/python" --no-deps \
      --refresh-package hami-shared --refresh-package "$package" ./shared "./$service"
    "$venv/bin/$package" --help >/dev/null
    if [ -d "$service/proto" ]; then
      # One mtime for every installed generated file: adapters/protos.py judges the stubs stale when they are older
      # than the copy of the proto next to them, and the install gives each file its own extraction time, in no
      # set order; a stale judgement in the image means regenerating at start, which fails there.
      find "$venv" -path '*/_generated/*' -type f -exec touch -d "@$(date +%s)" {} +
      # The installed stubs load as they are (the service's environment has no grpcio-tools to regenerate them,
      # and the image's root filesystem is read-only in its pod).
      "$venv/bin/python" -c "from ${package//-/_}.adapters import protos; protos.load()"
    fi
    ;;
  *)
    echo "build-venv: unknown step '$step' (uv, deps or app)" >&2
    exit 2
    ;;
esac
