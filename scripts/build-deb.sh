#!/bin/sh
# Build the Debian package from this checkout (docs/packaging.md), into build/deb/ (or
# $OUT). Reproducible: SOURCE_DATE_EPOCH is the last commit's time, the Python
# dependencies are the pinned wheels of debian/requirements.txt. Offline once the build
# dependencies are installed (`make deb` installs them; scripts/fetch-wheels.sh fills the
# wheelhouse). DEB_VERSION_SUFFIX (e.g. +test1) builds a newer version of the same tree
# (the integration suite's upgrade). Prints the path of the .deb.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/build/deb}
WHEELHOUSE=${WHEELHOUSE:-$ROOT/build/wheelhouse}
SUFFIX=${DEB_VERSION_SUFFIX:-}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export SOURCE_DATE_EPOCH WHEELHOUSE
sh scripts/fetch-wheels.sh "$WHEELHOUSE" >&2

# the tracked and new (not ignored) files of the working tree, nothing else
stage=$(mktemp -d "${TMPDIR:-/tmp}/secgroup-agent-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
src=$stage/secgroup-agent
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | \
    xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh | \
    tar --null -T - -cf - | tar -xf - -C "$src"

version=$(cd "$src" && dpkg-parsechangelog -S Version)$SUFFIX
if [ -n "$SUFFIX" ]; then
    date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
    { printf 'secgroup-agent (%s) unstable; urgency=medium\n\n  * Test build of %s.\n\n' \
          "$version" "$(git rev-parse --short HEAD)"
      printf ' -- secgroup-agent maintainers <secgroup-agent@example.org>  %s\n\n' "$date"
      cat "$src/debian/changelog"; } > "$src/changelog.new"
    mv "$src/changelog.new" "$src/debian/changelog"
fi
(cd "$src" && dpkg-buildpackage -b -us -uc --no-sign >&2)
mkdir -p "$OUT"
deb=$(ls "$stage"/secgroup-agent_"$version"_*.deb)
cp "$deb" "$OUT/"
echo "$OUT/$(basename "$deb")"
