#!/usr/bin/env bash
# Run the protocol and agent unit tests under the oldest and the newest Python the
# machine has (pyenv), each in its own small venv with only the guest dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=()
if command -v pyenv >/dev/null; then
    oldest=$(pyenv versions --bare | grep -E '^3\.(8|9)\.' | sort -V | head -1 || true)
    newest=$(pyenv versions --bare | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -V | tail -1 || true)
    [ -n "$oldest" ] && versions+=("$oldest")
    [ -n "$newest" ] && versions+=("$newest")
fi
if [ "${#versions[@]}" -eq 0 ]; then
    echo "no pyenv Pythons found; the guest side is tested only on the venv's Python" >&2
    exit 0
fi
for v in "${versions[@]}"; do
    py="$(pyenv root)/versions/$v/bin/python"
    venv=".venv-guest-$v"
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv"
        "$venv/bin/pip" install -q -U pip
    fi
    if [ ! -f "$venv/.ebb-installed" ] || [ pyproject.toml -nt "$venv/.ebb-installed" ]; then
        "$venv/bin/pip" install -q -e . pytest pytest-timeout hypothesis
        touch "$venv/.ebb-installed"
    fi
    echo "-- Python $v" >&2
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit/protocol tests/unit/guest
done
