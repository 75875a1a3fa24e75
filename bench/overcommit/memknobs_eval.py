"""The Memknobs scenario: guests whose memory demand shifts between them over time.

Pattern (the same in every configuration; documented in docs/evaluation.md):
time is cut into slots of ``slot_s`` seconds, as many slots per cycle as there
are guests. Guest ``i`` (0-based) keeps a *high* buffer during the slots ``s``
with ``(s - i) mod n < n/2`` and a *low* one otherwise, so at any moment half
the guests are busy and the busy half moves on by one guest every slot. Each
guest's high and low sizes differ (:data:`HIGH_MIB`, :data:`LOW_MIB`), as each
of the article's 32 guests "used memory in a unique pattern".

Throughput of a guest is the bytes of pages it touched divided by the time it
spent touching them (its memknobs lines, weighted by their windows); the total
is the sum of the guests' figures, as the article's Table 1 computed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from ebb.lab.guestcmd import GuestShell

from . import labguests
from .harness import Progress, Scenario

#: Per-guest buffer sizes (MiB) in the busy and the quiet slots, for guests 1..4
#: (repeated for more guests), scaled to :attr:`MemknobsScenario.memory_mib`.
HIGH_SHARE = (0.73, 0.68, 0.78, 0.63)
LOW_SHARE = (0.125, 0.17, 0.083, 0.21)


@dataclass
class MemknobsScenario(Scenario):
    slot_s: float = 40.0
    guest_swap_mib: int = 1024

    def high_mib(self, index: int) -> int:
        return int(self.memory_mib * HIGH_SHARE[index % len(HIGH_SHARE)])

    def low_mib(self, index: int) -> int:
        return int(self.memory_mib * LOW_SHARE[index % len(LOW_SHARE)])

    def pattern(self, index: int) -> str:
        n = self.guests
        steps = []
        for slot in range(n):
            busy = (slot - index) % n < n / 2
            size = self.high_mib(index) if busy else self.low_mib(index)
            steps.append(f"{size}M:{self.slot_s:g}s")
        return ",".join(steps)

    def describe(self) -> Dict[str, Any]:
        out = super().describe()
        out.update({"slot_s": self.slot_s, "guest_swap_mib": self.guest_swap_mib,
                    "patterns": {n: self.pattern(i) for i, n in enumerate(self.names)}})
        return out

    def swap_image(self, name: str) -> Path:
        return self.images_dir / f"{name}-swap.img"

    def disks(self) -> Dict[str, List[labguests.Disk]]:
        return {n: [labguests.Disk(self.swap_image(n), "vda")] for n in self.names}

    def prepare_images(self, say: Progress) -> None:
        for name in self.names:
            labguests.make_swap_image(self.swap_image(name), self.guest_swap_mib)

    def setup_guest(self, index: int, shell: GuestShell) -> Dict[str, Any]:
        return {"guest_swap_kib": labguests.enable_swap(shell, "/dev/vda")}

    def workload(self, index: int) -> List[str]:
        return ["memknobs", "--pattern", self.pattern(index), "--json",
                "--duration", f"{self.duration_s:g}"]

    def analyse(self, index: int, output: str) -> Dict[str, Any]:
        return throughput(output)


def throughput(output: str, since_s: float = 0.0) -> Dict[str, Any]:
    """A guest's memknobs lines -> its mean throughput (MB/s) while it had a buffer.

    Only the lines after ``since_s`` seconds count (a phase of the pattern).
    """
    previous_t = 0.0
    bytes_mb = active_s = 0.0
    line_rates = []
    lines = 0
    for raw in output.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        t = float(line["t_s"])
        window = max(0.0, t - previous_t)
        previous_t = t
        if t <= since_s:
            continue
        lines += 1
        if line.get("size_mib", 0) > 0:
            rate = float(line["mb_per_s"])
            bytes_mb += rate * window
            active_s += window
            line_rates.append(rate)
    return {
        "mb_per_s": round(bytes_mb / active_s, 1) if active_s else 0.0,
        "mb_per_s_line_mean": round(sum(line_rates) / len(line_rates), 1) if line_rates else 0.0,
        "active_s": round(active_s, 1),
        "lines": lines,
    }
