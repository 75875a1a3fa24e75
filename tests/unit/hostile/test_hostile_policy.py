"""Hostile policies: whatever a policy says, loading and evaluating it ends soon,
with a value or a positioned PolicyError, and nothing it makes grows without bound.

The daemon evaluates the policy on its engine thread: a policy that runs a long
Python operation (a huge integer product) or builds huge values starves the
other threads, and a load that raises anything but a PolicyError takes the
daemon down. Every bound lives in ebb.host.policy.limits (docs/policy.md,
"Bounds").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, List

import ebb.host.observe  # noqa: F401  (imported here: prometheus_client reads /proc/stat)
import pytest
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.policy import (
    Entity,
    PolicyError,
    PolicyInput,
    PolicyLoadError,
    PolicyRunner,
    limits,
    load_policy_files,
    load_policy_texts,
    to_json_value,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

POSITION = re.compile(r"^t\.policy:\d+:\d+: ")


def host() -> Entity:
    return Entity({"name": "host"}, [{"mem_free": 1 << 20, "mem_available": 1 << 21}])


def guests(n: int) -> List[Entity]:
    return [
        Entity({"name": f"vm{i}", "uuid": f"u{i}"}, [{"balloon_cur": 1 << 20, "mem_unused": i}])
        for i in range(n)
    ]


def runner(text: str) -> PolicyRunner:
    return PolicyRunner(load_policy_texts([("t.policy", text)]))


def evaluate(text: str, n_guests: int = 2) -> Any:
    return runner(text).evaluate(PolicyInput(host(), guests(n_guests)))


def cells(value: Any, stop: int = 10**7) -> int:
    """Elements of a value counted recursively (shared lists count each time)."""
    count = 0
    stack = [value]
    while stack and count < stop:
        item = stack.pop()
        count += 1
        if isinstance(item, list):
            stack.extend(item)
    return count


# --- integers ------------------------------------------------------------------------

SQUARING = "(def sq (x n) (if (> n 0) (sq (* x x) (- n 1)) x))\n(sq 3 {n})\n"


@pytest.mark.parametrize("rounds", [20, 40])
def test_repeated_squaring_is_an_error_at_the_product(rounds: int) -> None:
    with pytest.raises(PolicyError) as err:
        evaluate(SQUARING.format(n=rounds))
    assert str(err.value).startswith("t.policy:1:32: '*': the result is outside the integer range")


def test_squaring_floats_gives_infinity_not_an_error() -> None:
    results = evaluate(SQUARING.format(n=40).replace("(sq 3 ", "(sq 3.0 ")).results
    assert results[-1] == float("inf")


@pytest.mark.parametrize(
    "expr, where",
    [
        ("(* 9223372036854775807 2)", 2),
        ("(+ 9223372036854775807 1)", 2),
        ("(- -9223372036854775807 1)", 2),
        ("(<< 9223372036854775807 1)", 2),
        ("(+ 1 2 9223372036854775807)", 2),
    ],
)
def test_integer_results_out_of_range_are_errors(expr: str, where: int) -> None:
    with pytest.raises(PolicyError) as err:
        evaluate(expr)
    assert str(err.value).startswith(f"t.policy:1:{where}: ")
    assert "integer range" in str(err.value)


def test_a_control_value_must_fit_an_integer() -> None:
    with pytest.raises(PolicyError, match=r"^t\.policy:1:17: g\.Control 'balloon_target'"):
        evaluate('(with Guests g (g.Control "balloon_target" 1e300))')


# --- lists and kept variables --------------------------------------------------------


def test_a_with_over_shared_lists_is_bounded() -> None:
    # b holds 50 references to a, which holds 50 references to Guests: 125000
    # cells for 100 steps, squaring again with each level.
    with pytest.raises(PolicyError, match=r"^t\.policy:1:46: with: the list would be larger"):
        evaluate("(defvar a (with Guests g Guests)) (defvar b (with Guests g a))", n_guests=50)


def test_setvar_of_its_own_value_stops_growing() -> None:
    r = runner('(Host.SetVar "x" (with Guests g (Host.GetVar "x")))')
    errors = []
    for _ in range(40):
        try:
            r.evaluate(PolicyInput(host(), guests(3)))
        except PolicyError as err:
            errors.append(str(err))
        kept = r.variables()["host"].get("x")
        assert cells(kept) <= limits.MAX_STORE_CELLS
    assert errors and all(POSITION.match(e) for e in errors)


def test_kept_variables_are_bounded_in_total() -> None:
    text = "(defvar big (with Guests g 1))\n" + "".join(
        f'(Host.SetVar "v{i}" big)\n' for i in range(40)
    )
    with pytest.raises(PolicyError, match=r"variables of Host would be larger than"):
        evaluate(text, n_guests=2000)


def test_string_literals_are_bounded() -> None:
    with pytest.raises(PolicyLoadError, match=r"t\.policy:1:8: string is longer than"):
        load_policy_texts([("t.policy", '(debug "' + "x" * (limits.MAX_STRING_CHARS + 1) + '")')])


# --- debug output --------------------------------------------------------------------


def test_debug_output_is_bounded_in_characters() -> None:
    line = "x" * 4000
    ev = evaluate(f'(with Guests a (with Guests b {{ (debug "{line}" a b) 0 }}))', n_guests=40)
    total = sum(len(d) for d in ev.debug)
    assert total <= limits.MAX_DEBUG_CHARS + 200 * len(ev.debug)
    assert "debug output limit reached" in ev.debug[-1]


def test_debug_of_a_deep_shared_list_is_short() -> None:
    ev = runner('(debug (Host.GetVar "x"))')
    deep: Any = [1, 2]
    for _ in range(30):
        deep = [deep] * 8
    ev._host_vars["x"] = deep  # as kept by an older ebb
    out = ev.evaluate(PolicyInput(host(), [])).debug
    assert len(out) == 1 and len(out[0]) <= limits.MAX_DEBUG_LINE_CHARS + 100


# --- wall time -----------------------------------------------------------------------


def test_an_evaluation_past_its_deadline_is_an_error_at_a_step() -> None:
    ticks = iter(range(1000))

    def clock() -> float:
        return float(next(ticks))  # one second per reading

    program = load_policy_texts([("t.policy", "(with Guests a (with Guests b (+ 1 2)))")])
    with pytest.raises(PolicyError, match=r"^t\.policy:1:17: evaluation took longer than 5 s"):
        program.evaluate(PolicyInput(host(), guests(60)), max_seconds=5.0, clock=clock)


def test_the_default_deadline_allows_the_shipped_policies() -> None:
    from ebb.host.policies import policy_dir

    program = load_policy_files([policy_dir("cooperative")])
    program.evaluate(PolicyInput(host(), guests(32)))


# --- loading: any failure is a positioned policy error -------------------------------

HUGE = "(defvar x " + "7" * 5000 + ")\n"


def test_a_5000_digit_literal_is_a_load_error_at_its_position(tmp_path: Path) -> None:
    path = tmp_path / "huge.policy"
    path.write_text("# big\n" + HUGE)
    with pytest.raises(PolicyLoadError) as err:
        load_policy_files([path])
    assert str(err.value).startswith(f"{path}:2:11: number is 5000 characters long")


def test_reload_of_a_5000_digit_literal_keeps_the_last_good_policy(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.policy").write_text("(+ 1 2)\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.policy").write_text(HUGE)
    r = PolicyRunner()
    assert r.reload(good) == []
    errors = r.reload(bad)
    assert [str(e) for e in errors] == [
        f"{bad / 'a.policy'}:1:11: number is 5000 characters long (at most "
        f"{limits.MAX_NUMBER_CHARS}; integers must be within -{limits.MAX_INT}..{limits.MAX_INT})"
    ]
    assert r.evaluate(PolicyInput(host(), [])).results == [3]


def test_any_exception_while_loading_is_a_policy_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ebb.host.policy import forms

    def broken(self: Any, nodes: Any) -> Any:
        raise MemoryError("simulated")

    (tmp_path / "a.policy").write_text("(+ 1 2)\n")
    monkeypatch.setattr(forms.Compiler, "compile_top", broken)
    errors = PolicyRunner().reload(tmp_path)
    assert [str(e) for e in errors] == [
        f"{tmp_path / 'a.policy'}:0:0: cannot load: MemoryError: simulated"
    ]


def test_a_reader_failure_is_placed_at_the_datum(monkeypatch: pytest.MonkeyPatch) -> None:
    from ebb.host.policy import reader

    def broken(self: Any, line: int, col: int) -> Any:
        raise ValueError("simulated")

    monkeypatch.setattr(reader._Reader, "read_number", broken)
    with pytest.raises(
        PolicyLoadError, match=r"^t\.policy:2:4: cannot read: ValueError: simulated$"
    ):
        load_policy_texts([("t.policy", "(+\n   12 3)")])


def test_ebbctl_policy_check_of_a_huge_literal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.policy"
    path.write_text(HUGE)
    assert ebbctl(["policy", "check", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:1:11: number is 5000 characters long")


# --- random expressions --------------------------------------------------------------

ATOMS = st.one_of(
    st.integers(min_value=-limits.MAX_INT, max_value=limits.MAX_INT).map(str),
    st.sampled_from(["0", "1", "2", "-1", "3.5", "1e300", "-1e300", "nil", '"s"', "x", "L"]),
    st.sampled_from(["Host.mem_free", "g.balloon_cur", '(Host.GetVar "v")']),
)
OPERATORS = [
    "+",
    "-",
    "*",
    "/",
    "<<",
    ">>",
    "<",
    "==",
    "and",
    "or",
    "not",
    "min",
    "max",
    "abs",
    "null",
    "valid",
    "debug",
]


def expressions() -> st.SearchStrategy[str]:
    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        call = st.tuples(st.sampled_from(OPERATORS), st.lists(children, min_size=1, max_size=3))
        return st.one_of(
            call.map(lambda c: f"({c[0]} {' '.join(c[1])})"),
            st.tuples(children, children, children).map(lambda c: f"(if {c[0]} {c[1]} {c[2]})"),
            children.map(lambda c: f"(with Guests g {c})"),
            children.map(lambda c: f"(sq {c} 40)"),
            st.tuples(children).map(lambda c: f'(Host.SetVar "v" {c[0]})'),
        )

    return st.recursive(ATOMS, extend, max_leaves=12)


PRELUDE = (
    "(def sq (x n) (if (> n 0) (sq (* x x) (- n 1)) x))\n"
    "(defvar x 9223372036854775807)\n(defvar L (with Guests g g.balloon_cur))\n"
)


def _bounded(value: Any) -> Iterator[bool]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            yield -limits.MAX_INT <= item <= limits.MAX_INT


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(expressions(), min_size=1, max_size=3))
def test_random_expressions_end_with_a_value_or_a_policy_error(exprs: List[str]) -> None:
    text = PRELUDE + "\n".join(f"(with Guests g {e})" for e in exprs)
    try:
        r = runner(text)
    except PolicyLoadError as err:
        assert all(POSITION.match(str(e)) for e in err.errors)
        return
    for _ in range(3):  # kept variables carry over: let them grow if they can
        try:
            ev = r.evaluate(PolicyInput(host(), guests(3)))
        except PolicyError as err:
            assert POSITION.match(str(err)), str(err)
            assert "internal error" not in str(err)
            continue
        assert all(_bounded(ev.results))
        assert cells(ev.results) <= len(ev.results) * (limits.MAX_LIST_CELLS + 1)
        assert sum(len(d) for d in ev.debug) <= limits.MAX_DEBUG_CHARS + 200 * len(ev.debug)
        json.dumps([to_json_value(v) for v in ev.results])
        assert cells(r.variables()["host"].get("v")) <= limits.MAX_STORE_CELLS


# --- ebbd start ----------------------------------------------------------------------


def test_ebbd_refuses_to_start_on_a_policy_that_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host" / "engine"))
    from ebb.host.app import Daemon
    from ebb.host.cli_ebbd import main as ebbd_main
    from ebb_core_fakes import make_host_tree

    proc, sys_root = make_host_tree(tmp_path)
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "50-huge.policy").write_text(HUGE)
    run_dir = tmp_path / "run"
    config = tmp_path / "ebbd.toml"
    config.write_text(
        f'[daemon]\nlibvirt_uri = "test:///default"\npolicy_dir = "{policy_dir}"\n'
        f'run_dir = "{run_dir}"\ncontrol_socket = "{run_dir}/ebbd.sock"\n'
        f'[host]\nproc_root = "{proc}"\nsys_root = "{sys_root}"\n'
    )
    ksm = sys_root / "kernel" / "mm" / "ksm"
    before = {p.name: p.read_text() for p in ksm.iterdir()}
    monkeypatch.setattr(Daemon, "install_signal_handlers", lambda self: None)

    assert ebbd_main(["--config", str(config)]) == 2

    err = capsys.readouterr().err
    assert f"{policy_dir / '50-huge.policy'}:1:11: number is 5000 characters long" in err
    assert "Traceback" not in err
    assert {p.name: p.read_text() for p in ksm.iterdir()} == before
    assert not (run_dir / "ebbd.sock").exists()


# --- the evaluator itself ------------------------------------------------------------


def test_the_policy_package_never_runs_generated_code() -> None:
    import ast

    import ebb.host.policy

    package = Path(ebb.host.policy.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        called = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not called & {"exec", "eval", "compile", "__import__"}, path
        assert len(path.read_text().splitlines()) < 800, path
