"""Unit tests never touch the real host.

An autouse fixture makes any unit test that opens a path under /proc or /sys
(other than the test process's own /proc/self) or connects to a real libvirt
URI fail at once. Collectors take a ``proc_root`` / ``sys_root`` and tests point
them at fixture trees; libvirt code uses the ``test:///default`` driver.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
from typing import Any

import pytest

# prometheus_client reads /proc/stat when it is first imported, so a test that is the
# first to import the metrics module would trip the guard below on a library's start-up
# rather than on ebb's code, and pass or fail by test order. Import it here, before any
# guard is in place (the guest side's tests run without the host's dependencies).
with contextlib.suppress(ImportError):
    import prometheus_client  # noqa: F401

_REAL_OPEN = builtins.open
_REAL_OS_OPEN = os.open
_ALLOWED_PREFIXES = ("/proc/self/", f"/proc/{os.getpid()}/")


def _forbidden(path: Any) -> bool:
    if isinstance(path, int):
        return False
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return False
    if not os.path.isabs(text):
        return False
    text = os.path.normpath(text)
    if text.startswith(_ALLOWED_PREFIXES):
        return False
    return text == "/proc" or text == "/sys" or text.startswith(("/proc/", "/sys/"))


@pytest.fixture(autouse=True)
def _no_real_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if _forbidden(file):
            raise AssertionError(f"unit test touched the real host: open({file!r})")
        return _REAL_OPEN(file, *args, **kwargs)

    def guarded_os_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if _forbidden(path):
            raise AssertionError(f"unit test touched the real host: os.open({path!r})")
        return _REAL_OS_OPEN(path, *args, **kwargs)

    def guard_path_call(name: str, real: Any) -> Any:
        def guarded(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            if _forbidden(path):
                raise AssertionError(f"unit test touched the real host: os.{name}({path!r})")
            return real(path, *args, **kwargs)

        return guarded

    # pathlib opens files through io.open, not builtins.open: guard both.
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("listdir", "scandir"):
        monkeypatch.setattr(os, name, guard_path_call(name, getattr(os, name)))
    try:
        import libvirt  # type: ignore[import-not-found]
    except ImportError:
        return
    real_libvirt_open = libvirt.open

    def guarded_libvirt_open(uri: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(uri, str) and uri.startswith("test://")):
            raise AssertionError(f"unit test connected to a real libvirt: {uri!r}")
        return real_libvirt_open(uri, *args, **kwargs)

    monkeypatch.setattr(libvirt, "open", guarded_libvirt_open)


@pytest.fixture(autouse=True)
def _root_logger_put_back() -> Any:
    """Put the root logger's handlers and level back after each test.

    ``ebbd``'s and ``ebbctl``'s mains configure logging for their process, with a handler
    on the ``sys.stderr`` of that moment: in a test, pytest's capture, which is closed when
    the test ends. Left installed, every later log record would fail to print.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        # pytest's own capture handlers come and go per phase; they are its to remove.
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)
