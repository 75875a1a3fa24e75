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
from ebb.host.policy.runtime import NUM_TYPES, Code, Context, show, slot_of, type_name

LOG = logging.getLogger(__name__)

#: Builds the closure of one call: (the operator's node, its operands' closures).
Builder = Callable[[Node, List[Code]], Code]
Unary = Callable[[Any], Any]
Binary = Callable[[Any, Any], Any]

# --- combinators: a function of values -> the closure of a call ------------------


def unary(codes: Sequence[Code], fn: Unary) -> Code:
    """The closure of ``(op a)``: ``fn`` of a's value."""
    (a,) = codes
    sa = slot_of(a)

    def op1(ctx: Context) -> Any:
        return fn(sa[-1] if sa else a(ctx))

    return op1


def binary(codes: Sequence[Code], fn: Binary) -> Code:
    """The closure of ``(op a b)``: ``fn`` of both values, a's evaluated first."""
    a, b = codes
    sa, sb = slot_of(a), slot_of(b)

    def op2(ctx: Context) -> Any:
        return fn(sa[-1] if sa else a(ctx), sb[-1] if sb else b(ctx))

    return op2


def fold(codes: Sequence[Code], first: Unary, fn: Binary) -> Code:
    """The closure of ``(op a b c ...)``: ``fn`` folded from the left.

    With two operands both are evaluated before ``fn`` checks them; with more,
    ``first`` checks the first operand, and each later one is checked (by
    ``fn``) as soon as it is evaluated, before the next is.
    """
    if len(codes) == 2:
        return binary(codes, fn)
    head, *rest = codes

    def fold_n(ctx: Context) -> Any:
        acc = first(head(ctx))
        for code in rest:
            acc = fn(acc, code(ctx))
        return acc

    return fold_n


def _values(build: Callable[[Node], Binary]) -> Builder:
    """The builder of an operator of exactly two operands given by ``build(node)``."""
    return lambda node, codes: binary(codes, build(node))


# --- arithmetic ----------------------------------------------------------------


def _range_error(node: Node, op: str, what: str) -> PolicyError:
    return node.error(
        f"'{op}': {what} is outside the integer range -{MAX_INT}..{MAX_INT} (2^63 - 1); "
        "use a float (1e30) for larger magnitudes"
    )


def _numbers(node: Node, op: str) -> Unary:
    """A check that a value is a number (returned as it is)."""

    def number(value: Any) -> Any:
        if value.__class__ in NUM_TYPES:
            return value
        raise node.error(f"'{op}' needs numbers, got {show(value)} ({type_name(value)})")

    return number


def _in_range(value: Any) -> bool:
    """Whether a number is within the integer bound (floats always are)."""
    return value.__class__ is not int or -MAX_INT <= value <= MAX_INT


def _arithmetic(node: Node, op: str) -> Binary:
    """``x op y`` on two numbers, within the integer bound.

    The operands of ``*`` are checked before multiplying, so that no product
    is ever a long computation; sums of bounded operands are cheap, and any
    result out of range is an error.
    """
    fn = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op]
    number = _numbers(node, op)
    multiply = op == "*"

    def apply(x: Any, y: Any) -> Any:
        if x.__class__ not in NUM_TYPES or y.__class__ not in NUM_TYPES:
            number(x)
            number(y)
        if multiply and not (_in_range(x) and _in_range(y)):
            raise _range_error(node, op, "an operand")
        result = fn(x, y)
        if result.__class__ is not int or -MAX_INT <= result <= MAX_INT:
            return result
        raise _range_error(node, op, "the result")

    return apply


def _negate(node: Node, op: str) -> Unary:
    """``-x`` or ``abs x``, within the integer bound."""
    number = _numbers(node, op)
    fn = operator.neg if op == "-" else abs

    def apply(x: Any) -> Any:
        result = fn(number(x))
        if result.__class__ is not int or -MAX_INT <= result <= MAX_INT:
            return result
        raise _range_error(node, op, "the result")

    return apply


def _build_arith(op: str) -> Builder:
    def build(node: Node, codes: List[Code]) -> Code:
        if op == "-" and len(codes) == 1:
            return unary(codes, _negate(node, op))
        return fold(codes, _numbers(node, op), _arithmetic(node, op))

    return build


def _divide(node: Node) -> Binary:
    number = _numbers(node, "/")

    def apply(x: Any, y: Any) -> Any:
        number(x)
        if not number(y):
            raise node.error(f"division by zero ({show(x)} / {show(y)})")
        return x / y

    return apply


def _shift(op: str) -> Callable[[Node], Binary]:
    fn = operator.lshift if op == "<<" else operator.rshift

    def make(node: Node) -> Binary:
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

        return apply

    return make


# --- comparisons -----------------------------------------------------------------


def _compare(op: str) -> Callable[[Node], Binary]:
    fn = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}[op]

    def make(node: Node) -> Binary:
        def apply(x: Any, y: Any) -> Any:
            try:
                # Numbers with numbers, strings with strings: anything else
                # (nil, objects) raises TypeError, reported with the position.
                return fn(x, y)
            except TypeError:
                raise node.error(f"'{op}' cannot compare {show(x)} with {show(y)}") from None

        return apply

    return make


def _build_equal(negate: bool) -> Builder:
    fn = operator.ne if negate else operator.eq
    return lambda node, codes: binary(codes, fn)


# --- logic: the operands that decide stop the evaluation ----------------------------


def _build_and(node: Node, codes: List[Code]) -> Code:
    def and_(ctx: Context) -> Any:
        value = None
        for code in codes:
            value = code(ctx)
            if not value:
                return value
        return value

    return and_


def _build_or(node: Node, codes: List[Code]) -> Code:
    if len(codes) == 2:
        # (or x.field 0), the policies' way to read a field that may be missing.
        a, b = codes
        sa, sb = slot_of(a), slot_of(b)

        def or2(ctx: Context) -> Any:
            return (sa[-1] if sa else a(ctx)) or (sb[-1] if sb else b(ctx))

        return or2

    def or_(ctx: Context) -> Any:
        value = None
        for code in codes:
            value = code(ctx)
            if value:
                return value
        return value

    return or_


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
    def valid(ctx: Context) -> Any:
        for code in codes:  # noqa: SIM110 (as in null)
            if code(ctx) is None:
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
            def extreme2(x: Any, y: Any) -> Any:
                if x.__class__ in NUM_TYPES and y.__class__ in NUM_TYPES:
                    return pick(x, y)
                raise bad([x, y])

            return binary(codes, extreme2)

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
    "/": (2, 2, _values(_divide)),
    "<": (2, 2, _values(_compare("<"))),
    ">": (2, 2, _values(_compare(">"))),
    "<=": (2, 2, _values(_compare("<="))),
    ">=": (2, 2, _values(_compare(">="))),
    "==": (2, 2, _build_equal(False)),
    "!=": (2, 2, _build_equal(True)),
    "<<": (2, 2, _values(_shift("<<"))),
    ">>": (2, 2, _values(_shift(">>"))),
    "and": (1, None, _build_and),
    "or": (1, None, _build_or),
    "not": (1, 1, _build_not),
    "min": (1, None, _build_extreme("min")),
    "max": (1, None, _build_extreme("max")),
    "abs": (1, 1, lambda node, codes: unary(codes, _negate(node, "abs"))),
    "null": (1, None, _build_null),
    "valid": (1, None, _build_valid),
    "debug": (1, None, _build_debug),
}

BUILTIN_NAMES = frozenset(OPERATORS)
