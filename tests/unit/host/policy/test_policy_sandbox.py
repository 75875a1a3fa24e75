"""The sandbox and the bounds: no way from a policy into the interpreter, no hang."""

from __future__ import annotations

import pytest
from ebb.host.policy import (
    PolicyError,
    PolicyInput,
    PolicyLoadError,
    PolicyRunner,
    load_policy_texts,
)
from policy_testkit import evaluate, guest, host, program

ESCAPES = [
    "abs.__globals__",
    "(abs.__globals__)",
    "Host.__class__",
    "(Host.__dict__)",
    "Host.entity",
    "Host.props",
    "Host.latest",
    "Host.store",
    "(Host.stat_avg 'mem_free')",
    "(Host._avg_cache)",
    "(with Guests g g.__init__)",
    "(with Guests g (g.__getattribute__ 'x'))",
    "__builtins__",
    "(defvar __import__ 1)",
    "(def _private () 1)",
    "(debug.__globals__ 1)",
    "(eval 1)",
    "(getattr Host 'x')",
    "(import os)",
    "(open '/etc/passwd')",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_escapes_are_rejected_at_load(text: str) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load_policy_texts([("evil.policy", text)])
    (err,) = info.value.errors
    assert err.path == "evil.policy"
    assert err.line == 1


@pytest.mark.parametrize(
    "text",
    [
        '(Host.Stat "__class__")',
        '(Host.StatAvg "__dict__")',
        '(Host.Control "__init__" 1)',
        '(Host.Prop "_secret")',
    ],
)
def test_computed_names_are_checked_at_run_time_too(text: str) -> None:
    # The same names held in a variable cannot be checked at load; they fail when used.
    name = text.split('"')[1]
    method = text.split()[0][1:]
    extra = " 1" if method.endswith("Control") else ""
    with pytest.raises(PolicyError) as info:
        evaluate(f'(defvar n "{name}")\n({method} n{extra})')
    assert (info.value.line, info.value.col) == (2, 2)


def test_setvar_refuses_to_keep_objects() -> None:
    with pytest.raises(PolicyError) as info:
        evaluate('(Host.SetVar "me" Host)')
    assert "only numbers, strings" in info.value.message


def test_step_bound_stops_runaway_recursion_with_a_position() -> None:
    text = """
    (def boom (n) (+ (boom2 n) (boom2 n)))
    (def boom2 (n) (if (> n 0) (+ (boom (- n 1)) (boom (- n 1))) 1))
    (boom 30)
    """
    prog = program(text)
    with pytest.raises(PolicyError) as info:
        prog.evaluate(PolicyInput(host(), []), max_steps=50_000)
    assert "exceeded 50000 steps" in info.value.message
    assert info.value.path == "test.policy"


def test_depth_bound_stops_infinite_recursion() -> None:
    prog = program("(def down (n) (down (+ n 1)))\n(down 0)")
    with pytest.raises(PolicyError) as info:
        prog.evaluate(PolicyInput(host(), []))
    assert "nested deeper than" in info.value.message
    assert (info.value.line, info.value.col) == (1, 16)


def test_with_loop_is_counted_in_steps() -> None:
    guests = [guest(f"g{i}") for i in range(50)]
    prog = program("(with Guests a (with Guests b (with Guests c 1)))")
    with pytest.raises(PolicyError) as info:
        prog.evaluate(PolicyInput(host(), guests), max_steps=10_000)
    assert "steps" in info.value.message


def test_default_budget_scales_with_guests_and_default_policy_fits() -> None:
    from ebb.host.policies import policy_dir
    from ebb.host.policy import load_policy_dir

    prog = load_policy_dir(policy_dir("cooperative"))
    guests = [
        guest(
            f"g{i}",
            balloon_cur=1 << 20,
            balloon_max=2 << 20,
            mem_unused=1 << 18,
            agent_connected=1,
            report_age=1,
            offer=1000,
            need=0,
        )
        for i in range(300)
    ]
    h = host(
        mem_available=64 << 20, mem_free=1 << 20, ksm_pages_to_scan=100, ksm_shareable=60 << 20
    )
    ev = prog.evaluate(PolicyInput(h, guests))
    assert len(ev.guest_controls) == 300


def test_setvar_persists_across_ticks_in_the_runner() -> None:
    runner = PolicyRunner(
        program("""
        (Host.SetVar "ticks" (+ 1 (or (Host.GetVar "ticks") 0)))
        (with Guests g (g.SetVar "seen" (+ 1 (or (g.GetVar "seen") 0))))
    """)
    )
    inp = PolicyInput(host(), [guest("a"), guest("b")])
    assert runner.evaluate(inp).results == [1, [1, 1]]
    assert runner.evaluate(inp).results == [2, [2, 2]]
    # A guest that goes away loses its variables; a new one starts fresh.
    ev = runner.evaluate(PolicyInput(host(), [guest("b"), guest("c")]))
    assert ev.results == [3, [3, 1]]
    assert runner.variables() == {
        "host": {"ticks": 3},
        "guests": {"b": {"seen": 3}, "c": {"seen": 1}},
    }


def test_setvar_of_a_failed_tick_is_not_kept() -> None:
    runner = PolicyRunner(
        program("""
        (Host.SetVar "n" (+ 1 (or (Host.GetVar "n") 0)))
        (if (== Host.mem_free 0) (/ 1 0) 0)
    """)
    )
    ok = PolicyInput(host(mem_free=5), [])
    bad = PolicyInput(host(mem_free=0), [])
    runner.evaluate(ok)
    with pytest.raises(PolicyError):
        runner.evaluate(bad)
    assert runner.evaluate(ok).results[0] == 2


def test_reload_keeps_the_last_good_program(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "policy.d"
    d.mkdir()
    (d / "00-defines.policy").write_text("(defvar level 1)\n")
    (d / "10-main.policy").write_text('(Host.Control "ksm_run" level)\n')
    runner = PolicyRunner()
    assert runner.reload(d) == []
    inp = PolicyInput(host(), [])
    assert runner.evaluate(inp).host_controls == {"ksm_run": 1}

    (d / "10-main.policy").write_text('(Host.Control "ksm_run" (+ level 1)\n')  # unclosed
    errors = runner.reload(d)
    assert [(e.path, e.line, e.col) for e in errors] == [(str(d / "10-main.policy"), 1, 1)]
    assert runner.evaluate(inp).host_controls == {"ksm_run": 1}  # previous program in force

    (d / "10-main.policy").write_text('(Host.Control "ksm_run" (+ level 1))\n')
    assert runner.reload(d) == []
    assert runner.evaluate(inp).host_controls == {"ksm_run": 2}


def test_files_in_a_directory_run_in_name_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "20-b.policy").write_text("(set order (+ (* order 10) 2))")
    (tmp_path / "10-a.policy").write_text("(defvar order 1)")
    (tmp_path / "notes.txt").write_text("(this is not loaded")
    runner = PolicyRunner()
    assert runner.reload(tmp_path) == []
    assert runner.evaluate(PolicyInput(host(), [])).results == [1, 12]


def test_empty_or_missing_directory_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = PolicyRunner()
    (err,) = runner.reload(tmp_path)
    assert "no *.policy files" in err.message
    (err,) = runner.reload(tmp_path / "nope")
    assert "no such file" in err.message
    with pytest.raises(PolicyError):
        runner.evaluate(PolicyInput(host(), []))
