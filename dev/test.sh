#!/usr/bin/env bash
# Run every check ebb has: lint, types, the guest side's minimum Python, unit tests
# (on the newest Python and on the oldest the guest side supports), end-to-end tests
# on real guests. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/bootstrap.sh

status=0
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "ruff"
.venv/bin/ruff check . || status=1
step "mypy (strict on protocol/ and guest/)"
./dev/typecheck.sh || status=1
step "vermin: protocol/ and guest/ run on Python 3.8"
.venv/bin/vermin --no-tips --violations -t=3.8- --backport typing protocol guest || status=1

step "guest side on the oldest and newest Python present"
./dev/guest-pythons.sh || status=1

step "unit tests"
.venv/bin/python -m pytest -q tests/unit || status=1
step "unit tests whose example count is the point (10^4 hostile inputs to the decoders)"
.venv/bin/python -m pytest -q -m many_examples tests/unit || status=1

step "end-to-end tests (real libvirtd, real guests)"
# The tests put the host back themselves; this is the net for a run that is killed.
# save and restore take the host-memory lock, so a benchmark running meanwhile is
# neither recorded nor undone.
host_before=$(.venv/bin/python -m ebb.lab.hostmem save)
trap '.venv/bin/python -m ebb.lab.hostmem restore "$host_before"; .venv/bin/ebbctl lab down --prefix ebb-e2e >/dev/null 2>&1 || true' EXIT
.venv/bin/python -m pytest -q -m e2e tests/e2e || status=1

step "packaging: .deb and .rpm builds, lintian, rpmlint, the guest package booted in a real image"
.venv/bin/python -m pytest -q tests/packaging || status=1

step "evaluation, short mode (the benchmark runs end to end; figures are not judged)"
.venv/bin/python bench/eval_ebb.py --short --results /var/lib/ebb-bench/results-short \
    --workdir /var/lib/ebb-bench/runs-short || status=1

exit $status
