"""Where ebbd's log goes: journald with structured fields, or stderr.

Under systemd (``JOURNAL_STREAM`` set) and with systemd-python importable, log
records go to journald through ``systemd.journal.JournalHandler``; fields given
as ``extra={"VM": name, "ACTION": kind, "REASON": reason}`` become journal
fields, so ``journalctl -u ebbd VM=web1`` finds every line about one VM.
Otherwise records go to stderr, with those fields appended in brackets.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping, Optional

LOG = logging.getLogger(__name__)

#: Structured fields the daemon attaches to records (journal field names).
STRUCTURED_FIELDS = ("VM", "ACTION", "REASON")

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def parse_level(name: str) -> int:
    """``"info"`` -> ``logging.INFO``; ValueError naming the choices otherwise."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r}; choose one of {', '.join(LEVELS)}"
        ) from None


class _FieldsFormatter(logging.Formatter):
    """Plain-text formatter that shows the structured fields when present."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{name.lower()}={getattr(record, name)}"
            for name in STRUCTURED_FIELDS
            if getattr(record, name, None) not in (None, "")
        ]
        if fields and not text.endswith("]"):
            text += " [" + " ".join(fields) + "]"
        return text


def under_journald(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM"))


def configure_logging(
    level: int | str = logging.INFO,
    environ: Optional[Mapping[str, str]] = None,
) -> logging.Handler:
    """Install one handler on the root logger; returns it (replacing earlier ones).

    Calling it again (SIGHUP with a new ``log_level``) replaces the handler.
    """
    if isinstance(level, str):
        level = parse_level(level)
    handler: logging.Handler | None = None
    if under_journald(environ):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            handler = None
        else:
            handler = JournalHandler(SYSLOG_IDENTIFIER="ebbd")
            # journald stamps time, priority and unit itself.
            handler.setFormatter(logging.Formatter("%(message)s"))
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        stamp = "" if under_journald(environ) else "%(asctime)s "
        handler.setFormatter(_FieldsFormatter(stamp + "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_ebb_handler", False):
            root.removeHandler(old)
    handler._ebb_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def set_level(level: int | str) -> None:
    """Change the root level (config reload)."""
    logging.getLogger().setLevel(parse_level(level) if isinstance(level, str) else level)
