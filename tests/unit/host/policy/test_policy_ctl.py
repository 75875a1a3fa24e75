"""``ebbctl policy check`` and ``ebbctl policy eval``: the contract tools rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ebb.host.cli_ebbctl import main
from ebb.host.policies import policy_dir

GiB = 1024 * 1024


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def state(tmp_path: Path, data: Any) -> Path:
    p = tmp_path / "state.json"
    p.write_text(json.dumps(data))
    return p


STATE = {
    "host": {
        "props": {},
        "samples": [
            {
                "mem_available": 16 * GiB,
                "mem_free": 1 * GiB,
                "ksm_pages_to_scan": 100,
                "ksm_shareable": 15 * GiB,
            },
            {
                "mem_available": 16 * GiB,
                "mem_free": 3 * GiB,
                "ksm_pages_to_scan": 100,
                "ksm_shareable": 15 * GiB,
            },
        ],
    },
    "guests": [
        {
            "props": {"name": "vm1", "uuid": "u-1"},
            "samples": [
                {
                    "balloon_cur": 4 * GiB,
                    "balloon_max": 4 * GiB,
                    "balloon_min": 524288,
                    "mem_unused": 2 * GiB,
                },
            ],
        },
        {
            "props": {"name": "vm2", "uuid": "u-2"},
            "samples": [
                {
                    "balloon_cur": 2 * GiB,
                    "balloon_max": 4 * GiB,
                    "balloon_min": 524288,
                    "mem_unused": 0,
                    "agent_connected": 1,
                    "report_age": 0.5,
                    "need": 100 * 1024,
                    "offer": 0,
                    "need_urgency": 1,
                },
            ],
        },
    ],
}


def test_check_ok_for_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["policy", "check", str(policy_dir("classic")), str(policy_dir("cooperative"))]) == 0
    )
    assert capsys.readouterr().err == ""


def test_check_reports_every_error_as_path_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.policy", "(defvar x 1)\n(if x 1)\n")
    b = write(tmp_path / "b.policy", "(nope)\n  (+ 1 @)\n")
    assert main(["policy", "check", str(a), str(b)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{a}:2:2: (if condition then else) needs exactly 3 arguments, given 2",
        f"{b}:2:8: unexpected character '@'",
    ]


def test_check_of_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "10-a.policy", "(defvar x 1)")
    write(tmp_path / "20-b.policy", "(set x 2)")
    assert main(["policy", "check", str(tmp_path)]) == 0
    write(tmp_path / "30-c.policy", "(set x (f 1))")
    assert main(["policy", "check", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip() == f"{tmp_path / '30-c.policy'}:1:9: unknown function 'f'"
    )


def test_eval_prints_results_and_controls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = write(
        tmp_path / "p.policy",
        """
        nil (== 1 1) (!= 1 1)
        (with Guests g g.name)
        (Host.Control "ksm_run" 1)
        (with Guests g (if (== g.name "vm1") (g.Control "balloon_target" 3000000.7) nil))
        (Host.StatAvg "mem_free")
    """,
    )
    assert main(["policy", "eval", "--state", str(state(tmp_path, STATE)), str(p)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "results": [None, True, False, ["vm1", "vm2"], 1, [3000000, None], 2 * GiB],
        "controls": {
            "host": {"ksm_run": 1},
            "guests": {"vm1": {"balloon_target": 3000000}, "vm2": {}},
        },
    }


def test_eval_default_policy_governed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "policy",
        "eval",
        "--governed",
        "--state",
        str(state(tmp_path, STATE)),
        str(policy_dir()),
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["controls"]["host"]["ksm_run"] == 1
    decisions = {d["vm"]: d for d in out["governor"]}
    assert set(decisions) == {"vm1", "vm2"}
    # The newest host sample (3 GiB of 16, under 20 %) is under pressure; 1.4 GiB is above
    # the 10 % reserve, so the guest that asks is given its 100 MiB.
    assert decisions["vm1"]["kind"] == "inflate" and decisions["vm1"]["target_kib"] < 4 * GiB
    assert decisions["vm2"]["kind"] == "deflate"  # asked for memory: given at once
    assert all(d["reason"] for d in out["governor"])


def test_eval_governed_keeps_the_host_reserve_as_ebbd_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A policy that gives every guest 100 MiB more; the host's newest sample has
    # 1 GiB freeable of 16, below its 10 % reserve: ebbd would give nothing, and
    # neither does eval (it plans the tick as ebbd does).
    give = write(tmp_path / "give.policy",
                 '(with Guests g (g.Control "balloon_target" (+ g.balloon_cur 102400)))')
    short = json.loads(json.dumps(STATE))
    short["host"]["samples"][-1]["mem_free"] = 1 * GiB
    assert main(["policy", "eval", "--governed", "--state", str(state(tmp_path, short)),
                 str(give)]) == 0
    decisions = {d["vm"]: d for d in json.loads(capsys.readouterr().out)["governor"]}
    assert decisions["vm2"]["target_kib"] is None
    assert decisions["vm2"]["rule"] == "host_reserve"


def test_eval_runtime_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "p.policy", "1\n(/ 1 (- Host.mem_free Host.mem_free))")
    assert main(["policy", "eval", "--state", str(state(tmp_path, STATE)), str(p)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"{p}:2:2: division by zero (1 / 0)"


def test_eval_load_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "p.policy", "(if 1 2)")
    assert main(["policy", "eval", "--state", str(state(tmp_path, STATE)), str(p)]) == 2
    assert capsys.readouterr().err.startswith(f"{p}:1:2: ")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{", "not valid JSON"),
        ('{"guests": [{"props": {}}]}', "no props.name"),
        ('{"guests": [{"props": {"name": "a"}, "samples": [{"mem_free": "x"}]}]}', "finite number"),
    ],
)
def test_eval_bad_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str
) -> None:
    s = tmp_path / "s.json"
    s.write_text(content)
    p = write(tmp_path / "p.policy", "1")
    assert main(["policy", "eval", "--state", str(s), str(p)]) == 2
    assert needle in capsys.readouterr().err
