#!/usr/bin/env bash
# Type-check ebb under its real module names (ebb.protocol, ebb.guest, ebb.host, ebb.lab).
# The packages live in protocol/, guest/, host/ and lab/ (package-dir mapping), which mypy
# cannot follow; a tree of symlinks named as the packages lets it resolve every
# `import ebb.…` to our own sources, so host code is checked against the real
# protocol types instead of Any. Strict on protocol/ and guest/ (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
root=build/typecheck
mkdir -p "$root/ebb"
for pkg in protocol guest host lab; do
    ln -sfn "../../../$pkg" "$root/ebb/$pkg"
done
cd "$root"
exec ../../.venv/bin/mypy --config-file ../../pyproject.toml -p ebb.protocol -p ebb.guest -p ebb.host -p ebb.lab "$@"
