"""Pure expressions run as one compiled Python expression, with the closures as
the reference: values and errors must be exactly those of the closures, also
where plain Python would give a value (adding strings, min of strings,
repeating a string) or read a field the entity's kind does not have."""

from __future__ import annotations

from typing import Any

import pytest
from ebb.host.policy import Entity, PolicyError
from policy_testkit import evaluate, guest, last


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('(defvar a "x")\n(defvar b "y")\n(+ a b)', "'+' needs numbers"),
        ('(defvar a "x")\n(defvar b "y")\n(- (+ a b) 1)', "'+' needs numbers"),
        ('(defvar a "ab")\n(* a 3)', "'*' needs numbers"),
        ('(defvar a "x")\n(defvar b "y")\n(min a b)', "'min' needs numbers"),
        ('(defvar a "x")\n(defvar b "y")\n(max (+ 1 2) a)', "'max' needs numbers"),
        ("(defvar h Host)\n(+ h.offer 1)", "has no field 'offer'"),
        ("(defvar x 5)\n(+ x.mem_free 1)", "'x' is a number, not the host or a guest"),
        ("(defvar z 0)\n(+ 1 (/ 4 z))", "division by zero"),
        ("(+ 1 (* 2 undefined_name))", "undefined variable 'undefined_name'"),
    ],
)
def test_errors_are_the_closures_errors(text: str, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        evaluate(text)
    assert needle in str(info.value)
    assert str(info.value).startswith("test.policy:")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("(defvar a 2)\n(defvar b 2.0)\n(max a b)", 2),  # ties keep the first operand
        ("(defvar a 2.0)\n(defvar b 2)\n(min a b)", 2.0),
        ("(defvar a nil)\n(valid 1 a)", False),
        ("(defvar a 0)\n(or a nil)", None),
        ("(defvar a 3)\n(if (and (> a 1) (!= a 4)) (- a) (abs a))", -3),
        ('(defvar a "x")\n(== a "x")', True),
        ("(defvar a 7)\n(/ a 2)", 3.5),
    ],
)
def test_values_are_the_closures_values(text: str, value: Any) -> None:
    got = last(text)
    assert got == value
    assert type(got) is type(value)


def test_host_fields_and_means() -> None:
    h = Entity({"name": "host"}, [{"mem_free": 20}, {"mem_free": 10}])
    assert last('(+ Host.mem_free (Host.StatAvg "mem_free"))', host_entity=h) == 25.0


def test_function_bodies_read_guest_fields_and_props() -> None:
    text = """
(def size (g) (+ g.balloon_cur (- (g.StatAvg "mem_unused") (or g.offer 0))))
(def label (g) (if (== g.name "a") g.uuid nil))
(with Guests g (size g))
(with Guests g (label g))
"""
    guests = [
        guest(
            "a", [{"balloon_cur": 100, "mem_unused": 10}, {"balloon_cur": 100, "mem_unused": 30}]
        ),
        guest("b", balloon_cur=50, mem_unused=5, offer=4),
    ]
    ev = evaluate(text, guests=guests)
    assert ev.results[-2] == [120.0, 51.0]
    assert ev.results[-1] == ["uuid-a", None]
