"""Forms, operators, scoping and load-time checks of the language."""

from __future__ import annotations

from typing import Any

import pytest
from ebb.host.policy import PolicyError, PolicyLoadError, load_policy_texts, to_json_value
from policy_testkit import evaluate, guest, host, last, results


def load_errors(text: str) -> list:
    with pytest.raises(PolicyLoadError) as info:
        load_policy_texts([("p.policy", text)])
    return info.value.errors


def run_error(text: str, **kw: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        evaluate(text, **kw)
    return info.value


# -- operators


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("(+ 1 2)", 3),
        ("(+ 1 2 3 4)", 10),
        ("(+ 1.5 1)", 2.5),
        ("(- 10 4)", 6),
        ("(- 3)", -3),
        ("(* 6 7)", 42),
        ("(* 2 3 4)", 24),
        ("(/ 7 2)", 3.5),  # true division
        ("(/ 8 2)", 4.0),
        ("(< 1 2)", True),
        ("(> 1 2)", False),
        ("(<= 2 2)", True),
        ("(>= 1 2)", False),
        ("(== 2 2.0)", True),
        ("(!= 1 2)", True),
        ('(== "a" "a")', True),
        ('(< "a" "b")', True),
        ("(<< 1 10)", 1024),
        ("(>> 1024 3)", 128),
        ("(and 1 2)", 2),  # returns the deciding operand
        ("(and 1 0 2)", 0),
        ("(and nil 1)", None),
        ("(or 0 nil 3)", 3),
        ("(or 0 nil)", None),
        ("(or 5 x-undefined)", 5),  # short-circuit: the undefined name is never read
        ("(and 0 x-undefined)", 0),
        ("(not 0)", True),
        ("(not 1)", False),
        ("(min 3 1 2)", 1),
        ("(max 3 1 2)", 3),
        ("(max 2.5 2)", 2.5),
        ("(abs -4)", 4),
        ("(abs 4.5)", 4.5),
        ("(null nil)", True),
        ("(null nil 0)", False),
        ('(null "")', True),
        ("(valid 1 2 0)", True),
        ("(valid 1 nil)", False),
        ("(debug 1 2)", 2),
    ],
)
def test_operators(expr: str, value: Any) -> None:
    got = last(expr)
    assert got == value
    assert type(got) is type(value)


def test_min_max_over_a_with_list_and_empty_list() -> None:
    guests = [guest("a", balloon_cur=5), guest("b", balloon_cur=9)]
    assert last("(max (with Guests g g.balloon_cur))", guests=guests) == 9
    assert last("(min (with Guests g g.balloon_cur))", guests=guests) == 5
    assert last("(max (with Guests g g.balloon_cur))", guests=[]) is None


def test_debug_lines_carry_position() -> None:
    ev = evaluate('\n  (debug "free is" 3 nil)')
    assert ev.debug == ["test.policy:2:4: free is 3 nil"]


@pytest.mark.parametrize(
    ("expr", "col", "needle"),
    [
        ('(+ 1 "a")', 2, "'+' needs numbers"),
        ("(+ 1 nil)", 2, "'+' needs numbers"),
        ('(* "ab" 1000000)', 2, "'*' needs numbers"),
        ("(/ 1 0)", 2, "division by zero"),
        ("(< 1 nil)", 2, "cannot compare"),
        ("(<< 1 100000)", 2, "outside 0..64"),
        ("(<< 1 -1)", 2, "outside"),
        ("(<< 1.5 1)", 2, "whole numbers"),
        ("(abs nil)", 2, "needs numbers"),
        ("(max 1 nil)", 2, "needs numbers"),
    ],
)
def test_operator_type_errors_name_the_position(expr: str, col: int, needle: str) -> None:
    err = run_error("1\n" + expr)
    assert (err.path, err.line, err.col) == ("test.policy", 2, col)
    assert needle in err.message


# -- forms


def test_defvar_set_setq() -> None:
    assert results("(defvar a 1) (set a 2) a (setq a 3) a") == [1, 2, 2, 3, 3]


def test_defvar_does_not_overwrite_in_the_same_scope() -> None:
    assert results("(defvar a 1) (defvar a 2) a") == [1, 1, 1]


def test_defvar_in_a_function_scope_shadows_only_there() -> None:
    text = "(defvar a 1) (def f () { (defvar a 2) a }) (f) a"
    assert results(text)[-2:] == [2, 1]


def test_set_of_unknown_variable_is_an_error_with_position() -> None:
    err = run_error("(defvar a 1)\n(set b 2)")
    assert (err.line, err.col) == (2, 6)
    assert "defvar b" in err.message


def test_set_assigns_the_nearest_binding() -> None:
    text = "(defvar a 1) (def f () (set a 5)) (let ((a 2)) { (f) a }) a"
    # f sees the let's binding (dynamic scope) and changes it, not the global.
    assert results(text)[-2:] == [5, 1]


def test_let_is_sequential_and_multi_body() -> None:
    assert last("(let ((a 1) (b (+ a 1))) (debug a) (+ a b))") == 3


def test_def_and_defun_return_the_name_and_define_functions() -> None:
    assert results("(def sq (x) (* x x)) (defun add (a b) (+ a b)) (sq 4) (add 1 2)") == [
        "sq",
        "add",
        16,
        3,
    ]


def test_def_without_space_before_params_like_vdsm() -> None:
    assert last("(def f() 7) (f)") == 7


def test_function_body_may_have_several_expressions() -> None:
    assert last("(def f (x) (defvar y (* x 2)) (+ y 1)) (f 3)") == 7


def test_dynamic_scoping_callee_sees_caller_variables() -> None:
    text = """
    (def inner () (+ depth 1))
    (def outer (depth) (inner))
    (outer 41)
    """
    assert last(text) == 42


def test_dynamic_scoping_as_vdsm_guest_qos_relies_on() -> None:
    # vdsm's 02-balloon.policy names its parameter "quest" but uses "guest",
    # which is bound by the caller's (with Guests guest ...).
    text = """
    (def guest_qos (quest) (if (< guest.balloon_cur guest.balloon_min)
        (guest.Control "balloon_target" guest.balloon_min) 0))
    (with Guests guest (guest_qos guest))
    """
    ev = evaluate(
        text,
        guests=[
            guest("a", balloon_cur=100, balloon_min=200),
            guest("b", balloon_cur=300, balloon_min=200),
        ],
    )
    assert ev.results[-1] == [200, 0]
    assert ev.guest_controls == {"a": {"balloon_target": 200}, "b": {}}


def test_variables_do_not_leak_out_of_functions_lets_and_withs() -> None:
    err = run_error("(def f (p) p) (f 1)\np")
    assert (err.line, err.col) == (2, 1)
    assert "undefined variable 'p'" in err.message
    assert run_error("(let ((q 1)) q) q").message == "undefined variable 'q'"
    assert run_error("(with Guests g 1) g", guests=[guest("a")]).message == "undefined variable 'g'"


def test_if_picks_a_branch_and_evaluates_only_that_one() -> None:
    assert results("(if 1 2 undefined-x) (if 0 undefined-x 3) (if nil 1 2)") == [2, 3, 2]


def test_with_returns_the_list_of_results() -> None:
    guests = [guest("a", balloon_cur=1), guest("b", balloon_cur=2)]
    assert last("(with Guests g (* 10 g.balloon_cur))", guests=guests) == [10, 20]
    assert to_json_value(last("(with Guests g (> g.balloon_cur 1))", guests=guests)) == [
        False,
        True,
    ]


def test_with_over_something_else_than_a_list() -> None:
    err = run_error("(with 5 g g)")
    assert "expected a list" in err.message


# -- load-time checks


@pytest.mark.parametrize(
    ("text", "line", "col", "needle"),
    [
        ("1\n(if 1 2)", 2, 2, "exactly 3 arguments, given 2"),
        ("1\n(if 1 2 3 4)", 2, 2, "exactly 3 arguments, given 4"),
        ("(frobnicate 1)", 1, 2, "unknown function 'frobnicate'"),
        ("(def f (a) a)\n (f 1 2)", 2, 3, "'f' takes 1 argument(s), given 2"),
        ("(not 1 2)", 1, 2, "'not' takes exactly 1"),
        ("(/ 1)", 1, 2, "'/' takes exactly 2"),
        ("(+ 1)", 1, 2, "'+' takes at least 2"),
        ("(defvar a)", 1, 2, "'defvar' takes exactly 2"),
        ("(set 1 2)", 1, 6, "expected a variable name"),
        ("(let (a 1) a)", 1, 7, "each binding must be (name value)"),
        ("(def f a a)", 1, 8, "parameters must be a list"),
        ("(def if (a) a)", 1, 6, "built in"),
        ("(def f (a a) a)", 1, 11, "appears twice"),
        ("()", 1, 1, "empty expression"),
        ("((f) 1)", 1, 2, "expected a function name"),
        ("(1 2)", 1, 2, "expected a function name"),
        ("(Host.Stat)", 1, 2, "'Host.Stat' takes exactly 1"),
        ('(Host.Stat "mem_fre")', 1, 12, "unknown field 'mem_fre'"),
        ('(Host.Control "ksm_runn" 1)', 1, 15, "unknown control 'ksm_runn'"),
        ("Host.mem_fre", 1, 1, "unknown field 'mem_fre'"),
        ("(Host.Frob 1)", 1, 2, "unknown method 'Frob'"),
        ("(Host.mem_free)", 1, 2, "is a field, not a method"),
        ("Host.Stat", 1, 1, "is a method"),
        ("(set Host 1)", 1, 6, "cannot be changed"),
        ("(defvar Guests 1)", 1, 9, "cannot be changed"),
        ("(with Guests 1 2)", 1, 14, "must be a name"),
        ("if", 1, 1, "is a function, not a value"),
        ("a.b.c", 1, 1, "only one '.'"),
    ],
)
def test_load_errors_with_exact_positions(text: str, line: int, col: int, needle: str) -> None:
    errors = load_errors(text)
    assert len(errors) == 1, [str(e) for e in errors]
    err = errors[0]
    assert (err.path, err.line, err.col) == ("p.policy", line, col), str(err)
    assert needle in err.message, str(err)


def test_all_independent_errors_of_a_file_are_reported() -> None:
    errors = load_errors("(if 1 2)\n(nope)\n(+ 1 (zap))\n(defvar ok 1)")
    assert [(e.line, e.col) for e in errors] == [(1, 2), (2, 2), (3, 7)]


def test_functions_may_be_called_before_their_definition_in_the_text() -> None:
    # Known at load (no "unknown function"), but the call runs before the def.
    err = run_error("(later 1)\n(def later (x) x)")
    assert "before its (def later" in err.message
    assert last("(def first () (later 2)) (def later (x) x) (first)") == 2


def test_functions_defined_in_an_earlier_file_are_known() -> None:
    prog = load_policy_texts([("00.policy", "(def f (x) (* 2 x))"), ("10.policy", "(f 21)")])
    from ebb.host.policy import PolicyInput, PolicyRunner

    ev = PolicyRunner(prog).evaluate(PolicyInput(host(), []))
    assert ev.results == ["f", 42]


# -- entities


def test_fields_stat_statavg_prop() -> None:
    g = guest(
        "vm1",
        samples=[
            {"balloon_cur": 100, "mem_unused": 10},
            {"balloon_cur": 200, "mem_unused": None},
            {"balloon_cur": 300},
        ],
    )
    text = """
    (with Guests g (g.balloon_cur))
    """.replace("(g.balloon_cur)", "g.balloon_cur")
    assert last(text, guests=[g]) == [300]
    assert last('(with Guests g (g.Stat "balloon_cur"))', guests=[g]) == [300]
    assert last('(with Guests g (g.StatAvg "balloon_cur"))', guests=[g]) == [200.0]
    # Samples without the field are left out of the mean; none at all is nil.
    assert last('(with Guests g (g.StatAvg "mem_unused"))', guests=[g]) == [10.0]
    assert last('(with Guests g (g.StatAvg "swap_in"))', guests=[g]) == [None]
    assert last("(with Guests g g.mem_unused)", guests=[g]) == [None]
    assert last('(with Guests g (g.Prop "uuid"))', guests=[g]) == ["uuid-vm1"]
    assert last('(with Guests g (== g.name (g.Prop "name")))', guests=[g]) == [True]
    assert last("(with Guests g g.uuid)", guests=[g]) == ["uuid-vm1"]
    assert last('(with Guests g (g.Prop "missing"))', guests=[g]) is not None  # list
    assert last('(with Guests g (g.Prop "missing"))', guests=[g]) == [None]


def test_host_fields() -> None:
    h = host(mem_available=1000, mem_free=250)
    assert results("Host.mem_available (/ Host.mem_free Host.mem_available)", host_entity=h) == [
        1000,
        0.25,
    ]


def test_guest_only_field_on_host_is_a_runtime_error() -> None:
    err = run_error("1\nHost.balloon_cur")
    assert (err.line, err.col) == (2, 1)
    assert "Host has no field 'balloon_cur'" in err.message


def test_dot_on_a_number_is_an_error() -> None:
    err = run_error("(defvar x 5)\nx.balloon_cur")
    assert "not the host or a guest" in err.message


def test_controls_and_getcontrol() -> None:
    text = """
    (Host.Control "ksm_run" 1)
    (Host.Control "ksm_sleep_millisecs" 12.9)
    (Host.GetControl "ksm_run")
    (Host.GetControl "ksm_pages_to_scan")
    (with Guests g (g.Control "balloon_target" (* g.balloon_cur 0.5)))
    """
    ev = evaluate(text, guests=[guest("a", balloon_cur=1001)])
    assert ev.results == [1, 12, 1, None, [500]]
    assert ev.host_controls == {"ksm_run": 1, "ksm_sleep_millisecs": 12}
    assert ev.guest_controls == {"a": {"balloon_target": 500}}
    assert ev.to_json()["controls"] == {
        "host": {"ksm_run": 1, "ksm_sleep_millisecs": 12},
        "guests": {"a": {"balloon_target": 500}},
    }


def test_control_on_the_wrong_entity_or_with_bad_value() -> None:
    assert (
        "no control 'ksm_run'"
        in run_error('(with Guests g (g.Control "ksm_run" 1))', guests=[guest("a")]).message
    )
    assert "must be a number" in run_error('(Host.Control "ksm_run" nil)').message
    assert "must be a number" in run_error('(Host.Control "ksm_run" "1")').message


def test_json_conversion_of_results() -> None:
    ev = evaluate("nil (== 1 1) (with Guests g g) 1.5 'x'", guests=[guest("a")])
    assert ev.to_json()["results"] == [None, True, ["<Guest a>"], 1.5, "x"]
