"""The KSM controller on a fixture sysfs: changed values only, originals always restored."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from ebb.host.controllers import KsmController

ORIGINAL = {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "merge_across_nodes": 1,
            "pages_shared": 0, "pages_sharing": 0}


class Sysfs:
    def __init__(self, root: Path) -> None:
        self.root = root / "sys"
        self.ksm = self.root / "kernel" / "mm" / "ksm"
        self.ksm.mkdir(parents=True)
        for name, value in ORIGINAL.items():
            self.set(name, value)

    def set(self, name: str, value: int) -> None:
        path = self.ksm / name
        path.write_text(f"{value}\n")
        os.utime(path, ns=(0, 0))  # so that a rewrite shows in the mtime

    def get(self, name: str) -> int:
        return int((self.ksm / name).read_text())

    def written(self, name: str) -> bool:
        return (self.ksm / name).stat().st_mtime_ns != 0


@pytest.fixture
def sysfs(tmp_path: Path) -> Sysfs:
    return Sysfs(tmp_path)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "ebb"


def test_writes_only_the_values_that_change(sysfs: Sysfs, run_dir: Path) -> None:
    controller = KsmController(sysfs.root, run_dir)
    writes = controller.apply({"ksm_run": 1, "ksm_pages_to_scan": 100,
                               "ksm_sleep_millisecs": 10, "ksm_merge_across_nodes": 1,
                               "balloon_target": 5})
    assert [(w.knob, w.before, w.value, w.outcome) for w in writes] == [
        ("sleep_millisecs", 20, 10, "applied"), ("run", 0, 1, "applied")]
    assert sysfs.get("run") == 1 and sysfs.get("sleep_millisecs") == 10
    assert not sysfs.written("pages_to_scan")
    assert not sysfs.written("merge_across_nodes")
    assert controller.apply({"ksm_run": 1, "ksm_sleep_millisecs": 10}) == []


def test_originals_saved_before_the_first_write_and_restored(sysfs: Sysfs,
                                                              run_dir: Path) -> None:
    controller = KsmController(sysfs.root, run_dir)
    saved = run_dir / "ksm-original.json"
    controller.apply({"ksm_run": 0})  # no change: nothing to save yet
    assert not saved.exists()
    controller.apply({"ksm_run": 1, "ksm_pages_to_scan": 1250})
    assert json.loads(saved.read_text())["values"] == {
        "run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "merge_across_nodes": 1}
    controller.apply({"ksm_pages_to_scan": 64})  # the saved originals stay the first ones
    assert json.loads(saved.read_text())["values"]["pages_to_scan"] == 100
    assert controller.restore()
    assert (sysfs.get("run"), sysfs.get("pages_to_scan")) == (0, 100)
    assert not saved.exists()
    assert [p.name for p in run_dir.iterdir()] == []  # no temporary files left behind


def test_start_restores_what_a_crashed_run_left(sysfs: Sysfs, run_dir: Path) -> None:
    crashed = KsmController(sysfs.root, run_dir)
    crashed.apply({"ksm_run": 1, "ksm_sleep_millisecs": 5})
    # ... ebbd is killed here: no restore() ...
    fresh = KsmController(sysfs.root, run_dir)
    assert fresh.start() is True
    assert (sysfs.get("run"), sysfs.get("sleep_millisecs")) == (0, 20)
    assert not (run_dir / "ksm-original.json").exists()
    assert KsmController(sysfs.root, run_dir).start() is False


def test_changes_made_after_restart_are_restored_to_the_true_originals(
        sysfs: Sysfs, run_dir: Path) -> None:
    KsmController(sysfs.root, run_dir).apply({"ksm_run": 1})  # crash after this
    fresh = KsmController(sysfs.root, run_dir)
    fresh.start()
    fresh.apply({"ksm_run": 1, "ksm_pages_to_scan": 500})
    fresh.restore()
    assert (sysfs.get("run"), sysfs.get("pages_to_scan")) == (0, 100)


def test_dry_run_writes_and_saves_nothing(sysfs: Sysfs, run_dir: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    writes = KsmController(sysfs.root, run_dir, dry_run=True).apply({"ksm_run": 1})
    assert [(w.knob, w.outcome) for w in writes] == [("run", "dry-run")]
    assert sysfs.get("run") == 0 and not sysfs.written("run")
    assert not run_dir.exists()
    assert "would set run 0 -> 1" in caplog.text


def test_values_out_of_range_are_rejected(sysfs: Sysfs, run_dir: Path) -> None:
    writes = KsmController(sysfs.root, run_dir).apply(
        {"ksm_run": 7, "ksm_pages_to_scan": -1, "ksm_sleep_millisecs": 12.5})
    assert {w.knob: w.outcome for w in writes} == {
        "run": "rejected", "pages_to_scan": "rejected", "sleep_millisecs": "rejected"}
    assert not any(sysfs.written(k) for k in ("run", "pages_to_scan", "sleep_millisecs"))


def test_float_values_from_a_policy_are_written_as_integers(sysfs: Sysfs,
                                                            run_dir: Path) -> None:
    KsmController(sysfs.root, run_dir).apply({"ksm_pages_to_scan": 400.0})
    assert (sysfs.ksm / "pages_to_scan").read_text() == "400\n"


def test_no_ksm_in_this_kernel_is_harmless(tmp_path: Path, run_dir: Path) -> None:
    controller = KsmController(tmp_path / "sys", run_dir)
    assert not controller.available
    assert controller.apply({"ksm_run": 1}) == []
    assert controller.restore() is False
    assert not run_dir.exists()


class KernelLikeKsm(KsmController):
    """Writes that behave like the kernel's: merge_across_nodes is EBUSY while pages are
    merged, and run=2 unmerges everything."""

    def _write_file(self, path: Path, text: str) -> None:
        shared = self.ksm_dir / "pages_shared"
        if path.name == "merge_across_nodes" and int(shared.read_text()) > 0:
            raise OSError(errno.EBUSY, "Device or resource busy")
        super()._write_file(path, text)
        if path.name == "run" and text.strip() == "2":
            super()._write_file(shared, "0\n")


def test_restore_unmerges_when_merge_across_nodes_is_pinned(sysfs: Sysfs,
                                                            run_dir: Path) -> None:
    controller = KernelLikeKsm(sysfs.root, run_dir)
    controller.apply({"ksm_merge_across_nodes": 0, "ksm_run": 1})
    sysfs.set("pages_shared", 4000)  # KSM has merged pages since
    assert controller.restore()
    assert (sysfs.get("merge_across_nodes"), sysfs.get("run")) == (1, 0)
    assert not (run_dir / "ksm-original.json").exists()


def test_a_policy_repeating_an_impossible_value_warns_once(
        sysfs: Sysfs, run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    sysfs.set("pages_shared", 10)
    controller = KernelLikeKsm(sysfs.root, run_dir)
    for _ in range(3):
        writes = controller.apply({"ksm_merge_across_nodes": 0})
        assert [w.outcome for w in writes] == ["failed"]
        assert "set ksm_run to 2 first" in writes[0].detail
    assert caplog.text.count("cannot write 0") == 1


def test_dry_run_start_keeps_a_crashed_runs_originals(sysfs: Sysfs, run_dir: Path) -> None:
    KsmController(sysfs.root, run_dir).apply({"ksm_run": 1})  # crash after this
    assert KsmController(sysfs.root, run_dir, dry_run=True).start() is False
    assert sysfs.get("run") == 1  # dry run: nothing written ...
    assert (run_dir / "ksm-original.json").exists()  # ... and nothing forgotten
    assert KsmController(sysfs.root, run_dir).start() is True
    assert sysfs.get("run") == 0
