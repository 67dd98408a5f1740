#!/usr/bin/env bash
# Build one service's virtual environment inside the build stage of services/<name>/Dockerfile: exactly the
# versions of its dependencies locked in uv.lock (uv export --frozen), then the shared library and the service
# itself without dependencies; the service's console script (named like the package) must answer --help.
# Run from the workspace root as the Dockerfile copies it (pyproject.toml, uv.lock, shared/, services/).
# Usage: build-venv.sh <package> <service dir> <venv dir>     e.g. hami-webhook services/webhook /opt/hami/venv
# (env: UV_VERSION, the uv that reads the lock; build-arg UV_VERSION of the Dockerfiles)
set -euo pipefail
package=${1:?package}
service=${2:?service dir}
venv=${3:?venv dir}
uv_version=${UV_VERSION:-0.13.8}
# Behind a TLS-intercepting proxy `make images` mounts the host's CA bundle at /run/hami-build/ca.crt
# (buildah bud --volume; never stored in the image); without it the image's own CA roots are used.
if [ -s /run/hami-build/ca.crt ]; then export SSL_CERT_FILE=/run/hami-build/ca.crt PIP_CERT=/run/hami-build/ca.crt; fi

# uv itself lives outside the service's environment (and outside the runtime image).
python3 -m venv /opt/uv
/opt/uv/bin/pip install --quiet --disable-pip-version-check "uv==${uv_version}"
/opt/uv/bin/uv export --frozen --no-dev --no-hashes --no-emit-workspace --package "$package" -o /tmp/requirements.txt
python3 -m venv "$venv"
/opt/uv/bin/uv pip install --quiet --no-cache --python "$venv/bin/python" -r /tmp/requirements.txt
/opt/uv/bin/uv pip install --quiet --no-cache --python "$venv/bin/python" --no-deps ./shared "./$service"
"$venv/bin/$package" --help >/dev/null
