"""docs/policy.md documents every name a policy can use."""

from __future__ import annotations

from pathlib import Path

from ebb.host.policy import fields as F

DOC = Path(__file__).resolve().parents[4] / "docs" / "policy.md"


def test_every_field_control_and_method_is_documented() -> None:
    text = DOC.read_text()
    names = [
        *F.HOST_FIELDS,
        *F.GUEST_FIELDS,
        *F.HOST_CONTROLS,
        *F.GUEST_CONTROLS,
        *F.METHODS,
    ]
    missing = [
        n for n in names if f"`{n}`" not in text and f'"{n}"' not in text and f"x.{n}" not in text
    ]
    assert missing == []


def test_every_default_parameter_is_documented() -> None:
    from ebb.host.policies import POLICY_NAMES, policy_dir

    text = DOC.read_text()
    for name in POLICY_NAMES:
        for line in (policy_dir(name) / "00-defines.policy").read_text().splitlines():
            if line.startswith("(defvar "):
                param = line.split()[1]
                assert f"`{param}`" in text, param
