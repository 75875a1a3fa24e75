"""The one error the lab raises: what went wrong and what to do about it."""

from __future__ import annotations

from typing import Optional


class LabError(Exception):
    """Something the lab needs is missing or failed; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  -> {self.hint}"
        return self.message
