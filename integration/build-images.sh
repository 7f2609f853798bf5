#!/bin/sh
# Build (or reuse, by content hash) the integration images; prints NAME=tag lines.
# Needs dockerd and mmdebstrap (integration/host-setup.sh) and a Python with pip.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" integration/images.py --env "$@"
