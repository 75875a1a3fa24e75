#!/usr/bin/env bash
# Make this machine ready to build, test and run ebb: Debian packages, a venv with
# ebb installed editable (host extra and dev tools), and libvirtd running.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
    libsystemd-dev pkg-config gcc linux-image-amd64 busybox-static cpio kmod
)

log() { printf '\033[1mebb:\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root: the lab defines VMs under qemu:///system and the tests change host memory settings"
    exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Packaging (packaging/, tests/packaging): building the .deb and .rpm packages,
# linting them, and the test that boots the guest package in a debootstrap image.
PACKAGING_APT_PACKAGES=(
    debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
    python3-wheel python3-build python3-installer lintian debootstrap e2fsprogs
    rpm rpm2cpio rpmlint systemd python3-msgpack
)
missing=()
for p in "${PACKAGING_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packaging tools: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${EBB_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.ebb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing ebb and its dependencies into .venv"
    .venv/bin/pip install -q -U pip
    .venv/bin/pip install -q -e '.[host,dev]'
    touch "$stamp"
fi

if ! pgrep -x virtlogd >/dev/null; then
    log "starting virtlogd"
    virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
    log "starting libvirtd"
    libvirtd -d
fi
for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { log "libvirtd does not answer on qemu:///system"; exit 1; }
log "ready"
