#!/bin/sh
# The Python half of the Debian package's build dependencies: the wheels pinned (with
# their hashes) in debian/requirements.txt (the agent's dependencies) and
# debian/build-requirements.txt (its build backend), in build/wheelhouse (or $1). Offline when
# they are all there already; otherwise they are downloaded from the package index.
#     sh scripts/fetch-wheels.sh [DIR]          # fetch what is missing
#     sh scripts/fetch-wheels.sh --lock         # re-resolve pyproject.toml into the lock
set -eu
cd "$(dirname "$0")/.."
LOCK=debian/requirements.txt
if [ "${1:-}" = "--lock" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" wheel -q --only-binary=:all: . -w "$tmp/wh"
    { sed -n '/^#/p' "$LOCK"
      for f in $(cd "$tmp/wh" && ls *.whl | grep -v -e '^secgroup_agent-' -e '^pyyaml-' | LC_ALL=C sort); do
          echo "$(echo "$f" | cut -d- -f1)==$(echo "$f" | cut -d- -f2)" \
               "--hash=sha256:$(sha256sum "$tmp/wh/$f" | cut -d' ' -f1)"
      done; } > "$LOCK.new"
    mv "$LOCK.new" "$LOCK"
    echo "wrote $LOCK"
    exit 0
fi
DIR=${1:-build/wheelhouse}
mkdir -p "$DIR"
for lock in $LOCK debian/build-requirements.txt; do
    PIP="python3 -m pip download -q --no-deps --only-binary=:all: --require-hashes -r $lock -d $DIR"
    $PIP --no-index --find-links "$DIR" 2>/dev/null || $PIP
done
