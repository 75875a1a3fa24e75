#!/usr/bin/env bash
# Build ebb's RPM packages (ebb-host, ebb-guest, python3-ebb-protocol, ebb-lab), noarch.
#
#   packaging/rpm/build.sh [OUTDIR]      (default: dist/rpm)
#
# Makes Source0 (ebb-VERSION.tar.gz) from the repository's files, tracked or not
# yet committed, minus what .gitignore excludes, and runs rpmbuild -bb in a
# temporary _topdir. On a machine whose rpm database is not the system's (rpm on
# Debian) the BuildRequires cannot be checked, so they are not (--nodeps); the
# build then needs python3-build and python3-installer (Debian names).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-$root/dist/rpm}")

command -v rpmbuild >/dev/null || {
    echo "build.sh: rpmbuild is missing: run dev/bootstrap.sh (as root) or apt-get install rpm" >&2
    exit 1
}

version=$(rpmspec -q --srpm --qf '%{VERSION}' "$here/ebb.spec" 2>/dev/null)
top=$(mktemp -d "${TMPDIR:-/tmp}/ebb-rpm.XXXXXX")
trap 'rm -rf "$top"' EXIT
mkdir -p "$top/SOURCES" "$top/stage/ebb-$version"

if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xf - -C "$top/stage/ebb-$version"
else
    tar -C "$root" --exclude=.venv --exclude=.git --exclude='*.egg-info' \
        --exclude=build --exclude=dist -cf - . | tar -xf - -C "$top/stage/ebb-$version"
fi
tar -C "$top/stage" -czf "$top/SOURCES/ebb-$version.tar.gz" "ebb-$version"

nodeps=()
rpm -q rpm >/dev/null 2>&1 || nodeps=(--nodeps)
# Debian's own python3 (not a pyenv shim or a venv) builds the wheel.
env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    rpmbuild -bb "${nodeps[@]}" --define "_topdir $top" "$here/ebb.spec"

mkdir -p "$out"
find "$top/RPMS" -name '*.rpm' -exec cp {} "$out/" \;
ls -1 "$out"/*.rpm
