"""Logging what a peer sent: escaped, and refused input summarised, not echoed.

Both sides log text that came from the other side (a guest's host name, a need's
reason, an error's message) and the input they refused. :func:`printable` makes
peer text safe for a log line: control characters (newlines, terminal escape
sequences) and other invisible characters are written as escapes, so a peer can
neither forge log lines nor drive the terminal of whoever reads the log.

:class:`RefusedInputLog` is the rate limit PROTOCOL.md section 6 asks for:
refused frames and messages are logged at WARNING, at most one line per
period (a minute by default) per peer, with counts by error code.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

from .errors import ProtocolError

__all__ = ["RefusedInputLog", "printable"]

#: Longest peer text put in one log line, in characters (before escaping).
MAX_LOGGED_CHARS = 256
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, max_chars: int = MAX_LOGGED_CHARS) -> str:
    """``text`` for a log line: non-printable characters escaped, cut at ``max_chars``.

    Backslashes are doubled, so an escape in the output always stands for a
    character that was escaped, never for one the peer typed.
    """
    value = str(text)
    cut = len(value) > max_chars
    if cut:
        value = value[:max_chars]
    if value.isprintable() and "\\" not in value:
        return value + ("..." if cut else "")
    out = []
    for char in value:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            if code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out) + ("..." if cut else "")


class RefusedInputLog:
    """Counts refused input from one peer and logs it at WARNING, rate-limited.

    The first refusal is logged at once; later ones are counted and logged as
    one summary line (counts by code, the last error) once ``period_s`` has
    passed since the previous line, from :meth:`record` or :meth:`flush`. At
    DEBUG, the first ``debug_items`` refusals of each period are logged one by one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        peer: str,
        period_s: float = 60.0,
        debug_items: int = 10,
    ) -> None:
        self._logger = logger
        self._peer = peer
        self.period_s = period_s
        self._debug_items = debug_items
        self._counts: Dict[str, int] = {}
        self._last: Optional[str] = None
        self._logged_at = float("-inf")
        self._debug_logged = 0
        #: Refusals since creation (all periods).
        self.total = 0

    def record(self, err: ProtocolError, now: float) -> None:
        """Count ``err`` (received at monotonic time ``now``); log when a line is due."""
        self.total += 1
        self._counts[err.code] = self._counts.get(err.code, 0) + 1
        # Only the text is kept: the error object itself is not held.
        self._last = printable(str(err))
        if self._debug_logged < self._debug_items:
            self._debug_logged += 1
            self._logger.debug("%s: refused input: %s", self._peer, self._last)
        self.flush(now)

    def flush(self, now: float) -> None:
        """Log the counts gathered since the last line, if a line is due."""
        if not self._counts or now - self._logged_at < self.period_s:
            return
        first = self._logged_at == float("-inf")
        total = sum(self._counts.values())
        by_code = ", ".join(f"{code} {count}" for code, count in sorted(self._counts.items()))
        if first and total == 1:
            self._logger.warning("%s: refused input: %s", self._peer, self._last)
        else:
            self._logger.warning(
                "%s: refused %d frame(s) or message(s) since the last report (%s); last: %s",
                self._peer, total, by_code, self._last,
            )
        self._counts = {}
        self._last = None
        self._logged_at = now
        self._debug_logged = 0
