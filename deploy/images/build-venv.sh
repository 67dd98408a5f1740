#!/usr/bin/env bash
# Build one service's virtual environment inside the build stage of services/<name>/Dockerfile, in two steps so
# that a source change reuses the (slow) dependency layer of a layer-caching build:
#   deps  uv, then exactly the versions of the service's dependencies locked in uv.lock (uv export --frozen). Needs
#         only the workspace's pyproject.toml, uv.lock and the members' pyproject.toml files.
#   app   the shared library and the service itself, without dependencies; the service's console script (named
#         like the package) must answer --help. Needs shared/ and the service's directory.
# Run from the workspace root as the Dockerfile copies it. Downloads go to uv's and pip's caches under
# /root/.cache, which the Dockerfiles mount as build caches (RUN --mount=type=cache): kept between builds, never
# stored in an image; without such mounts they are plain directories of the throwaway build stage.
# Usage: build-venv.sh deps <package> <venv dir>                 e.g. deps hami-webhook /opt/hami/venv
#        build-venv.sh app <package> <service dir> <venv dir>    e.g. app hami-webhook services/webhook /opt/hami/venv
# (env: UV_VERSION, the uv that reads the lock; build-arg UV_VERSION of the Dockerfiles)
set -euo pipefail
step=${1:?step: deps or app}
package=${2:?package}
uv_version=${UV_VERSION:-0.13.8}
# Behind a TLS-intercepting proxy `make images` mounts the host's CA bundle at /run/hami-build/ca.crt
# (buildah bud --volume; never stored in the image); without it the image's own CA roots are used.
if [ -s /run/hami-build/ca.crt ]; then export SSL_CERT_FILE=/run/hami-build/ca.crt PIP_CERT=/run/hami-build/ca.crt; fi
# The cache is another mount: uv's default hard links would fail across it, so it copies.
export UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never PIP_DISABLE_PIP_VERSION_CHECK=1

case "$step" in
  deps)
    venv=${3:?venv dir}
    # uv itself lives outside the service's environment (and outside the runtime image).
    python3 -m venv /opt/uv
    /opt/uv/bin/pip install --quiet "uv==${uv_version}"
    /opt/uv/bin/uv export --frozen --no-dev --no-hashes --no-emit-workspace --package "$package" -o /tmp/requirements.txt
    python3 -m venv "$venv"
    /opt/uv/bin/uv pip install --quiet --python "$venv/bin/python" -r /tmp/requirements.txt
    ;;
  app)
    service=${3:?service dir}
    venv=${4:?venv dir}
    /opt/uv/bin/uv pip install --quiet --python "$venv/bin/python" --no-deps ./shared "./$service"
    "$venv/bin/$package" --help >/dev/null
    ;;
  *)
    echo "build-venv: unknown step '$step' (deps or app)" >&2
    exit 2
    ;;
esac
