"""``ebbctl lab`` with and without the lab (``ebb.lab``, package ebb-lab) installed."""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

import pytest
from ebb.host import cli_ebbctl


def _without_the_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ebb.lab`` look absent, as on a host with only the ebb-host package."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: Optional[str] = None) -> Any:
        if name == "ebb.lab" or name.startswith("ebb.lab."):
            return None
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_the_lab_ebbctl_lab_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_the_lab(monkeypatch)
    assert cli_ebbctl.main(["lab", "up", "--guests", "2"]) == 1
    err = capsys.readouterr().err
    assert "the lab is not installed" in err
    assert "ebb-lab" in err and "clone" in err


def test_without_the_lab_the_other_commands_are_there(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_the_lab(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        cli_ebbctl.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for command in ("status", "explain", "yield", "policy", "lab", "top"):
        assert command in out


def test_from_a_clone_ebbctl_lab_has_its_commands() -> None:
    parser = cli_ebbctl.build_parser()
    args = parser.parse_args(["lab", "status", "--prefix", "ebb-x"])
    assert args.prefix == "ebb-x"
    assert args.func.__module__ == "ebb.lab.ctl"
