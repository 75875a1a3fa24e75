#!/usr/bin/env bash
# Build ebb's Debian packages (ebb-host, ebb-guest, python3-ebb-protocol, ebb-lab).
#
#   packaging/deb/build.sh [OUTDIR]      (default: dist/deb)
#
# dpkg-buildpackage wants debian/ at the root of the source tree, and the
# repository keeps it under packaging/deb/, so this assembles a build tree in a
# temporary directory (the repository's files, tracked or not yet committed,
# minus what .gitignore excludes, plus debian/) and builds binary packages there.
# The .deb, .buildinfo and .changes files end up in OUTDIR. Needs the tools that
# dev/bootstrap.sh installs (debhelper, dh-python, pybuild-plugin-pyproject).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-$root/dist/deb}")

for tool in dpkg-buildpackage dh pybuild; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool is missing: run dev/bootstrap.sh (as root) or apt-get install debhelper dh-python pybuild-plugin-pyproject" >&2
        exit 1
    }
done

version=$(dpkg-parsechangelog -l "$here/debian/changelog" -S Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/ebb-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/ebb-$version"
mkdir -p "$src"

if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xf - -C "$src"
else
    tar -C "$root" --exclude=.venv --exclude=.git --exclude='*.egg-info' \
        --exclude=build --exclude=dist -cf - . | tar -xf - -C "$src"
fi
rm -rf "$src/debian"
cp -a "$here/debian" "$src/debian"

# The packages are for Debian's own python3: keep pyenv shims, venvs and the like
# out of the build.
(cd "$src" && env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b)

mkdir -p "$out"
for f in "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes; do
    [ -e "$f" ] && cp "$f" "$out/"
done
ls -1 "$out"/*.deb
