"""One connection per guest's agent channel, all served by one thread.

``state`` is what the engine reads (immutable snapshots, stamped with host
clocks), ``session`` the protocol rules for one guest (no sockets), ``hub`` the
thread that connects, reads, writes and cuts off misbehaving guests.
"""

from __future__ import annotations

from .hub import Connector, GuestChannels, connect_unix
from .session import CutOff, GuestSession
from .state import (
    ChannelLimits,
    GuestChannelState,
    Received,
    ReceivedNeed,
    ReceivedOffer,
    ReceivedReport,
    ReceivedYield,
    SessionState,
)
from .yields import YieldHandle, YieldUnavailable

__all__ = [
    "ChannelLimits",
    "Connector",
    "CutOff",
    "GuestChannelState",
    "GuestChannels",
    "GuestSession",
    "Received",
    "ReceivedNeed",
    "ReceivedOffer",
    "ReceivedReport",
    "ReceivedYield",
    "SessionState",
    "YieldHandle",
    "YieldUnavailable",
    "connect_unix",
]
