"""``ebbctl lab status`` reads what each guest writes: a broken guest must not break it."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest
from ebb.lab.domain import LAB_NS
from ebb.lab.manager import Lab, LabSettings


def _define_lab_guest(conn: libvirt.virConnect, name: str, state_dir: Path,
                      devices: str = "") -> None:
    xml = f"""<domain type='test'>
      <name>{name}</name>
      <metadata><lab:guest xmlns:lab='{LAB_NS}' state-dir='{state_dir}'/></metadata>
      <memory unit='MiB'>512</memory>
      <os><type>hvm</type></os>
      <devices>{devices}</devices>
    </domain>"""
    conn.defineXML(xml).create()


@pytest.mark.parametrize(
    "status",
    [
        {"time": "yesterday", "uptime_s": None, "agent_running": True},
        {"time": [1], "uptime_s": {"a": 1}},
    ],
)
def test_garbage_in_a_guests_status_file_reads_as_unknown(tmp_path: Path, status: object) -> None:
    lab = Lab(LabSettings(state_dir=tmp_path, uri="test:///default", prefix="ebb-unit"))
    _define_lab_guest(lab.conn, "ebb-unit-1", tmp_path)
    share = lab.guest_dir("ebb-unit-1") / "share"
    share.mkdir(parents=True, exist_ok=True)
    (share / "status.json").write_text(json.dumps(status))

    (info,) = lab.status()

    assert info.name == "ebb-unit-1"
    assert info.uptime_s == 0.0


@pytest.mark.parametrize(("balloon", "expected"), [
    ("<memballoon model='virtio' freePageReporting='on'/>", True),
    ("<memballoon model='virtio'/>", False),
])
def test_status_says_whether_free_page_reporting_is_on(tmp_path: Path, balloon: str,
                                                       expected: bool) -> None:
    lab = Lab(LabSettings(state_dir=tmp_path, uri="test:///default", prefix="ebb-unit"))
    _define_lab_guest(lab.conn, "ebb-unit-1", tmp_path, devices=balloon)

    (info,) = lab.status()

    assert info.free_page_reporting is expected
