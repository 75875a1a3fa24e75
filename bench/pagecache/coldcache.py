"""The cold cache + growth scenario: cache nobody reads again, and a guest that grows.

Several *cache guests* read the page-cache scenario's data disk once (its
working set goes into their page cache) and then serve requests from a small
hot share of it only: the rest of their cache is cold, memory the host could
use but that free page reporting alone cannot return (it is not free in the
guest). The last guest, the *growing guest*, runs memknobs: a small buffer for
``hold_s`` (longer than the agent's ``cache_hold_s``, 120 s, so that the cache
counts as cold), then a buffer that grows in steps beyond what the host has
free. A guest that yields its cold cache lets the grower fit; a host that does
not find that memory swaps.

Figures: the growing guest's throughput and memory stall while it grows and
after, and the cache guests' p95 latency (their hot set must stay served).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from ebb.lab.guestcmd import GuestShell
from overcommit import labguests
from overcommit.memknobs_eval import throughput

from pagecache.scenario import MOUNT, PAGES, READER, PageCacheScenario, cache_refaults


@dataclass
class ColdCacheScenario(PageCacheScenario):
    """``guests`` counts all of them: ``guests - 1`` cache guests and the grower."""

    grower_memory_mib: int = 1024
    #: The grower's buffer: ``low`` while the cache goes cold, then up to ``high``.
    grower_low_mib: int = 64
    grower_high_mib: int = 768
    hold_s: float = 150.0
    grow_steps: int = 4
    step_s: float = 15.0
    #: Share of the files the cache guests keep reading after the first pass.
    hot_files: float = 0.1

    @property
    def grower(self) -> str:
        return self.names[-1]

    def is_grower(self, index: int) -> bool:
        return index == self.guests - 1

    def memory_of(self) -> Dict[str, int]:
        return {self.grower: self.grower_memory_mib}

    def grower_pattern(self) -> str:
        """``low:hold, step1:s, ..., high:rest``; the steps add up to the duration."""
        steps = [f"{self.grower_low_mib}M:{self.hold_s:g}s"]
        span = self.grower_high_mib - self.grower_low_mib
        for k in range(1, self.grow_steps):
            size = self.grower_low_mib + span * k // self.grow_steps
            steps.append(f"{size}M:{self.step_s:g}s")
        rest = self.duration_s - self.hold_s - self.step_s * (self.grow_steps - 1)
        if rest <= 0:
            raise ValueError(f"cold cache scenario: duration {self.duration_s:g} s leaves no "
                             f"time at {self.grower_high_mib} MiB after holding "
                             f"{self.hold_s:g} s and {self.grow_steps - 1} steps of "
                             f"{self.step_s:g} s")
        steps.append(f"{self.grower_high_mib}M:{rest:g}s")
        return ",".join(steps)

    def describe(self) -> Dict[str, Any]:
        out = super().describe()
        out.update({"cache_guests": self.guests - 1, "grower_memory_mib": self.grower_memory_mib,
                    "grower_pattern": self.grower_pattern(), "hold_s": self.hold_s,
                    "hot": f"after one pass over every file, requests go to the first "
                           f"{self.hot_files:.0%} of the files only"})
        return out

    def disks(self) -> Dict[str, List[labguests.Disk]]:
        out = super().disks()
        out[self.grower] = [labguests.Disk(self.swap_image(self.grower), "vda")]
        return out

    def setup_guest(self, index: int, shell: GuestShell) -> Dict[str, Any]:
        swap_kib = labguests.enable_swap(shell, "/dev/vda")
        if not self.is_grower(index):
            labguests.mount_data(shell, "/dev/vdb", MOUNT)
        return {"guest_swap_kib": swap_kib, "role": "grower" if self.is_grower(index)
                else "cache"}

    def workload(self, index: int) -> List[str]:
        if self.is_grower(index):
            return ["memknobs", "--pattern", self.grower_pattern(), "--json",
                    "--duration", f"{self.duration_s:g}"]
        return ["python3", str(READER), "--dir", PAGES, "--rate", f"{self.rate_per_s:g}",
                "--duration", f"{self.duration_s:g}", "--seed", str(index + 1), "--warm",
                "--hot-files", f"{self.hot_files:g}", "--hot-share", "1"]

    def analyse(self, index: int, output: str) -> Dict[str, Any]:
        if self.is_grower(index):
            # While it grows and after: the low phase measures nothing that is short.
            return {"role": "grower", **throughput(output, since_s=self.hold_s)}
        return {"role": "cache", **super().analyse(index, output)}


def coldcache_figures(run: Dict[str, Any]) -> Dict[str, float]:
    """The scenario's own figures of a run: the grower's; the cache guests' p95 and refaults."""
    guests = run["guests"]
    grower = [g for g in guests.values() if g.get("role") == "grower"]
    cache = [g for g in guests.values() if g.get("role") == "cache"]
    out: Dict[str, float] = {}
    if grower:
        out["grower_mb_s"] = float(grower[0].get("mb_per_s", 0.0))
        if grower[0].get("stall_s") is not None:
            out["grower_stall_s"] = float(grower[0]["stall_s"])
        out["grower_swap_ops"] = float(grower[0].get("swap_in_pages", 0)
                                       + grower[0].get("swap_out_pages", 0))
    p95 = [float(g.get("latency_p95_ms", 0.0)) for g in cache]
    if p95:
        out["cache_latency_p95_ms"] = round(sum(p95) / len(p95), 2)
        out["cache_latency_p95_worst_ms"] = round(max(p95), 2)
    out.update(cache_refaults(cache))
    return out
