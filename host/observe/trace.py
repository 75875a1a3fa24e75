"""The tick trace: one JSON line per tick, in a bounded set of rotating files.

ebbd appends every tick's :class:`~ebb.host.engine.TickRecord` (inputs, the
governor's views, the policy's controls, decisions, what was applied) to
``path``. When the file would grow past ``max_bytes`` it is renamed to
``path.1`` (``path.1`` to ``path.2`` and so on) and a new ``path`` is started;
files past ``path.<keep_files>`` are deleted. The whole trace therefore never
takes more than ``(keep_files + 1) * max_bytes`` on disk.

Each record carries the policy's input, whose samples are a history (the last
N samples of the host and of each guest). Writing that history whole every
tick would repeat each sample N times, so a line normally holds only each
entity's newest sample with ``"history": N``: the full history is the same
entity's history on the previous line plus this sample, last N kept. The
writer checks that this rebuilds exactly what the engine had, and writes the
full history otherwise; every file starts with full histories, and so does
every :data:`KEYFRAME_EVERY`-th line, so each file reads on its own.

The format is documented field by field in docs/observability.md. Readers
(``ebbctl replay``, ``ebbctl plot``) use :func:`read_trace`, which reads a
rotated set oldest first, rebuilds the full histories and tolerates the torn
last line a crash leaves.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple, Union

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP_FILES = 5  # as [trace] keep_files
#: A line with every history written in full at least this often (lines).
KEYFRAME_EVERY = 600

TraceLine = Dict[str, Any]
PathLike = Union[str, "os.PathLike[str]"]


EntityKey = Tuple[str, str]
Histories = Dict[EntityKey, List[Any]]


def _record_dict(record: Any) -> Dict[str, Any]:
    """``record`` (a TickRecord or a dict) as a plain dict, not shared with the caller."""
    if isinstance(record, dict):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    to_json = getattr(record, "to_json", None)
    if callable(to_json):
        return dict(json.loads(to_json()))
    raise TypeError(f"cannot trace a {type(record).__name__}: no to_dict() or to_json()")


def _entities(state: Dict[str, Any]) -> Iterator[Tuple[EntityKey, Any]]:
    yield ("host", ""), state.get("host")
    for guest in state.get("guests") or []:
        name = (guest.get("props") or {}).get("name", "") if isinstance(guest, dict) else ""
        yield ("guest", str(name)), guest


def compact_record(
    record: Dict[str, Any], previous: Optional[Histories]
) -> Tuple[Dict[str, Any], Histories]:
    """The trace form of ``record`` given the histories of the previous line.

    Returns the line's dict (entities whose history continues ``previous`` carry
    only their newest sample and ``"history": N``) and the histories after it.
    ``previous`` None writes every history in full.
    """
    state = record.get("state")
    if not isinstance(state, dict):
        return record, {}
    histories: Histories = {}
    compacted: Dict[EntityKey, Any] = {}
    for key, entity in _entities(state):
        if not isinstance(entity, dict) or not isinstance(entity.get("samples"), list):
            continue
        samples = entity["samples"]
        histories[key] = samples
        before = previous.get(key) if previous is not None else None
        if before is not None and samples and (before + samples[-1:])[-len(samples):] == samples:
            compacted[key] = dict(entity, samples=samples[-1:], history=len(samples))
    if not compacted:
        return record, histories
    new_state = dict(state)
    if ("host", "") in compacted:
        new_state["host"] = compacted[("host", "")]
    new_state["guests"] = [
        compacted.get(key, guest) for key, guest in _entities(state) if key[0] == "guest"
    ]
    return dict(record, state=new_state), histories


def expand_record(record: Dict[str, Any], previous: Histories) -> Histories:
    """Rebuild, in place, the full histories of a line read from a trace.

    ``previous`` holds the histories of the line before in the same file;
    returns this line's, for the next.
    """
    state = record.get("state")
    if not isinstance(state, dict):
        return {}
    histories: Histories = {}
    for key, entity in _entities(state):
        if not isinstance(entity, dict) or not isinstance(entity.get("samples"), list):
            continue
        length = entity.pop("history", None)
        if isinstance(length, int) and length > 0:
            entity["samples"] = (previous.get(key, []) + entity["samples"])[-length:]
        histories[key] = entity["samples"]
    return histories


class TraceWriter:
    """Tick observer appending each tick's record to a bounded, rotating trace.

    Disk errors (full disk, removed directory, permissions) are logged once per
    run of failures and the tick is dropped: a trace is never a reason for the
    daemon to stop managing memory. Writing resumes on the next tick that
    succeeds.
    """

    def __init__(
        self,
        path: PathLike,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep_files: int = DEFAULT_KEEP_FILES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"trace.max_bytes must be positive, got {max_bytes}")
        if keep_files < 0:
            raise ValueError(f"trace.keep_files must be 0 or more, got {keep_files}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.keep_files = int(keep_files)
        self.lines_written = 0
        self.lines_dropped = 0
        self._file: Optional[IO[bytes]] = None
        self._size = 0
        self._failing = False
        self._lock = threading.Lock()
        # Histories of the last line written to the current file; None: the
        # next line writes them in full.
        self._histories: Optional[Histories] = None
        self._lines_since_keyframe = 0

    # -- TickObserver ------------------------------------------------------

    def on_tick(self, record: Any) -> None:
        """Append ``record`` as one line; never raises."""
        with self._lock:
            try:
                self._append(_record_dict(record))
            except OSError as err:
                self.lines_dropped += 1
                self._close_quietly()
                if not self._failing:
                    LOG.warning(
                        "trace: cannot write %s (%s); ticks are not traced until it works again",
                        self.path,
                        err,
                    )
                self._failing = True
                return
            except Exception as err:  # a record we cannot encode is a bug, not a reason to stop
                self.lines_dropped += 1
                self._histories = None
                LOG.error("trace: cannot encode tick record, dropped: %s", err)
                return
            self.lines_written += 1
            if self._failing:
                LOG.info("trace: writing %s again (%d ticks were dropped)", self.path,
                         self.lines_dropped)
                self._failing = False

    def close(self) -> None:
        """Flush and close the current file (the writer reopens it if used again)."""
        with self._lock:
            self._close_quietly()

    # -- internals ---------------------------------------------------------

    def _encode(self, record: Dict[str, Any]) -> Tuple[bytes, Histories]:
        previous = self._histories
        if self._lines_since_keyframe >= KEYFRAME_EVERY:
            previous = None
        line, histories = compact_record(record, previous)
        data = json.dumps(line, separators=(",", ":"), default=str) + "\n"
        return data.encode("utf-8"), histories

    def _append(self, record: Dict[str, Any]) -> None:
        if self._file is None:
            self._open()
        data, histories = self._encode(record)
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            data, histories = self._encode(record)  # a new file starts in full
        assert self._file is not None
        keyframe = self._histories is None or self._lines_since_keyframe >= KEYFRAME_EVERY
        self._file.write(data)
        # Flushed per line so a crash loses at most the line being written,
        # which read_trace() skips.
        self._file.flush()
        self._size += len(data)
        self._histories = histories
        self._lines_since_keyframe = 1 if keyframe else self._lines_since_keyframe + 1

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner and group only: a trace names every VM and its memory, like the
        # metrics (which listen on loopback only).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._file = os.fdopen(fd, "ab")
        self._size = self._file.seek(0, os.SEEK_END)
        self._histories = None
        if self._size > 0 and not self._ends_with_newline():
            # A crash or a full disk left half a line: end it, so that it stays
            # one bad line that readers skip instead of spoiling the next.
            self._file.write(b"\n")
            self._file.flush()
            self._size += 1

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def _rotate(self) -> None:
        self._close_quietly()
        if self.keep_files == 0:
            self.path.unlink(missing_ok=True)
        else:
            rotated_path(self.path, self.keep_files).unlink(missing_ok=True)
            for index in range(self.keep_files - 1, 0, -1):
                older = rotated_path(self.path, index)
                if older.exists():
                    older.rename(rotated_path(self.path, index + 1))
            if self.path.exists():
                self.path.rename(rotated_path(self.path, 1))
        self._open()

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                LOG.debug("trace: closing %s: %s", self.path, err)
            self._file = None
            self._size = 0
        self._histories = None


def rotated_path(path: PathLike, index: int) -> Path:
    """``path.<index>``: the ``index``-th older file of a rotated trace."""
    base = Path(path)
    return base.with_name(f"{base.name}.{index}")


def trace_files(path: PathLike) -> List[Path]:
    """The files of the trace at ``path``, oldest first (``path.N`` ... ``path.1``, ``path``).

    A path that names one rotated file itself (``trace.jsonl.2``) or a file
    without rotated siblings gives just that file.
    """
    base = Path(path)
    older: List[Path] = []
    index = 1
    while rotated_path(base, index).exists():
        older.append(rotated_path(base, index))
        index += 1
    files = list(reversed(older))
    if base.exists():
        files.append(base)
    return files


class TraceError(Exception):
    """A trace that cannot be read at all (missing, unreadable, no record in it)."""


def read_trace(path: PathLike) -> Iterator[TraceLine]:
    """Yield the records of the trace at ``path`` oldest first, as dicts.

    Reads a rotated set in order. A line that is not a JSON object (the torn
    last line a crash leaves, or damage) is skipped with a warning naming file
    and line. Raises :class:`TraceError` when there is no such trace.
    """
    files = trace_files(path)
    if not files:
        raise TraceError(f"no trace at {path}: is [trace] path set in ebbd.toml and ebbd running?")
    return _iter_records(files)


def _iter_records(files: List[Path]) -> Iterator[TraceLine]:
    for file_path in files:
        try:
            handle = open(file_path, "rb")  # noqa: SIM115 - closed below, generator
        except OSError as err:
            raise TraceError(f"cannot read trace file {file_path}: {err.strerror}") from err
        histories: Histories = {}  # each file starts with full histories
        with handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    torn = not raw.endswith(b"\n")
                    LOG.warning(
                        "%s:%d: skipped %s",
                        file_path,
                        line_number,
                        "a torn last line" if torn else "a line that is not JSON",
                    )
                    continue
                if not isinstance(record, dict):
                    LOG.warning("%s:%d: skipped a line that is not a JSON object",
                                file_path, line_number)
                    continue
                histories = expand_record(record, histories)
                yield record
