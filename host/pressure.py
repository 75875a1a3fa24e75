"""How short of memory the host is, as one level from 0 to 3.

The level is judged by what the host actually lacks, not by how much of its
memory is page cache: the host swapping, tasks stalling on memory (PSI), and
the kernel's own estimate of what it can still hand out (MemAvailable). A host
whose freeable share (MemFree + Buffers + Cached) is low but which neither
swaps nor stalls and still has memory available is not short: on a lab run with
free page reporting the host never swapped, yet a policy that read the freeable
share alone ballooned 3.6 GiB out of its guests.

Levels (the same numbers go to the agents in ``pressure`` messages, PROTOCOL.md):

- 0 none: the host has memory to spare. Nothing is asked of anyone.
- 1 low: available memory is getting short (or a little swapping or stalling).
  Agents may yield cold cache. Whether balloons act from this level is the
  policy's choice (the cooperative policy's ``balloon_level``, 1 by default).
- 2 high: the host swaps or stalls, or available memory is short. Yields
  first, then balloons for what is still missing.
- 3 critical: the host is nearly out. Guests that offer nothing may be squeezed.

The function is pure; the engine calls it on each tick's host sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

NONE, LOW, HIGH, CRITICAL = 0, 1, 2, 3

#: Level names, for logs and ``ebbctl status``.
LEVEL_NAMES = ("none", "low", "high", "critical")


@dataclass(frozen=True)
class PressureThresholds:
    """Where each level starts. Shares are of host memory; swap rates in KiB/s."""

    #: MemAvailable below these shares of host memory: low, high, critical.
    available_low_share: float = 0.20
    available_high_share: float = 0.10
    available_critical_share: float = 0.05
    #: Swap-in plus swap-out at or above these rates (KiB/s): low, high, critical.
    #: A few pages now and then are not a shortage (the kernel swaps out a page
    #: that has not been used for hours even on a host with room).
    swap_low_kib_s: float = 64.0
    swap_high_kib_s: float = 1024.0
    swap_critical_kib_s: float = 16384.0
    #: Memory PSI avg10 (%): some at or above: low, high; full at or above: critical.
    psi_some_low: float = 1.0
    psi_some_high: float = 10.0
    psi_full_critical: float = 10.0


@dataclass(frozen=True)
class HostPressure:
    """A level and the measurement that set it (for people)."""

    level: int
    reason: str

    @property
    def name(self) -> str:
        return LEVEL_NAMES[self.level]


def host_pressure(
    *,
    mem_total_kib: int,
    mem_available_kib: Optional[int],
    freeable_kib: int,
    swap_in_kib_s: float,
    swap_out_kib_s: float,
    psi_some_avg10: Optional[float],
    psi_full_avg10: Optional[float],
    thresholds: PressureThresholds = PressureThresholds(),
) -> HostPressure:
    """The host's pressure level, from one sample.

    ``mem_available_kib`` is the kernel's MemAvailable; on kernels without it
    (before 3.14) the freeable memory stands in for it. Unknown PSI counts as no
    stall. The highest level any one measure reaches wins; the reason names it.
    """
    t = thresholds
    candidates: list[tuple[int, str]] = []

    available = mem_available_kib if mem_available_kib is not None else freeable_kib
    what = "MemAvailable" if mem_available_kib is not None else "freeable memory"
    if mem_total_kib > 0:
        share = available / mem_total_kib
        for level, line in (
            (CRITICAL, t.available_critical_share),
            (HIGH, t.available_high_share),
            (LOW, t.available_low_share),
        ):
            if share < line:
                candidates.append(
                    (level, f"{what} {share:.1%} of host memory, below {line:.0%}")
                )
                break

    swap = max(0.0, swap_in_kib_s) + max(0.0, swap_out_kib_s)
    for level, line in (
        (CRITICAL, t.swap_critical_kib_s),
        (HIGH, t.swap_high_kib_s),
        (LOW, t.swap_low_kib_s),
    ):
        if swap >= line:
            candidates.append((level, f"host swapping {swap:.0f} KiB/s (>= {line:g})"))
            break

    if psi_full_avg10 is not None and psi_full_avg10 >= t.psi_full_critical:
        candidates.append(
            (CRITICAL, f"memory PSI full {psi_full_avg10:.1f} % (>= {t.psi_full_critical:g})")
        )
    if psi_some_avg10 is not None:
        for level, psi_line in ((HIGH, t.psi_some_high), (LOW, t.psi_some_low)):
            if psi_some_avg10 >= psi_line:
                candidates.append(
                    (level, f"memory PSI some {psi_some_avg10:.1f} % (>= {psi_line:g})")
                )
                break

    if not candidates:
        return HostPressure(NONE, "host has memory to spare")
    level, reason = max(candidates, key=lambda c: c[0])
    return HostPressure(level, reason)


def pressure_thresholds(section: object) -> PressureThresholds:
    """:class:`PressureThresholds` from the config's ``[pressure]`` section (same key names)."""
    return PressureThresholds(**{
        name: float(getattr(section, name)) for name in PressureThresholds.__dataclass_fields__
    })


def sample_pressure(
    sample: object, page_kib: int = 4, thresholds: PressureThresholds = PressureThresholds()
) -> HostPressure:
    """:func:`host_pressure` of a :class:`~ebb.host.collectors.HostSample`.

    The sample's swap rates are pages per second; ``page_kib`` converts them.
    """
    return host_pressure(
        mem_total_kib=int(getattr(sample, "mem_total_kib", 0) or 0),
        mem_available_kib=getattr(sample, "mem_available_kib", None),
        freeable_kib=int(getattr(sample, "freeable_kib", 0) or 0),
        swap_in_kib_s=float(getattr(sample, "swap_in_per_s", 0.0) or 0.0) * page_kib,
        swap_out_kib_s=float(getattr(sample, "swap_out_per_s", 0.0) or 0.0) * page_kib,
        psi_some_avg10=getattr(sample, "psi_some_avg10", None),
        psi_full_avg10=getattr(sample, "psi_full_avg10", None),
        thresholds=thresholds,
    )
