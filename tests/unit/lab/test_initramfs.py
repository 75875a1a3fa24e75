"""The initramfs archive: a cpio "newc" archive the kernel can unpack."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, Tuple

import pytest
from ebb.lab import initramfs
from ebb.lab.errors import LabError


def _read_newc(data: bytes) -> Dict[str, Tuple[int, bytes]]:
    """name -> (mode, data) of a newc archive (the kernel's reader, in short)."""
    entries = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body = name_start + namesize
        body += -body % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[body:body + size])
        pos = body + size
        pos += -pos % 4


def test_archive_holds_init_busybox_modules_and_console(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    module = tmp_path / "virtio.ko"
    module.write_bytes(b"module bytes")
    kernel = initramfs.Kernel("6.1.0-test", tmp_path / "vmlinuz", tmp_path)
    data = initramfs.build_initramfs(kernel, busybox=busybox, modules=[("virtio", module)])
    entries = _read_newc(gzip.decompress(data))
    assert entries["init"][0] & 0o777 == 0o755
    assert entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert entries["bin/busybox"][1] == b"\x7fELF fake busybox"
    assert entries["lib/modules/virtio.ko"][1] == b"module bytes"
    assert entries["modules.order"][1] == b"virtio.ko\n"
    assert entries["dev/console"][0] & 0o170000 == 0o020000  # a character device


def test_no_kernel_says_which_package(tmp_path: Path) -> None:
    with pytest.raises(LabError) as err:
        initramfs.find_kernel(tmp_path / "boot", tmp_path / "modules")
    assert "linux-image-amd64" in str(err.value)


def test_newest_kernel_with_modules_is_chosen(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64", "6.5.0-1-amd64"):
        (boot / f"vmlinuz-{version}").write_bytes(b"")
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64"):  # 6.5 has no modules
        (mods / version / "kernel").mkdir(parents=True)
    assert initramfs.find_kernel(boot, mods).version == "6.1.0-56-amd64"
