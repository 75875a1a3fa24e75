"""Reads of variables and fields, and the methods of the host and guests.

``x`` reads a variable, ``x.field`` a field or property of the host or a
guest through the allow-lists of :mod:`ebb.host.policy.fields`, and
``(x.Method ...)`` calls one of :data:`METHOD_BUILDERS`. No policy name is
ever looked up as a Python attribute.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List

from ebb.host.policy import fields as F
from ebb.host.policy.limits import (
    MAX_INT,
    MAX_STORE_CELLS,
    MAX_VARS_PER_ENTITY,
    STRING_CHARS_PER_CELL,
)
from ebb.host.policy.reader import Node
from ebb.host.policy.runtime import (
    DOTS,
    NUM_TYPES,
    VARIABLES,
    Code,
    Context,
    View,
    constant_value,
    measure,
    show,
    type_name,
)


def variable(node: Node, name: str, stack: List[Any]) -> Code:
    """A read of variable ``name``, whose value stack is ``stack``."""

    def var(ctx: Context) -> Any:
        try:
            return stack[-1]
        except IndexError:
            raise node.error(f"undefined variable '{name}'") from None

    VARIABLES[var] = stack
    return var


def _entity_of(stack: List[Any], node: Node, name: str) -> View:
    """The view in variable ``name`` (whose stack is ``stack``), or the error."""
    if not stack:
        raise node.error(f"undefined variable '{name}'")
    value = stack[-1]
    if value.__class__ is not View:
        raise node.error(f"'{name}' is {type_name(value)}, not the host or a guest")
    view: View = value
    return view


def dot(node: Node, head: str, attr: str, stack: List[Any]) -> Code:
    """A read of ``head.attr`` (a field or property), ``stack`` being head's."""
    full = f"{head}.{attr}"

    def dot_error(ctx: Context) -> Any:
        if not stack:
            raise node.error(f"undefined variable '{head}'")
        view = stack[-1]
        if view.__class__ is View:
            raise node.error(f"'{full}': {view.describe()} has no field '{attr}'")
        raise node.error(f"'{full}': '{head}' is {type_name(view)}, not the host or a guest")

    if attr in F.HOST_PROPS or attr in F.GUEST_PROPS:

        def prop_or_field(ctx: Context) -> Any:
            view = stack[-1] if stack else None
            if view.__class__ is View:
                if attr in view.field_names:
                    return view.latest.get(attr)
                if attr in view.prop_names:
                    return view.props.get(attr)
            return dot_error(ctx)

        DOTS[prop_or_field] = (stack, attr)
        return prop_or_field

    def field(ctx: Context) -> Any:
        # The common case in one test: a view that has this field.
        if stack:
            view = stack[-1]
            if view.__class__ is View and attr in view.field_names:
                return view.latest.get(attr)
        return dot_error(ctx)

    DOTS[field] = (stack, attr)
    return field


# --- methods -------------------------------------------------------------------


def _field_arg(node: Node, view: View, method: str, value: Any) -> str:
    if not isinstance(value, str):
        raise node.error(f"{method}: the field name must be a string, got {type_name(value)}")
    if value not in view.field_names:
        raise node.error(f"{method}: {view.describe()} has no field {value!r}")
    return value


def _m_stat(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    (arg,) = codes

    def stat(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        return view.latest.get(_field_arg(node, view, name, arg(ctx)))

    field_name = constant_value(arg)
    if field_name.__class__ is not str:
        return stat

    # (g.Stat "field"): the common case inline; anything else (not a view,
    # no such field here) goes through the general closure for its error.
    def stat_field(ctx: Context) -> Any:
        if stack:
            view = stack[-1]
            if view.__class__ is View and field_name in view.field_names:
                return view.latest.get(field_name)
        return stat(ctx)

    return stat_field


def _m_stat_avg(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    (arg,) = codes

    def stat_avg(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        return view.entity.stat_avg(_field_arg(node, view, name, arg(ctx)))

    field_name = constant_value(arg)
    if field_name.__class__ is not str:
        return stat_avg

    # (g.StatAvg "field"), as in _m_stat.
    def stat_avg_field(ctx: Context) -> Any:
        if stack:
            view = stack[-1]
            if view.__class__ is View and field_name in view.field_names:
                return view.entity.stat_avg(field_name)
        return stat_avg(ctx)

    return stat_avg_field


def _m_prop(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    (arg,) = codes

    def prop(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        key = arg(ctx)
        if not isinstance(key, str) or key.startswith("_"):
            raise node.error(f"{name}: the property name must be a string, got {show(key)}")
        return _plain(view.props.get(key))

    return prop


def _plain(value: Any) -> Any:
    # Properties come from the daemon; only plain data reaches the policy.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _control_name(node: Node, view: View, method: str, value: Any) -> str:
    if not isinstance(value, str):
        raise node.error(f"{method}: the control name must be a string, got {type_name(value)}")
    if value not in view.control_names:
        raise node.error(
            f"{method}: {view.describe()} has no control {value!r} "
            f"(it has: {', '.join(sorted(view.control_names))})"
        )
    return value


def _m_control(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    key_code, value_code = codes

    def set_control(view: View, key: str, value: Any) -> Any:
        if value.__class__ not in NUM_TYPES:
            raise node.error(f"{name} {key!r}: value must be a number, got {show(value)}")
        if value.__class__ is float and not math.isfinite(value):
            raise node.error(f"{name} {key!r}: value must be finite, got {value}")
        if not -MAX_INT <= value <= MAX_INT:
            raise node.error(
                f"{name} {key!r}: value {show(value)} is outside -{MAX_INT}..{MAX_INT}"
            )
        # Every control is a whole number (KiB, pages, ms, a mode); the
        # controllers take integers, as MOM's did.
        value = int(value)
        view.controls[key] = value
        return value

    def control(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        key = _control_name(node, view, name, key_code(ctx))
        return set_control(view, key, value_code(ctx))

    constant_key = constant_value(key_code)
    if constant_key.__class__ is not str:
        return control

    # (g.Control "name" value): the checks of the name inline, the general
    # closure for the errors.
    def control_key(ctx: Context) -> Any:
        if stack:
            view = stack[-1]
            if view.__class__ is View and constant_key in view.control_names:
                return set_control(view, constant_key, value_code(ctx))
        return control(ctx)

    return control_key


def _m_get_control(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    (key_code,) = codes

    def get_control(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        return view.controls.get(_control_name(node, view, name, key_code(ctx)))

    return get_control


def _store_cells(store: Dict[str, Any], skip: str) -> int:
    """Cells held by a store's variables other than ``skip``."""
    total = 0
    for key, value in store.items():
        if key != skip:
            total += measure(value)[0]
    return total


def _m_set_var(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    key_code, value_code = codes

    def set_var(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        key = key_code(ctx)
        if not isinstance(key, str):
            raise node.error(f"{name}: the variable name must be a string, got {show(key)}")
        value = value_code(ctx)
        cells, _, plain = measure(value, MAX_STORE_CELLS)
        if not plain:
            raise node.error(
                f"{name} {key!r}: only numbers, strings, nil and lists of them can be kept, "
                f"got {type_name(value)}"
            )
        store = view.store
        if key not in store and len(store) >= MAX_VARS_PER_ENTITY:
            raise node.error(
                f"{name}: more than {MAX_VARS_PER_ENTITY} variables on {view.describe()}"
            )
        if cells + _store_cells(store, key) + len(key) // STRING_CHARS_PER_CELL > MAX_STORE_CELLS:
            raise node.error(
                f"{name} {key!r}: the variables of {view.describe()} would be larger than "
                f"{MAX_STORE_CELLS} cells (see Bounds in docs/policy.md)"
            )
        store[key] = value
        return value

    return set_var


def _m_get_var(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    (key_code,) = codes

    def get_var(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        key = key_code(ctx)
        if not isinstance(key, str):
            raise node.error(f"{name}: the variable name must be a string, got {show(key)}")
        return view.store.get(key)

    constant_key = constant_value(key_code)
    if constant_key.__class__ is not str:
        return get_var

    # (x.GetVar "name"), as in _m_stat.
    def get_var_key(ctx: Context) -> Any:
        if stack:
            view = stack[-1]
            if view.__class__ is View:
                return view.store.get(constant_key)
        return get_var(ctx)

    return get_var_key


METHOD_BUILDERS: Dict[str, Callable[[Node, str, str, List[Code], List[Any]], Code]] = {
    "Stat": _m_stat,
    "StatAvg": _m_stat_avg,
    "Prop": _m_prop,
    "Control": _m_control,
    "GetControl": _m_get_control,
    "SetVar": _m_set_var,
    "GetVar": _m_get_var,
}
