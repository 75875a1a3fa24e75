"""ebbd's runtime directory (``daemon.run_dir``, default ``/run/ebb``) and its state files.

Files in it decide what ebbd writes to the host at its next start (the saved
KSM originals, the memtune limits to release), and the control socket lives
there. So the directory is trusted only when nobody but root or ebbd's own
user could have put anything in it: owned by uid 0 or ebbd's uid, writable by
its owner only, and not a symbolic link. :func:`prepare_run_dir` creates it
that way or refuses one that is not, naming the path; :func:`write_state` and
:func:`read_state` keep state files atomic, small and unfollowed.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

#: Group given the run directory (mode 0750) when it exists and ebbd runs as root,
#: so that its members reach the control socket inside and nobody else does.
RUN_DIR_GROUP = "ebb"
#: A state file larger than this is not ebbd's: it is refused, not parsed.
MAX_STATE_FILE_BYTES = 64 * 1024


class RunDirError(OSError):
    """The runtime directory (or a file in it) is not safe to use; the message names it."""


def prepare_run_dir(path: Path | str, group_name: str = RUN_DIR_GROUP) -> Path:
    """Create ``path`` if missing (0750 root:GROUP, or 0755), then check it.

    Raises :class:`RunDirError` for a directory that someone other than root or
    ebbd could write to.
    """
    directory = Path(path)
    if not os.path.lexists(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        gid = _gid(group_name) if os.geteuid() == 0 else None
        mode = 0o750 if gid is not None else 0o755
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing one
        else:
            # Explicitly, not through mkdir's mode: the umask (systemd's UMask=0077)
            # would take away the group's and others' access to the socket inside.
            if gid is not None:
                os.chown(directory, 0, gid)
            os.chmod(directory, mode)
    check_run_dir(directory)
    return directory


def check_run_dir(path: Path | str) -> None:
    """Raise :class:`RunDirError` unless ``path`` is a directory only root or ebbd can write."""
    try:
        info = os.lstat(path)
    except OSError as err:
        raise RunDirError(f"run directory {path}: {err.strerror}") from err
    _check_owned(path, info, "run directory", stat.S_ISDIR(info.st_mode), "a directory")


def _check_owned(path: Path | str, info: os.stat_result, what: str, right_type: bool,
                 type_words: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise RunDirError(
            f"{what} {path} is a symbolic link: point daemon.run_dir at a real directory"
        )
    if not right_type:
        raise RunDirError(f"{what} {path} is not {type_words}")
    allowed = {0, os.geteuid()}
    if info.st_uid not in allowed:
        raise RunDirError(
            f"{what} {path} is owned by uid {info.st_uid}, not by root or ebbd "
            f"(uid {os.geteuid()}): another user could plant state that ebbd would "
            "apply; remove it or give it to root (daemon.run_dir)"
        )
    if info.st_mode & 0o022:
        raise RunDirError(
            f"{what} {path} is writable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): chmod go-w it (daemon.run_dir)"
        )


def write_state(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temp file, fsync, rename)."""
    prepare_run_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: Path) -> Any:
    """The JSON in state file ``path``; None when there is none.

    Raises :class:`RunDirError` when the directory or the file could have been
    written by someone other than root or ebbd, and ``ValueError`` when the
    file is too large or not JSON.
    """
    if not os.path.lexists(path):
        return None
    check_run_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunDirError(f"state file {path}: {err.strerror}") from err
    with os.fdopen(fd, "rb") as handle:
        _check_owned(path, os.fstat(fd), "state file", stat.S_ISREG(os.fstat(fd).st_mode),
                     "a regular file")
        data = handle.read(MAX_STATE_FILE_BYTES + 1)
    if len(data) > MAX_STATE_FILE_BYTES:
        raise ValueError(f"larger than {MAX_STATE_FILE_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def remove_state(path: Path) -> None:
    """Remove state file ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
