"""The reader: every literal form, and errors with exact positions."""

from __future__ import annotations

import pytest
from ebb.host.policy import PolicyError, PolicyLoadError, load_policy_texts
from ebb.host.policy.reader import read
from policy_testkit import last, results


def only_error(text: str) -> PolicyError:
    with pytest.raises(PolicyLoadError) as info:
        load_policy_texts([("p.policy", text)])
    assert len(info.value.errors) == 1, [str(e) for e in info.value.errors]
    return info.value.errors[0]


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("42", 42),
        ("-7", -7),
        (".5", 0.5),
        ("-.25", -0.25),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("2.5E-1", 0.25),
        ("0x1F", 31),
        ("0o17", 15),
        ("-0x10", -16),
        ('"double"', "double"),
        ("'single'", "single"),
        (r'"a\"b\\c\n"', 'a"b\\c\n'),
        ("nil", None),
    ],
)
def test_literals(source: str, value: object) -> None:
    got = last(source)
    assert got == value
    assert type(got) is type(value)


def test_comments_and_whitespace_are_skipped() -> None:
    text = (
        "# a comment\n  1 # trailing (not code\n\t(+ 1 # inside\n 2)\n# last line without newline"
    )
    assert results(text) == [1, 3]


def test_symbols_may_contain_dash_and_dot() -> None:
    assert last("(defvar ksm-npages_max 5) ksm-npages_max") == 5
    nodes = read("a-b c.d e_f", "p")
    assert [n.value for n in nodes] == ["a-b", "c.d", "e_f"]


def test_block_braces_evaluate_in_order_and_return_last() -> None:
    assert last("(defvar x 1) { (set x (+ x 1)) (set x (* x 10)) x }") == 20
    assert last("{}") is None


def test_positions_are_line_and_column_of_the_culprit() -> None:
    err = only_error("(defvar x 1)\n(+ x\n   2) @")
    assert (err.path, err.line, err.col) == ("p.policy", 3, 7)
    assert str(err) == "p.policy:3:7: unexpected character '@'"


@pytest.mark.parametrize("char", ["@", "[", ";", "$", "`", "é", "=", "!", "\x00"])
def test_unknown_characters_reject_the_whole_file(char: str) -> None:
    err = only_error(f"(defvar a 1)\n(defvar b {char})\n(defvar c 3)")
    assert (err.line, err.col) == (2, 11)
    assert "unexpected character" in err.message


def test_unclosed_paren_points_at_the_opening() -> None:
    err = only_error("(defvar a 1)\n  (if a\n (+ 1 2) 3")
    assert (err.line, err.col) == (2, 3)
    assert "never closed" in err.message


def test_unexpected_close_paren() -> None:
    err = only_error("1)\n")
    assert (err.line, err.col) == (1, 2)


def test_mismatched_brackets() -> None:
    err = only_error("{ 1 )")
    assert (err.line, err.col) == (1, 5)
    assert "expected '}'" in err.message


def test_unclosed_string_points_at_its_start() -> None:
    err = only_error('(debug "abc)\n')
    assert (err.line, err.col) == (1, 8)
    assert "string" in err.message


@pytest.mark.parametrize("word", ["12abc", "1.2.3", "0x", "0o9", "1e"])
def test_malformed_numbers(word: str) -> None:
    err = only_error(f"(+ 1 {word})")
    assert (err.line, err.col) == (1, 6)


def test_leading_zero_is_not_silently_octal() -> None:
    err = only_error("017")
    assert "0o17" in err.message


def test_nesting_is_bounded_with_a_position() -> None:
    err = only_error("(+ 1 " * 60 + ")" * 60)
    assert err.line == 1
    assert "nesting" in err.message


def test_not_utf8_is_reported_with_position(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ebb.host.policy import load_policy_files

    f = tmp_path / "bad.policy"
    f.write_bytes(b"(defvar a 1)\n(defvar b \xff)\n")
    with pytest.raises(PolicyLoadError) as info:
        load_policy_files([f])
    (err,) = info.value.errors
    assert (err.path, err.line, err.col) == (str(f), 2, 11)
