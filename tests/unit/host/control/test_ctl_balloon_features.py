"""``ebbctl status`` / ``explain`` show each VM's balloon features; ``lab up`` can turn FPR off."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from ebb.host.cli_ebbctl import build_parser
from ebb.host.ctl.daemon import format_explain, format_status
from ebb.lab import ctl as ctl_lab

NOW = 1_800_000_000.0


def _vm(name: str, fpr: bool, **extra: Any) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "name": name, "state": "running", "managed": True, "balloon_cur_kib": 1048576,
        "balloon_target_kib": None, "balloon_max_kib": 1048576, "floor_kib": 262144,
        "agent": {"connected": False}, "cooperation": "no-agent", "last_action": None,
        "rss_kib": 323584, "free_page_reporting": fpr, "autodeflate": False,
        "stats_period_s": 2,
    }
    row.update(extra)
    return row


def _table(text: str) -> Dict[str, Dict[str, str]]:
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("VM "))
    names = header.split()
    rows = {}
    for line in lines:
        cells = line.split()
        if cells and cells[0] in ("web1", "db1"):
            rows[cells[0]] = dict(zip(names, cells))
    return rows


def test_status_has_rss_and_fpr_columns_and_names_the_vms_without_it() -> None:
    text = format_status({"vms": [_vm("web1", True), _vm("db1", False)]}, now=NOW)
    rows = _table(text)
    assert rows["web1"]["FPR"] == "on" and rows["db1"]["FPR"] == "off"
    assert rows["web1"]["RSS"] == "316"
    warning = next(line for line in text.splitlines() if "free page reporting is off" in line)
    assert "db1" in warning and "web1" not in warning
    assert "<memballoon model='virtio' freePageReporting='on'>" in warning
    assert "restarted" in warning


def test_status_says_nothing_about_fpr_when_every_vm_has_it() -> None:
    text = format_status({"vms": [_vm("web1", True)]}, now=NOW)
    assert "free page reporting is off" not in text


def test_status_from_an_older_daemon_shows_dashes() -> None:
    old = _vm("web1", True)
    for key in ("rss_kib", "free_page_reporting", "autodeflate", "stats_period_s"):
        del old[key]
    rows = _table(format_status({"vms": [old]}, now=NOW))
    assert rows["web1"]["FPR"] == "-" and rows["web1"]["RSS"] == "-"


def test_explain_shows_the_balloon_features() -> None:
    text = format_explain({"vm": "db1", "status": _vm("db1", False, autodeflate=True),
                           "decisions": []}, now=NOW)
    assert ("balloon: free page reporting off, autodeflate on, stats every 2 s, "
            "QEMU RSS 316 MiB") in text


@pytest.mark.parametrize(("argv", "expected"), [([], True),
                                                (["--no-free-page-reporting"], False)])
def test_lab_up_turns_free_page_reporting_off_only_when_asked(
        monkeypatch: pytest.MonkeyPatch, argv: List[str], expected: bool) -> None:
    calls: List[Dict[str, Any]] = []

    class FakeLab:
        def up(self, **kwargs: Any) -> List[Any]:
            calls.append(kwargs)
            return []

    monkeypatch.setattr(ctl_lab, "_lab", lambda args: FakeLab())
    args = build_parser().parse_args(["lab", "up", *argv])
    assert args.func(args) == 0
    assert calls[0]["free_page_reporting"] is expected
