"""What can go wrong with a policy, and where.

Every error a policy author can cause is a :class:`PolicyError` carrying the
file, line and column it comes from, so that ``str(err)`` reads
``PATH:LINE:COL: message`` (the form editors and ``ebbctl policy check`` use).
Loading a program collects every error of every file into one
:class:`PolicyLoadError`.
"""

from __future__ import annotations

from typing import Iterable, List


class PolicyError(Exception):
    """A policy problem at a position in a policy file.

    Raised at load time (syntax, unknown functions, arity, sandbox) and at
    evaluation time (undefined variable, wrong types, step or depth bound).
    ``line`` and ``col`` are 1-based; ``0`` means "the whole file".
    """

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path = path
        self.line = line
        self.col = col
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Keep the error picklable (the default would pass only the formatted text).
        return (PolicyError, (self.path, self.line, self.col, self.message))


class PolicyStartError(Exception):
    """ebbd cannot start: no policy loads (``str(err)``: one ``PATH:LINE:COL: message`` a line)."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: List[str] = list(errors)
        super().__init__(
            "no policy loads; fix it and start ebbd again:\n  " + "\n  ".join(self.errors)
        )


class PolicyLoadError(Exception):
    """A program did not load; ``errors`` lists every problem found."""

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors: List[PolicyError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors) or "policy did not load")

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors) or "policy did not load"
