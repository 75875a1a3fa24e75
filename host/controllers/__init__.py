"""Controllers: the only code that changes the host (balloons, KSM, memtune).

Each takes ``dry_run`` (decide and log, apply nothing) and returns what it did
as small records for the decision journal.
"""

from ebb.host.controllers.balloon import BalloonController, BalloonHypervisor, BalloonResult
from ebb.host.controllers.ksm import KsmController, KsmWrite
from ebb.host.controllers.memtune import MemtuneController, MemtuneHypervisor, MemtuneResult

__all__ = [
    "BalloonController",
    "BalloonHypervisor",
    "BalloonResult",
    "KsmController",
    "KsmWrite",
    "MemtuneController",
    "MemtuneHypervisor",
    "MemtuneResult",
]
