"""The operators: arithmetic, comparisons, logic, min/max, null/valid, debug.

Each entry of :data:`OPERATORS` builds the closure of one call from the
closures of its operands, once, when the policy is loaded. Most operators are
a plain function of their operands' values (``x + y`` with its checks), made
into a closure by one of the combinators below, which read each operand with
``slot[-1] if slot else code(ctx)`` (see :func:`~ebb.host.policy.runtime.slot_of`):
variables and constants without a call. The logical operators and ``null`` and
``valid`` stop at the first operand that decides, so they have closures of
their own. Arithmetic takes numbers only and keeps integers within the bound of
:mod:`ebb.host.policy.limits`; ``debug`` output is bounded per evaluation.
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ebb.host.policy.errors import PolicyError
from ebb.host.policy.limits import (
    MAX_DEBUG_CHARS,
    MAX_DEBUG_LINE_CHARS,
    MAX_DEBUG_LINES,
    MAX_INT,
    MAX_SHIFT,
)
from ebb.host.policy.reader import Node
from ebb.host.policy.runtime import (
    NO_VALUE,
    NUM_TYPES,
    Code,
    Context,
    View,
    field_of,
    register_field,
    show,
    slot_of,
    type_name,
)

LOG = logging.getLogger(__name__)

#: Builds the closure of one call: (the operator's node, its operands' closures).
Builder = Callable[[Node, List[Code]], Code]
Unary = Callable[[Any], Any]
Binary = Callable[[Any, Any], Any]
#: The error of an operator on two values.
Failure = Callable[[Any, Any], PolicyError]

# --- combinators: a function of values -> the closure of a call ------------------


def unary(codes: Sequence[Code], fn: Unary) -> Code:
    """The closure of ``(op a)``: ``fn`` of a's value."""
    (a,) = codes
    sa = slot_of(a)

    def op1(ctx: Context) -> Any:
        return fn(sa[-1] if sa else a(ctx))

    return op1


def binary(
    codes: Sequence[Code],
    fn: Binary,
    *,
    numbers: Optional[Failure] = None,
    fail: Optional[Failure] = None,
    too_large: Optional[Callable[[str], PolicyError]] = None,
    bound_operands: bool = False,
) -> Code:
    """The closure of ``(op a b)``: ``fn`` of both values, a's evaluated first.

    The checks around ``fn``, each when given: ``numbers(x, y)`` is raised
    unless both values are numbers; ``too_large("an operand")`` when
    ``bound_operands`` and an operand is an integer outside the bound;
    ``fail(x, y)`` when ``fn`` raises TypeError or ZeroDivisionError;
    ``too_large("the result")`` when the result is an integer outside the
    bound. The operands are read without a call when they are variables or
    constants (see slot_of) or fields of a view (see field_of): most
    operands of the policies are.
    """
    a, b = codes
    sa, sb = slot_of(a), slot_of(b)
    (va, fa, ka), (vb, fb, kb) = field_of(a), field_of(b)
    da, db = ka is not NO_VALUE, kb is not NO_VALUE
    checked = numbers is not None or bound_operands or too_large is not None

    def op2(ctx: Context) -> Any:
        if sa:
            x = sa[-1]
        elif va and (view := va[-1]).__class__ is View and fa in view.field_names:
            x = view.latest.get(fa)
            if not x and da:
                x = ka
        else:
            x = a(ctx)
        if sb:
            y = sb[-1]
        elif vb and (view := vb[-1]).__class__ is View and fb in view.field_names:
            y = view.latest.get(fb)
            if not y and db:
                y = kb
        else:
            y = b(ctx)
        if not checked:
            try:
                return fn(x, y)
            except (TypeError, ZeroDivisionError):
                if fail is None:
                    raise
                raise fail(x, y) from None
        if numbers is not None and (x.__class__ not in NUM_TYPES or y.__class__ not in NUM_TYPES):
            raise numbers(x, y)
        if bound_operands and (
            (x.__class__ is int and not -MAX_INT <= x <= MAX_INT)
            or (y.__class__ is int and not -MAX_INT <= y <= MAX_INT)
        ):
            raise too_large("an operand")  # type: ignore[misc]
        try:
            result = fn(x, y)
        except ZeroDivisionError:
            raise fail(x, y) from None  # type: ignore[misc]
        if too_large is not None and result.__class__ is int and not -MAX_INT <= result <= MAX_INT:
            raise too_large("the result")
        return result

    return op2


def short_circuit(codes: Sequence[Code], stop_when_true: bool) -> Code:
    """The closure of ``(or a b)`` (``stop_when_true``) or ``(and a b)``: a's value
    when it decides, without evaluating b; else b's value."""
    a, b = codes
    sa, sb = slot_of(a), slot_of(b)

    def either(ctx: Context) -> Any:
        x = sa[-1] if sa else a(ctx)
        if (not x) is not stop_when_true:
            return x
        return sb[-1] if sb else b(ctx)

    stack, attr, default = field_of(a)
    if stop_when_true and attr and default is NO_VALUE and sb.__class__ is tuple:
        # (or x.field K): a field read with a default (see field_of).
        register_field(either, stack, attr, sb[0])
    return either


# --- arithmetic ----------------------------------------------------------------


def _range_error(node: Node, op: str, what: str) -> PolicyError:
    return node.error(
        f"'{op}': {what} is outside the integer range -{MAX_INT}..{MAX_INT} (2^63 - 1); "
        "use a float (1e30) for larger magnitudes"
    )


def _number(node: Node, op: str) -> Unary:
    """A check that a value is a number (returned as it is)."""

    def number(value: Any) -> Any:
        if value.__class__ in NUM_TYPES:
            return value
        raise node.error(f"'{op}' needs numbers, got {show(value)} ({type_name(value)})")

    return number


def _numbers(node: Node, op: str) -> Failure:
    """The error of ``op`` on two values that are not both numbers: the first one not."""
    number = _number(node, op)

    def fail(x: Any, y: Any) -> PolicyError:
        number(x)
        number(y)
        raise AssertionError("both are numbers")

    return fail


def _negate(node: Node, op: str) -> Unary:
    """``-x`` or ``abs x``, within the integer bound."""
    number = _number(node, op)
    fn = operator.neg if op == "-" else abs

    def apply(x: Any) -> Any:
        result = fn(number(x))
        if result.__class__ is not int or -MAX_INT <= result <= MAX_INT:
            return result
        raise _range_error(node, op, "the result")

    return apply


def _build_arith(op: str) -> Builder:
    """``+ - *`` on numbers, within the integer bound; more than two operands fold
    from the left, each checked as soon as it is evaluated."""

    def build(node: Node, codes: List[Code]) -> Code:
        if op == "-" and len(codes) == 1:
            return unary(codes, _negate(node, op))
        fn = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op]
        numbers = _numbers(node, op)

        # The operands of * are checked before multiplying, so that no product
        # is ever a long computation; sums of bounded operands are cheap.
        def too_large(what: str) -> PolicyError:
            return _range_error(node, op, what)

        # (+ a b c) is (+ (+ a' b) c), a' being a checked before b is evaluated.
        acc = unary(codes[:1], _number(node, op)) if len(codes) > 2 else codes[0]
        for code in codes[1:]:
            acc = binary(
                [acc, code], fn, numbers=numbers, too_large=too_large, bound_operands=op == "*"
            )
        return acc

    return build


def _build_divide(node: Node, codes: List[Code]) -> Code:
    def fail(x: Any, y: Any) -> PolicyError:
        return node.error(f"division by zero ({show(x)} / {show(y)})")

    return binary(codes, operator.truediv, numbers=_numbers(node, "/"), fail=fail)


def _build_shift(op: str) -> Builder:
    fn = operator.lshift if op == "<<" else operator.rshift

    def build(node: Node, codes: List[Code]) -> Code:
        def apply(x: Any, y: Any) -> Any:
            if x.__class__ not in (int, bool) or y.__class__ not in (int, bool):
                raise node.error(f"'{op}' needs whole numbers, got {show(x)} and {show(y)}")
            if not 0 <= y <= MAX_SHIFT:
                raise node.error(f"'{op}': shift by {y} is outside 0..{MAX_SHIFT}")
            if not -MAX_INT <= x <= MAX_INT:
                raise _range_error(node, op, "the value shifted")
            result = fn(x, y)
            if not -MAX_INT <= result <= MAX_INT:
                raise _range_error(node, op, "the result")
            return result

        return binary(codes, apply)

    return build


# --- comparisons -----------------------------------------------------------------


def _build_compare(op: str) -> Builder:
    # Numbers with numbers, strings with strings: anything else (nil,
    # objects) raises TypeError, reported with the position.
    fn = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}[op]

    def build(node: Node, codes: List[Code]) -> Code:
        def fail(x: Any, y: Any) -> PolicyError:
            return node.error(f"'{op}' cannot compare {show(x)} with {show(y)}")

        return binary(codes, fn, fail=fail)

    return build


def _build_equal(negate: bool) -> Builder:
    fn = operator.ne if negate else operator.eq
    return lambda node, codes: binary(codes, fn)


# --- logic: the operands that decide stop the evaluation ----------------------------


def _build_logic(lazy: str) -> Builder:
    """``and`` / ``or``: the value of the first operand that decides, or of the last.

    ``(and a b c)`` is ``(and a (and b c))``: the same value, the same
    operands evaluated.
    """

    def build(node: Node, codes: List[Code]) -> Code:
        *init, acc = codes
        for code in reversed(init):
            acc = short_circuit([code, acc], lazy == "or")
        return acc

    return build


def _build_not(node: Node, codes: List[Code]) -> Code:
    return unary(codes, operator.not_)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, (list, str)) and len(value) == 0)


def _build_null(node: Node, codes: List[Code]) -> Code:
    def null(ctx: Context) -> Any:
        # A loop, not all(generator): no generator frame on every evaluation.
        for code in codes:  # noqa: SIM110
            if not _is_null(code(ctx)):
                return False
        return True

    return null


def _build_valid(node: Node, codes: List[Code]) -> Code:
    reads = []
    for code in codes:
        stack, attr, default = field_of(code)
        reads.append((stack if default is NO_VALUE else (), attr, code))

    # (valid g.a g.b ...): fields of a view read without a call (see field_of).
    def valid(ctx: Context) -> Any:
        for stack, attr, code in reads:
            if stack and (view := stack[-1]).__class__ is View and attr in view.field_names:
                if view.latest.get(attr) is None:
                    return False
            elif code(ctx) is None:
                return False
        return True

    return valid


# --- min and max -------------------------------------------------------------------


def _build_extreme(op: str) -> Builder:
    pick = min if op == "min" else max

    def build(node: Node, codes: List[Code]) -> Code:
        def bad(values: Sequence[Any]) -> PolicyError:
            culprit = next((v for v in values if v.__class__ not in NUM_TYPES), values[0])
            return node.error(f"'{op}' needs numbers, got {show(culprit)}")

        if len(codes) == 2:
            # (max 0 x): numbers only. Ties keep the first operand, as pick does.
            return binary(codes, pick, numbers=lambda x, y: bad([x, y]))

        def extreme(ctx: Context) -> Any:
            values = [code(ctx) for code in codes]
            if len(values) == 1 and isinstance(values[0], list):
                values = values[0]
                if not values:
                    return None
                ctx.steps += len(values)  # a step per element: a long list is not one step
            if all(v.__class__ in NUM_TYPES for v in values) or all(
                v.__class__ is str for v in values
            ):
                return pick(values)
            raise bad(values)

        return extreme

    return build


# --- debug ---------------------------------------------------------------------------


def _build_debug(node: Node, codes: List[Code]) -> Code:
    where = f"{node.path}:{node.line}:{node.col}"

    def debug(ctx: Context) -> Any:
        values = [c(ctx) for c in codes]
        if len(ctx.debug) >= MAX_DEBUG_LINES or ctx.debug_chars >= MAX_DEBUG_CHARS:
            return values[-1]  # the budget is spent: nothing more is made or logged
        room = min(MAX_DEBUG_LINE_CHARS, MAX_DEBUG_CHARS - ctx.debug_chars)
        parts: List[str] = []
        used = 0
        for v in values:
            if used >= room:
                break
            part = v[: room - used + 1] if isinstance(v, str) else show(v, room - used)
            parts.append(part)
            used += len(part) + 1
        text = " ".join(parts)
        if len(text) > room:
            text = text[:room] + "..."
        ctx.debug_chars += len(text)
        if ctx.debug_chars >= MAX_DEBUG_CHARS or len(ctx.debug) + 1 >= MAX_DEBUG_LINES:
            text += (
                f" [debug output limit reached: {MAX_DEBUG_LINES} lines, "
                f"{MAX_DEBUG_CHARS} characters]"
            )
            ctx.debug_chars = MAX_DEBUG_CHARS
        ctx.debug.append(f"{where}: {text}")
        LOG.debug("policy debug %s: %s", where, text)
        return values[-1]

    return debug


# name -> (min args, max args or None, builder)
OPERATORS: Dict[str, Tuple[int, Optional[int], Builder]] = {
    "+": (2, None, _build_arith("+")),
    "-": (1, 2, _build_arith("-")),
    "*": (2, None, _build_arith("*")),
    "/": (2, 2, _build_divide),
    "<": (2, 2, _build_compare("<")),
    ">": (2, 2, _build_compare(">")),
    "<=": (2, 2, _build_compare("<=")),
    ">=": (2, 2, _build_compare(">=")),
    "==": (2, 2, _build_equal(False)),
    "!=": (2, 2, _build_equal(True)),
    "<<": (2, 2, _build_shift("<<")),
    ">>": (2, 2, _build_shift(">>")),
    "and": (1, None, _build_logic("and")),
    "or": (1, None, _build_logic("or")),
    "not": (1, 1, _build_not),
    "min": (1, None, _build_extreme("min")),
    "max": (1, None, _build_extreme("max")),
    "abs": (1, 1, lambda node, codes: unary(codes, _negate(node, "abs"))),
    "null": (1, None, _build_null),
    "valid": (1, None, _build_valid),
    "debug": (1, None, _build_debug),
}

BUILTIN_NAMES = frozenset(OPERATORS)
