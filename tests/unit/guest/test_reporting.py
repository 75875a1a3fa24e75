"""The grain of free page reporting: coarser while a host manages the guest, put back after.

The kernel's ``page_reporting_order`` and ``/proc/buddyinfo`` are files in a
temporary tree; the loop tests run the agent on a scripted transport and a fake
clock, as in test_agent.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import pytest
from agent_testkit import FakeClock, ProcTree, ScriptedTransport, loop_agent, run_until
from ebb.guest import reporting
from ebb.guest.cli import ConfigError, _reporting_order, read_config
from ebb.guest.reporting import ORDER_FILE, SAVED_NAME, largest_order, parse_setting, probe
from ebb.protocol.messages import Welcome

BUDDYINFO = (
    "Node 0, zone      DMA  0   0   0  0  0  0  0  0  1  1  2\n"
    "Node 0, zone    DMA32  420 301 158 76 33 12  6  2  1  0 41\n"
)
WELCOME = Welcome(protocol_version=1, report_interval_ms=1000, capabilities=("offer", "need"))


class Tree:
    """sysfs with ``page_reporting_order``, /proc with buddyinfo, and a runtime directory."""

    def __init__(self, root: Path, order: str = "9") -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.run = root / "run"
        self.file = self.sys / ORDER_FILE
        self.file.parent.mkdir(parents=True)
        self.proc.mkdir()
        (self.proc / "buddyinfo").write_text(BUDDYINFO)
        self.file.write_text(order + "\n")

    @property
    def order(self) -> int:
        return int(self.file.read_text())

    @property
    def saved(self) -> Path:
        return self.run / SAVED_NAME

    def probe(self, setting: str = reporting.COARSE) -> Optional[reporting.ReportingOrder]:
        return probe(setting, str(self.sys), str(self.proc), str(self.run))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "t")


def test_coarse_is_one_order_above_the_kernels(tree: Tree) -> None:
    grain = tree.probe()
    assert grain is not None and (grain.original, grain.target) == (9, 10)
    assert tree.order == 9  # nothing changes before a host is there
    grain.engage()
    assert tree.order == 10
    assert tree.saved.read_text().strip() == "9"
    grain.release()
    assert tree.order == 9
    assert not tree.saved.exists()


def test_coarse_never_goes_past_the_largest_block(tmp_path: Path) -> None:
    # Order 11 would stop reporting altogether on this kernel (largest block: order 10).
    at_top = Tree(tmp_path / "t", order="10")
    assert at_top.probe() is None
    asked_too_much = Tree(tmp_path / "u").probe("12")
    assert asked_too_much is not None and asked_too_much.target == 10


def test_keep_a_kernel_without_the_parameter_or_without_a_reporting_device(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    assert tree.probe(reporting.KEEP) is None
    unset = Tree(tmp_path / "u", order=str((1 << 32) - 1))  # no balloon with reporting
    assert unset.probe() is None
    missing = Tree(tmp_path / "m")
    missing.file.unlink()
    assert missing.probe() is None


def test_an_agent_killed_while_engaged_puts_the_kernels_value_back_at_its_next_start(
        tree: Tree) -> None:
    first = tree.probe()
    assert first is not None
    first.engage()  # then SIGKILL: release never runs
    assert tree.order == 10
    second = tree.probe()
    assert tree.order == 9  # put back at start, not taken for the kernel's
    assert second is not None and (second.original, second.target) == (9, 10)
    assert not tree.saved.exists()


def test_a_refused_write_leaves_the_grain_and_says_why(tree: Tree, caplog) -> None:
    grain = tree.probe()
    assert grain is not None
    grain.path = str(tree.sys / "no-such-dir" / "page_reporting_order")
    grain.engage()
    assert not grain.engaged and tree.order == 9 and not tree.saved.exists()
    assert "cannot set" in caplog.text


def test_largest_order_reads_the_columns_of_buddyinfo(tree: Tree, tmp_path: Path) -> None:
    assert largest_order(str(tree.proc)) == 10
    assert largest_order(str(tmp_path / "nowhere")) is None


@pytest.mark.parametrize("text, value", [("coarse", "coarse"), ("KEEP", "keep"), ("10", "10")])
def test_settings(text: str, value: str) -> None:
    assert parse_setting(text) == value


@pytest.mark.parametrize("text", ["fine", "-1", "21", "", "9.5"])
def test_bad_settings_are_named(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not coarse, keep or an order"):
        _reporting_order(text)


def test_the_config_file_takes_a_quoted_setting_or_a_number(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text('reporting_order = "keep"\n')
    assert read_config(str(conf)) == {"reporting_order": "keep"}
    conf.write_text("reporting_order = 10\n")
    assert read_config(str(conf)) == {"reporting_order": "10"}
    conf.write_text('reporting_order = "fine"\n')
    with pytest.raises(ConfigError, match="reporting_order: 'fine' is not coarse"):
        read_config(str(conf))


# --- the loop ---------------------------------------------------------------------------------


def test_the_grain_is_coarse_only_while_a_host_manages_the_guest(
        tree: Tree, proc_tree: ProcTree) -> None:
    transport = ScriptedTransport(FakeClock())
    agent = loop_agent(transport, proc_tree)
    agent.reporting = tree.probe()
    run_until(agent, 2.5)
    assert tree.order == 9  # hello sent, no welcome: no host manages the guest yet
    transport.host_sends(WELCOME)
    run_until(agent, 4.0)
    assert tree.order == 10
    transport.hang_up = True  # the host goes away
    run_until(agent, 4.5)
    assert tree.order == 9
    run_until(agent, 8.0)
    transport.host_sends(WELCOME)  # it comes back
    run_until(agent, 10.0)
    assert tree.order == 10
    agent.stop()
    agent.run()  # returns at once: says bye and puts the grain back
    assert tree.order == 9 and not tree.saved.exists()
