"""The operators: arithmetic, comparisons, logic, min/max, null/valid, debug.

Each entry of :data:`OPERATORS` builds the closure of one call from the
closures of its operands, once, when the policy is loaded. Arithmetic takes
numbers only and keeps integers within the bound of
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
    DOTS,
    FIELDS_OR,
    NO_VALUE,
    NUM_TYPES,
    VARIABLES,
    Code,
    Context,
    View,
    constant_value,
    dot_of,
    show,
    stack_of,
    type_name,
)

LOG = logging.getLogger(__name__)

def _num(node: Node, op: str, value: Any) -> Any:
    if value.__class__ in NUM_TYPES:
        return value
    raise node.error(f"'{op}' needs numbers, got {show(value)} ({type_name(value)})")


def _range_error(node: Node, op: str, what: str) -> PolicyError:
    return node.error(
        f"'{op}': {what} is outside the integer range -{MAX_INT}..{MAX_INT} (2^63 - 1); "
        "use a float (1e30) for larger magnitudes"
    )


def _int_ok(value: Any) -> bool:
    """Whether a number is within the integer bound (floats always are)."""
    return value.__class__ is not int or -MAX_INT <= value <= MAX_INT


def _apply(node: Node, op: str, fn: Callable[[Any, Any], Any], x: Any, y: Any) -> Any:
    """``fn(x, y)`` on two numbers, within the integer bound.

    The operands of ``*`` are checked before multiplying, so that no product
    is ever a long computation; sums of bounded operands are cheap, and any
    result out of range is an error.
    """
    if op == "*" and not (_int_ok(x) and _int_ok(y)):
        raise _range_error(node, op, "an operand")
    result = fn(x, y)
    if result.__class__ is int and (result > MAX_INT or result < -MAX_INT):
        raise _range_error(node, op, "the result")
    return result


def _arith(op: str, fn: Callable[[Any, Any], Any]) -> Callable[[Node, List[Code]], Code]:

    def build(node: Node, codes: List[Code]) -> Code:
        if len(codes) == 2:
            a, b = codes
            sa, sb = stack_of(a), stack_of(b)
            (da, fa), (db, fb) = dot_of(a), dot_of(b)
            k = constant_value(b)
            add, sub = op == "+", op == "-"
            if k.__class__ in NUM_TYPES and _int_ok(k):

                def arith_constant(ctx: Context) -> Any:
                    x: Any
                    if sa:
                        x = sa[-1]
                    elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                        x = view.latest.get(fa)
                    else:
                        x = a(ctx)
                    if x.__class__ in NUM_TYPES:
                        if add:
                            r = x + k
                        elif sub:
                            r = x - k
                        elif x.__class__ is int and not -MAX_INT <= x <= MAX_INT:
                            raise _range_error(node, op, "an operand")
                        else:
                            r = x * k
                        if r.__class__ is not int or -MAX_INT <= r <= MAX_INT:
                            return r
                        raise _range_error(node, op, "the result")
                    return _num(node, op, x)

                return arith_constant

            # The operation inline (no call of fn); the operands of * are
            # checked before multiplying (see _apply).
            def arith2(ctx: Context) -> Any:
                x: Any
                y: Any
                if sa:
                    x = sa[-1]
                elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                    x = view.latest.get(fa)
                else:
                    x = a(ctx)
                if sb:
                    y = sb[-1]
                elif db and (view := db[-1]).__class__ is View and fb in view.field_names:
                    y = view.latest.get(fb)
                else:
                    y = b(ctx)
                if x.__class__ in NUM_TYPES and y.__class__ in NUM_TYPES:
                    if add:
                        r = x + y
                    elif sub:
                        r = x - y
                    elif (x.__class__ is int and not -MAX_INT <= x <= MAX_INT) or (
                        y.__class__ is int and not -MAX_INT <= y <= MAX_INT
                    ):
                        raise _range_error(node, op, "an operand")
                    else:
                        r = x * y
                    if r.__class__ is not int or -MAX_INT <= r <= MAX_INT:
                        return r
                    raise _range_error(node, op, "the result")
                _num(node, op, x)
                return _num(node, op, y)

            return arith2
        first, *rest = codes

        def arith_n(ctx: Context) -> Any:
            acc = _num(node, op, first(ctx))
            for c in rest:
                acc = _apply(node, op, fn, acc, _num(node, op, c(ctx)))
            return acc

        return arith_n

    return build


def _negate(node: Node, op: str, value: Any) -> Any:
    value = -_num(node, op, value) if op == "-" else abs(_num(node, op, value))
    if value.__class__ is int and not -MAX_INT <= value <= MAX_INT:
        raise _range_error(node, op, "the result")
    return value


def _build_sub(node: Node, codes: List[Code]) -> Code:
    if len(codes) == 1:
        (a,) = codes
        return lambda ctx: _negate(node, "-", a(ctx))
    return _arith("-", operator.sub)(node, codes)


def _build_div(node: Node, codes: List[Code]) -> Code:
    a, b = codes
    sa, sb = stack_of(a), stack_of(b)

    def div(ctx: Context) -> Any:
        x = _num(node, "/", sa[-1] if sa else a(ctx))
        y = _num(node, "/", sb[-1] if sb else b(ctx))
        if not y:
            raise node.error(f"division by zero ({show(x)} / {show(y)})")
        return x / y

    return div


def _shift(op: str, left: bool) -> Callable[[Node, List[Code]], Code]:
    def build(node: Node, codes: List[Code]) -> Code:
        a, b = codes
        sa, sb = stack_of(a), stack_of(b)

        def shift(ctx: Context) -> Any:
            x = sa[-1] if sa else a(ctx)
            y = sb[-1] if sb else b(ctx)
            if x.__class__ not in (int, bool) or y.__class__ not in (int, bool):
                raise node.error(f"'{op}' needs whole numbers, got {show(x)} and {show(y)}")
            if not 0 <= y <= MAX_SHIFT:
                raise node.error(f"'{op}': shift by {y} is outside 0..{MAX_SHIFT}")
            if not -MAX_INT <= x <= MAX_INT:
                raise _range_error(node, op, "the value shifted")
            result = x << y if left else x >> y
            if not -MAX_INT <= result <= MAX_INT:
                raise _range_error(node, op, "the result")
            return result

        return shift

    return build


def _compare(op: str, fn: Callable[[Any, Any], bool]) -> Callable[[Node, List[Code]], Code]:
    def build(node: Node, codes: List[Code]) -> Code:
        a, b = codes
        sa, sb = stack_of(a), stack_of(b)
        (da, fa), (db, fb) = dot_of(a), dot_of(b)
        k = constant_value(b)
        if k is not NO_VALUE:
            return _compare_constant(node, op, a, k)
        second = VARIABLES.get(b)
        # (op (or g.field K) name), as in is_stalling: that read inline too.
        so, fo, ko = FIELDS_OR.get(a, ((), "", None))
        if second is not None:
            # (op x name): the variable read inline.
            def compare_variable(ctx: Context) -> Any:
                if sa:
                    x = sa[-1]
                elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                    x = view.latest.get(fa)
                elif so and (view := so[-1]).__class__ is View and fo in view.field_names:
                    x = view.latest.get(fo) or ko
                else:
                    x = a(ctx)
                y = second[-1] if second else b(ctx)  # b raises the right error
                try:
                    return fn(x, y)
                except TypeError:
                    raise node.error(f"'{op}' cannot compare {show(x)} with {show(y)}") from None

            return compare_variable

        def compare(ctx: Context) -> Any:
            if sa:
                x = sa[-1]
            elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                x = view.latest.get(fa)
            else:
                x = a(ctx)
            if sb:
                y = sb[-1]
            elif db and (view := db[-1]).__class__ is View and fb in view.field_names:
                y = view.latest.get(fb)
            else:
                y = b(ctx)
            try:
                # Numbers with numbers, strings with strings: anything else
                # (nil, objects) raises TypeError, reported with the position.
                return fn(x, y)
            except TypeError:
                raise node.error(f"'{op}' cannot compare {show(x)} with {show(y)}") from None

        return compare

    return build


COMPARISONS = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}


def _compare_constant(node: Node, op: str, a: Code, k: Any) -> Code:
    """``(op x K)`` with a constant K: the comparison inline, no call for K."""
    sa = stack_of(a)
    da, fa = dot_of(a)

    def fail(x: Any) -> PolicyError:
        return node.error(f"'{op}' cannot compare {show(x)} with {show(k)}")

    field_or = FIELDS_OR.get(a)
    if field_or is not None:
        stack, attr, default = field_or
        fn = COMPARISONS[op]

        # (op (or g.field D) K), as in is_needy: the read inline (see _build_or).
        def compare_field_or(ctx: Context) -> Any:
            if stack:
                view = stack[-1]
                if view.__class__ is View and attr in view.field_names:
                    x = view.latest.get(attr) or default
                else:
                    x = a(ctx)
            else:
                x = a(ctx)
            try:
                return fn(x, k)
            except TypeError:
                raise fail(x) from None

        return compare_field_or

    if op == "<":

        def lt(ctx: Context) -> Any:
            if sa:
                x = sa[-1]
            elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                x = view.latest.get(fa)
            else:
                x = a(ctx)
            try:
                return x < k
            except TypeError:
                raise fail(x) from None

        return lt
    if op == ">":

        def gt(ctx: Context) -> Any:
            if sa:
                x = sa[-1]
            elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                x = view.latest.get(fa)
            else:
                x = a(ctx)
            try:
                return x > k
            except TypeError:
                raise fail(x) from None

        return gt
    if op == "<=":

        def le(ctx: Context) -> Any:
            if sa:
                x = sa[-1]
            elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                x = view.latest.get(fa)
            else:
                x = a(ctx)
            try:
                return x <= k
            except TypeError:
                raise fail(x) from None

        return le

    def ge(ctx: Context) -> Any:
        if sa:
            x = sa[-1]
        elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
            x = view.latest.get(fa)
        else:
            x = a(ctx)
        try:
            return x >= k
        except TypeError:
            raise fail(x) from None

    return ge


def _build_eq(negate: bool) -> Callable[[Node, List[Code]], Code]:
    def build(node: Node, codes: List[Code]) -> Code:
        a, b = codes
        sa, sb = stack_of(a), stack_of(b)
        k = constant_value(b)
        da, fa = dot_of(a)
        if k is not NO_VALUE and a in DOTS:
            # (== g.field K): the field read inline (see dot_of).

            def eq_field(ctx: Context) -> Any:
                view = da[-1] if da else None
                if view.__class__ is View and fa in view.field_names:
                    x = view.latest.get(fa)
                else:
                    x = a(ctx)
                return x != k if negate else x == k

            return eq_field
        if k is not NO_VALUE:
            if negate:
                return lambda ctx: (sa[-1] if sa else a(ctx)) != k
            return lambda ctx: (sa[-1] if sa else a(ctx)) == k
        if negate:
            return lambda ctx: (sa[-1] if sa else a(ctx)) != (sb[-1] if sb else b(ctx))
        return lambda ctx: (sa[-1] if sa else a(ctx)) == (sb[-1] if sb else b(ctx))

    return build


def _build_and(node: Node, codes: List[Code]) -> Code:
    if len(codes) == 2:
        a, b = codes
        sa, sb = stack_of(a), stack_of(b)

        def and2(ctx: Context) -> Any:
            return (sa[-1] if sa else a(ctx)) and (sb[-1] if sb else b(ctx))

        return and2
    if len(codes) == 3:
        a, b, c = codes

        def and3(ctx: Context) -> Any:
            return a(ctx) and b(ctx) and c(ctx)

        return and3

    def and_n(ctx: Context) -> Any:
        value = None
        for c in codes:
            value = c(ctx)
            if not value:
                return value
        return value

    return and_n


def _build_or(node: Node, codes: List[Code]) -> Code:
    if len(codes) == 2:
        a, b = codes
        sa, sb = stack_of(a), stack_of(b)
        dot = DOTS.get(a)
        default = constant_value(b)
        if dot is not None and default is not NO_VALUE:
            stack, attr = dot

            # (or g.field 0), the policies' way to read a field that may be
            # missing, in one call: the read is done inline when the variable
            # holds a view with that field, else by the dot closure (which
            # reads a property or raises the right error).
            def or_field(ctx: Context) -> Any:
                if stack:
                    view = stack[-1]
                    if view.__class__ is View and attr in view.field_names:
                        return view.latest.get(attr) or default
                return a(ctx) or default

            FIELDS_OR[or_field] = (stack, attr, default)
            return or_field

        if default is not NO_VALUE:

            def or_constant(ctx: Context) -> Any:
                return (sa[-1] if sa else a(ctx)) or default

            return or_constant

        def or2(ctx: Context) -> Any:
            return (sa[-1] if sa else a(ctx)) or (sb[-1] if sb else b(ctx))

        return or2

    def or_n(ctx: Context) -> Any:
        value = None
        for c in codes:
            value = c(ctx)
            if value:
                return value
        return value

    return or_n


def _build_not(node: Node, codes: List[Code]) -> Code:
    (a,) = codes
    return lambda ctx: not a(ctx)


def _extreme(op: str, pick: Callable[..., Any]) -> Callable[[Node, List[Code]], Code]:
    smaller = op == "min"

    def build(node: Node, codes: List[Code]) -> Code:
        def bad(values: Sequence[Any]) -> PolicyError:
            culprit = next((v for v in values if v.__class__ not in NUM_TYPES), values[0])
            return node.error(f"'{op}' needs numbers, got {show(culprit)}")

        if len(codes) == 2:
            a, b = codes
            sa, sb = stack_of(a), stack_of(b)
            (da, fa), (db, fb) = dot_of(a), dot_of(b)
            # (max 0 x), (min x 1): a constant operand costs no call. Ties
            # keep the first operand, as Python's min/max do.
            k = constant_value(a)
            if k.__class__ in NUM_TYPES:

                def constant_first(ctx: Context) -> Any:
                    if sb:
                        y = sb[-1]
                    elif db and (view := db[-1]).__class__ is View and fb in view.field_names:
                        y = view.latest.get(fb)
                    else:
                        y = b(ctx)
                    if y.__class__ not in NUM_TYPES:
                        raise bad([k, y])
                    if smaller:
                        return y if y < k else k
                    return y if y > k else k

                return constant_first
            k = constant_value(b)
            if k.__class__ in NUM_TYPES:

                def constant_second(ctx: Context) -> Any:
                    if sa:
                        x = sa[-1]
                    elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                        x = view.latest.get(fa)
                    else:
                        x = a(ctx)
                    if x.__class__ not in NUM_TYPES:
                        raise bad([x, k])
                    if smaller:
                        return k if k < x else x
                    return k if k > x else x

                return constant_second

            def extreme2(ctx: Context) -> Any:
                if sa:
                    x = sa[-1]
                elif da and (view := da[-1]).__class__ is View and fa in view.field_names:
                    x = view.latest.get(fa)
                else:
                    x = a(ctx)
                if sb:
                    y = sb[-1]
                elif db and (view := db[-1]).__class__ is View and fb in view.field_names:
                    y = view.latest.get(fb)
                else:
                    y = b(ctx)
                numbers = x.__class__ in NUM_TYPES and y.__class__ in NUM_TYPES
                if numbers:
                    # Ties keep the first operand, as Python's min/max do.
                    if smaller:
                        return y if y < x else x
                    return y if y > x else x
                raise bad([x, y])

            return extreme2

        def extreme(ctx: Context) -> Any:
            values = [c(ctx) for c in codes]
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


def _build_abs(node: Node, codes: List[Code]) -> Code:
    (a,) = codes
    return lambda ctx: _negate(node, "abs", a(ctx))


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, (list, str)) and len(value) == 0)


def _build_null(node: Node, codes: List[Code]) -> Code:
    def null(ctx: Context) -> Any:
        # A loop, not all(generator): no generator frame on every evaluation.
        for c in codes:  # noqa: SIM110
            if not _is_null(c(ctx)):
                return False
        return True

    return null


def _build_valid(node: Node, codes: List[Code]) -> Code:
    reads = [(*dot_of(c), c) for c in codes]

    # (valid g.a g.b ...): the field reads inline (see dot_of), other operands
    # through their closure.
    def valid(ctx: Context) -> Any:
        for stack, attr, code in reads:
            if stack:
                view = stack[-1]
                if view.__class__ is View and attr in view.field_names:
                    if view.latest.get(attr) is None:
                        return False
                    continue
            if code(ctx) is None:
                return False
        return True

    return valid


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
OPERATORS: Dict[str, Tuple[int, Optional[int], Callable[[Node, List[Code]], Code]]] = {
    "+": (2, None, _arith("+", operator.add)),
    "-": (1, 2, _build_sub),
    "*": (2, None, _arith("*", operator.mul)),
    "/": (2, 2, _build_div),
    "<": (2, 2, _compare("<", operator.lt)),
    ">": (2, 2, _compare(">", operator.gt)),
    "<=": (2, 2, _compare("<=", operator.le)),
    ">=": (2, 2, _compare(">=", operator.ge)),
    "==": (2, 2, _build_eq(False)),
    "!=": (2, 2, _build_eq(True)),
    "<<": (2, 2, _shift("<<", True)),
    ">>": (2, 2, _shift(">>", False)),
    "and": (1, None, _build_and),
    "or": (1, None, _build_or),
    "not": (1, 1, _build_not),
    "min": (1, None, _extreme("min", min)),
    "max": (1, None, _extreme("max", max)),
    "abs": (1, 1, _build_abs),
    "null": (1, None, _build_null),
    "valid": (1, None, _build_valid),
    "debug": (1, None, _build_debug),
}

BUILTIN_NAMES = frozenset(OPERATORS)
