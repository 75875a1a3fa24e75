"""The evaluator's shapes: operators folded over many operands, the short
circuits of and/or, fields with a default, methods with a literal key, calls of
a function defined once, and the rule that no source is ever generated."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import ebb.host.policy
import pytest
from ebb.host.policy import Entity, PolicyError, PolicyInput, PolicyRunner
from policy_testkit import evaluate, guest, host, last, program


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Two operands are both evaluated before they are checked ...
        ('(+ "s" undefined_name)', "test.policy:1:8: undefined variable 'undefined_name'"),
        # ... with more, each is checked before the next is evaluated.
        ('(+ "s" undefined_name 1)', "test.policy:1:2: '+' needs numbers, got 's' (a string)"),
        ("(* 2 3 nil)", "test.policy:1:2: '*' needs numbers, got nil (nil)"),
        ("(+ 9223372036854775807 0 1)", "test.policy:1:2: '+': the result is outside"),
    ],
)
def test_operators_of_many_operands_check_each_in_turn(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        evaluate(text)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("(+ 1 2 3 4)", 10),
        ("(* 2 3 0.5)", 3.0),
        ("(and 1 2 3)", 3),
        ("(and 1 nil undefined_name)", None),  # stops at nil: the rest is not evaluated
        ("(and 1 0 undefined_name)", 0),
        ("(or nil 0 5 undefined_name)", 5),
        ("(or nil 0)", 0),
        ("(or 0)", 0),
        ("(and 7)", 7),
    ],
)
def test_and_or_return_the_deciding_value(text: str, value: Any) -> None:
    got = last(text)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(
    ("fields", "value"),
    [({"need": 0}, 7), ({"need": None}, 7), ({}, 7), ({"need": 3}, 3)],
)
def test_a_field_with_a_default(fields: Any, value: int) -> None:
    text = "(with Guests g (+ (or g.need 7) 0))"
    assert last(text, guests=[guest("vm", **fields)]) == [value]
    assert last("(with Guests g (>= (or g.need 7) 7))", guests=[guest("vm", **fields)]) == [
        value >= 7
    ]


def test_a_literal_control_on_the_wrong_kind_of_view_is_an_error() -> None:
    with pytest.raises(PolicyError) as info:
        evaluate('(defvar x Host)\n(x.Control "balloon_target" 1)')
    assert str(info.value).startswith(
        "test.policy:2:2: x.Control: Host has no control 'balloon_target'"
    )


def test_a_literal_property_name_is_checked() -> None:
    with pytest.raises(PolicyError, match="the property name must be a string"):
        evaluate('(with Guests g (g.Prop "_secret"))', guests=[guest("vm")])
    assert last('(with Guests g (g.Prop "uuid"))', guests=[guest("vm")]) == ["uuid-vm"]


def test_a_def_that_ran_in_an_earlier_evaluation_only_does_not_define() -> None:
    # The def runs in the first evaluation (no variable kept yet), not in the second.
    runner = PolicyRunner(
        program('(if (Host.GetVar "n") 0 (def f () 1))\n(Host.SetVar "n" 1)\n(f)')
    )
    inp = PolicyInput(host(), [])
    assert runner.evaluate(inp).results[-1] == 1
    with pytest.raises(PolicyError) as info:
        runner.evaluate(inp)
    assert str(info.value) == (
        "test.policy:3:2: function 'f' is called before its (def f ...) was evaluated"
    )


def test_a_name_defined_twice_calls_the_last_def_evaluated() -> None:
    text = "(def f (x) (+ x 1))\n(defvar a (f 1))\n(def f (x y) (* x y))\n(+ a (f 2 3))"
    assert last(text) == 8
    with pytest.raises(PolicyError, match="'f' takes 2 argument"):
        evaluate("(def f (x) x)\n(def f (x y) x)\n(f 1)")


def test_recursion_keeps_its_parameters_apart() -> None:
    text = "(def fact (n) (if (<= n 1) 1 (* n (fact (- n 1)))))\n(fact 10)"
    assert last(text) == 3628800


def test_a_guest_field_reads_nil_on_a_guest_without_it() -> None:
    g = Entity({"name": "vm"}, [{"balloon_cur": 5}])
    assert last("(with Guests g (valid g.balloon_cur g.offer))", guests=[g]) == [False]


# --- no generated source ----------------------------------------------------------

FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "FunctionType", "CodeType"}
FORBIDDEN_MODULES = {"types", "codeop", "code", "importlib", "ast", "marshal"}


def _sources() -> list[Path]:
    return sorted(Path(ebb.host.policy.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.name)
def test_the_evaluator_generates_no_source(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                name = func.id
            elif isinstance(func, ast.Attribute) and not (
                isinstance(func.value, ast.Name) and func.value.id == "re"  # re.compile
            ):
                name = func.attr
            else:
                name = ""
            assert name not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno}: {name}"
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
            assert not names & FORBIDDEN_MODULES, f"{path.name}:{node.lineno}"
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in FORBIDDEN_MODULES, path.name
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"__code__", "__globals__"}, f"{path.name}:{node.lineno}"
    assert len(path.read_text().splitlines()) <= 800, path.name
