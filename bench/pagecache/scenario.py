"""The page-cache scenario: guests reading a working set of files from a virtio disk.

Every guest mounts the same read-only ext4 image (``<shareable/>``, host cache
off with ``cache='none'`` so the guests' own page caches decide how often the
disk is read). When the workload starts (on the shrunk host, with ebbd running)
each guest reads every file once to warm its cache, then serves requests with
:mod:`pagecache.reader` at a fixed rate for the run's duration: the guests'
caches grow into the host's memory as they would on an overcommitted host.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ebb.lab.guestcmd import GuestShell
from overcommit import labguests
from overcommit.harness import Progress, Scenario

READER = Path(__file__).resolve().with_name("reader.py")
MOUNT = "/run/bench-data"
PAGES = f"{MOUNT}/pages"


@dataclass
class PageCacheScenario(Scenario):
    files: int = 600
    file_kib: int = 512
    rate_per_s: float = 16.0
    guest_swap_mib: int = 512

    @property
    def data_image(self) -> Path:
        return self.images_dir / f"pagecache-{self.files}x{self.file_kib}k-v2.img"

    def swap_image(self, name: str) -> Path:
        return self.images_dir / f"{name}-swap.img"

    def describe(self) -> Dict[str, Any]:
        out = super().describe()
        out.update({"files": self.files, "file_kib": self.file_kib,
                    "working_set_mib": self.files * self.file_kib // 1024,
                    "rate_per_s_per_guest": self.rate_per_s,
                    "hot": "80 % of requests to 20 % of the files"})
        return out

    def disks(self) -> Dict[str, List[labguests.Disk]]:
        return {n: [labguests.Disk(self.swap_image(n), "vda"),
                    labguests.Disk(self.data_image, "vdb", readonly=True)]
                for n in self.names}

    def prepare_images(self, say: Progress) -> None:
        for name in self.names:
            labguests.make_swap_image(self.swap_image(name), self.guest_swap_mib)
        if self.data_image.exists():
            return
        source = self.images_dir / "pagecache-src"
        shutil.rmtree(source, ignore_errors=True)
        (source / "pages").mkdir(parents=True)
        say(f"building the data disk: {self.files} files x {self.file_kib} KiB")
        for i in range(self.files):
            (source / "pages" / f"page-{i:05d}.bin").write_bytes(os.urandom(self.file_kib * 1024))
        size_mib = self.files * self.file_kib // 1024 + 64
        tmp = self.data_image.with_suffix(".tmp")
        labguests.mkfs_ext4_from_dir(tmp, source, size_mib + size_mib // 10)
        tmp.rename(self.data_image)
        shutil.rmtree(source, ignore_errors=True)

    def setup_guest(self, index: int, shell: GuestShell) -> Dict[str, Any]:
        swap_kib = labguests.enable_swap(shell, "/dev/vda")
        labguests.mount_data(shell, "/dev/vdb", MOUNT)
        return {"guest_swap_kib": swap_kib}

    def workload(self, index: int) -> List[str]:
        return ["python3", str(READER), "--dir", PAGES, "--rate", f"{self.rate_per_s:g}",
                "--duration", f"{self.duration_s:g}", "--seed", str(index + 1), "--warm"]

    def analyse(self, index: int, output: str) -> Dict[str, Any]:
        for raw in reversed(output.splitlines()):
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
        return {"requests": 0, "error": "no result line"}


def cache_refaults(guests: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Pages of cache the guests read back after it was evicted, summed.

    A guest's ``cache_refaults`` come from its ``workingset_refault_file``
    (:func:`overcommit.harness.guest_vm_figures`); runs before 2026-12-07 lack them.
    """
    counted = [g["cache_refaults"] for g in guests if g.get("cache_refaults") is not None]
    return {"cache_refaults": float(sum(counted))} if counted else {}
