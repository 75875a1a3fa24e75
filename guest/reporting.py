"""The grain of free page reporting, coarser while a host manages the guest.

With free page reporting (virtio-balloon ``freePageReporting='on'``) the guest's
kernel hands every free block of at least ``2**page_reporting_order`` pages to
the host, which drops it; the guest pays a host page fault for each page when it
uses the block again. A guest that keeps allocating and freeing short-lived
buffers pays that again and again for memory the host gets back only for a few
seconds. On the lab's page cache scenario (guests serving reads from a warm
cache) the kernel's default grain, 2 MiB blocks (order 9 on x86), cost the
guests' p95 latency about 18 % against no reporting; 4 MiB blocks (order 10)
cost nothing measurable, and the host got back as much memory.

With ebbd, memory that matters comes back in large blocks: a yield is followed
by a compaction (``reclaim.Compactor``), and a guest that frees a large
allocation frees whole blocks. So while the agent is in a session with a host it
sets the order one above the kernel's, no higher than the largest block the
kernel has (the columns of ``/proc/buddyinfo``), and puts the kernel's value back
when the session ends or the agent stops. Without a host nothing is changed: the
guest then behaves exactly as with free page reporting alone.

The value the agent found is kept in its runtime directory until it is put back,
so an agent that was killed restores it at its next start instead of taking its
own setting for the kernel's.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

LOG = logging.getLogger(__name__)

#: The kernel's grain of free page reporting (Linux 5.14+), relative to /sys.
ORDER_FILE = os.path.join("module", "page_reporting", "parameters", "page_reporting_order")
#: Where the agent keeps the kernel's value while it has changed it.
SAVED_NAME = "page_reporting_order.orig"
#: ``page_reporting_order`` before any reporting device registered: (unsigned) -1.
_UNSET = (1 << 32) - 1

#: ``--reporting-order`` values besides a number.
COARSE = "coarse"
KEEP = "keep"


class ReportingOrderError(ValueError):
    """A ``--reporting-order`` value that is neither ``coarse``, ``keep`` nor an order."""


def parse_setting(text: str) -> str:
    """``coarse``, ``keep`` or an order 0..20, as given; raises ReportingOrderError."""
    value = text.strip().lower()
    if value in (COARSE, KEEP):
        return value
    if value.isdigit() and int(value) <= 20:
        return str(int(value))
    raise ReportingOrderError(f"{text!r} is not coarse, keep or an order 0..20")


def largest_order(proc_root: str) -> Optional[int]:
    """The largest free block order of the guest's kernel, from ``/proc/buddyinfo``.

    Each line is ``Node N, zone NAME`` followed by one count per order from 0.
    """
    try:
        with open(os.path.join(proc_root, "buddyinfo"), encoding="ascii",
                  errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    widths = [len(line.split()) - 4 for line in lines if line.startswith("Node")]
    return max(widths) - 1 if widths and max(widths) > 0 else None


class ReportingOrder:
    """Sets ``page_reporting_order`` to ``target`` while engaged; puts ``original`` back.

    Paths come in as parameters: tests use a temporary tree.
    """

    def __init__(self, path: str, original: int, target: int, saved_path: str) -> None:
        self.path = path
        self.original = original
        self.target = target
        self.saved_path = saved_path
        self.engaged = False

    def engage(self) -> None:
        """Set the coarser grain (once; again only after :meth:`release`)."""
        if self.engaged:
            return
        try:
            self._save()
            self._write(self.target)
        except OSError as err:
            LOG.warning("free page reporting: cannot set %s to %d: %s", self.path,
                        self.target, err)
            self._forget()
            return
        self.engaged = True
        LOG.info("free page reporting: blocks of %s while the host manages this guest "
                 "(page_reporting_order %d -> %d)", block_size(self.target), self.original,
                 self.target)

    def release(self) -> None:
        """Put the kernel's grain back."""
        if not self.engaged:
            return
        self.engaged = False
        try:
            self._write(self.original)
        except OSError as err:
            LOG.warning("free page reporting: cannot put %s back to %d: %s (kept in %s)",
                        self.path, self.original, err, self.saved_path)
            return
        self._forget()
        LOG.info("free page reporting: page_reporting_order back to %d", self.original)

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.saved_path), mode=0o700, exist_ok=True)
        tmp = self.saved_path + ".tmp"
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(f"{self.original}\n")
        os.replace(tmp, self.saved_path)

    def _forget(self) -> None:
        try:
            os.unlink(self.saved_path)
        except FileNotFoundError:
            pass
        except OSError as err:
            LOG.debug("cannot remove %s: %s", self.saved_path, err)

    def _write(self, order: int) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, f"{order}\n".encode("ascii"))
        finally:
            os.close(fd)


def block_size(order: int) -> str:
    """``10`` -> ``4 MiB`` (4 KiB pages)."""
    kib = 4 << order
    return f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"


def _read_order(path: str) -> int:
    with open(path, encoding="ascii") as handle:
        return int(handle.read().strip())


def probe(setting: str, sys_root: str, proc_root: str,
          runtime_dir: str) -> Optional[ReportingOrder]:
    """A :class:`ReportingOrder` for ``setting``, or None when there is nothing to do.

    Nothing to do: ``keep``; a kernel without the parameter (before 5.14) or without
    a reporting device (the balloon has no free page reporting); a file the agent
    may not write; a grain already as coarse as the target. A value saved by an
    agent that did not stop cleanly is written back first and taken as the kernel's.
    """
    if setting == KEEP:
        return None
    path = os.path.join(sys_root, ORDER_FILE)
    saved_path = os.path.join(runtime_dir, SAVED_NAME)
    try:
        current = _read_order(path)
    except (OSError, ValueError) as err:
        LOG.info("free page reporting: %s cannot be read (%s); its grain is left alone",
                 path, err)
        return None
    original = current
    try:
        original = _read_order(saved_path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        LOG.warning("free page reporting: ignoring %s: %s", saved_path, err)
    if original == _UNSET or current == _UNSET:
        LOG.info("free page reporting: no reporting device (the balloon has no free page "
                 "reporting); its grain is left alone")
        return None
    if not os.access(path, os.W_OK):
        LOG.info("free page reporting: %s is not writable; its grain is left alone", path)
        return None
    order = ReportingOrder(path, original, original, saved_path)
    if original != current:
        LOG.info("free page reporting: page_reporting_order %d was left by an agent that did "
                 "not stop cleanly; putting back %d", current, original)
        order.engaged = True
        order.release()
    largest = largest_order(proc_root)
    if setting == COARSE:
        target = original + 1 if largest is None else min(original + 1, largest)
    else:
        target = int(setting)
        if largest is not None and target > largest:
            LOG.warning("free page reporting: order %d is above the largest block order of "
                        "this kernel (%d); using %d", target, largest, largest)
            target = largest
    if target == original:
        LOG.info("free page reporting: page_reporting_order is already %d; left alone",
                 original)
        return None
    order.target = target
    return order
