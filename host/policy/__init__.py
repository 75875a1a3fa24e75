"""The policy language: MOM's S-expression dialect, compiled, checked and sandboxed.

Public API (see docs/policy.md, "API for the daemon"):

- :class:`Entity`, :class:`PolicyInput`: what a policy sees each tick.
- :func:`load_policy_files`, :func:`load_policy_dir`, :func:`load_policy_texts`
  -> :class:`Program`; failures raise :class:`PolicyLoadError` (a list of
  :class:`PolicyError`, each ``PATH:LINE:COL: message``).
- :class:`PolicyRunner`: last good program + SetVar values across ticks;
  ``reload(...) -> list[PolicyError]``, ``evaluate(inp) -> Evaluation``.
- :func:`to_json_value`: a policy value as JSON.
"""

from __future__ import annotations

from ebb.host.policy.entity import Entity, PolicyInput
from ebb.host.policy.errors import PolicyError, PolicyLoadError, PolicyStartError
from ebb.host.policy.fields import (
    GUEST_CONTROLS,
    GUEST_FIELDS,
    GUEST_PROPS,
    HOST_CONTROLS,
    HOST_FIELDS,
)
from ebb.host.policy.program import (
    Evaluation,
    PolicyRunner,
    Program,
    load_policy_dir,
    load_policy_files,
    load_policy_texts,
    policy_files_in,
    to_json_value,
)

__all__ = [
    "GUEST_CONTROLS",
    "GUEST_FIELDS",
    "GUEST_PROPS",
    "HOST_CONTROLS",
    "HOST_FIELDS",
    "Entity",
    "Evaluation",
    "PolicyError",
    "PolicyInput",
    "PolicyLoadError",
    "PolicyRunner",
    "PolicyStartError",
    "Program",
    "load_policy_dir",
    "load_policy_files",
    "load_policy_texts",
    "policy_files_in",
    "to_json_value",
]
