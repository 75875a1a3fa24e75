"""ebb-agent: the guest side of ebb.

``collect`` reads the guest's memory state from /proc, ``yielding`` decides what the
guest can offer or needs, ``transport`` reaches the host (virtio-serial, serial,
socket), ``session`` is the conversation with the host as a state machine without
I/O, ``agent`` the loop that drives it over the transport, ``cli`` is the
``ebb-agent`` command. Imports only ``ebb.protocol``; runs on Python 3.8 and newer.
"""

from __future__ import annotations

# Kept in step with pyproject.toml's version (a unit test checks); read from a constant
# rather than importlib.metadata, which costs the agent time and memory at start-up.
__version__ = "0.1.0"
