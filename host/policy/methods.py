"""Reads of fields, and the methods of the host and guests.

``x.field`` reads a field or property of the host or a guest through the
allow-lists of :mod:`ebb.host.policy.fields`, and ``(x.Method ...)`` calls one
of :data:`METHOD_BUILDERS`. No policy name is ever looked up as a Python
attribute.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple

from ebb.host.policy.limits import (
    MAX_INT,
    MAX_STORE_CELLS,
    MAX_VARS_PER_ENTITY,
    STRING_CHARS_PER_CELL,
)
from ebb.host.policy.reader import Node
from ebb.host.policy.runtime import (
    GUEST_CONTROLS,
    GUEST_FIELDS,
    HOST_CONTROLS,
    HOST_FIELDS,
    NUM_TYPES,
    Code,
    Context,
    View,
    constant_value,
    measure,
    register_field,
    show,
    type_name,
)


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

    def field(ctx: Context) -> Any:
        view = stack[-1] if stack else None
        if view.__class__ is View:
            if attr in view.field_names:
                return view.latest.get(attr)
            if attr in view.prop_names:
                return view.props.get(attr)
            raise node.error(f"'{full}': {view.describe()} has no field '{attr}'")
        if not stack:
            raise node.error(f"undefined variable '{head}'")
        raise node.error(f"'{full}': '{head}' is {type_name(view)}, not the host or a guest")

    return register_field(field, stack, attr)


# --- methods -------------------------------------------------------------------
#
# A method is (x.Method key [value]): x must hold the host or a guest, the key
# is checked (a field, control or variable name) by a rule, and an action
# makes the result. The value, if any, is evaluated by the action, after the
# key is checked.

#: (view, key) -> the key, or raises.
Check = Callable[[View, Any], Any]
#: (is the view the host's, a literal key) -> whether the check passes.
Accepts = Callable[[bool, str], bool]
#: (view, key, ctx) -> the method's value.
Action = Callable[[View, Any, Context], Any]
#: (the method's node, its name as written) -> the check of its key and what it accepts.
Rule = Callable[[Node, str], Tuple[Check, Accepts]]
#: (node, object name, method name as written, argument closures, the object's stack) -> closure.
MethodBuilder = Callable[[Node, str, str, List[Code], List[Any]], Code]


def _method(
    node: Node, obj: str, stack: List[Any], key_code: Code, rule: Tuple[Check, Accepts], act: Action
) -> Code:
    check, accepts = rule

    def method(ctx: Context) -> Any:
        view = _entity_of(stack, node, obj)
        return act(view, check(view, key_code(ctx)), ctx)

    key = constant_value(key_code)
    if key.__class__ is not str:
        return method
    # (g.Method "literal" ...), the usual shape: the key is checked once for
    # each kind of view, here; a view of another kind takes the general path
    # (for its error).
    kinds = frozenset(host for host in (True, False) if accepts(host, key))

    def method_key(ctx: Context) -> Any:
        view = stack[-1] if stack else None
        if view.__class__ is View and view.is_host in kinds:
            return act(view, key, ctx)
        return method(ctx)

    return method_key


def _field_name(node: Node, method: str) -> Tuple[Check, Accepts]:
    def check(view: View, value: Any) -> str:
        if not isinstance(value, str):
            raise node.error(f"{method}: the field name must be a string, got {type_name(value)}")
        if value not in view.field_names:
            raise node.error(f"{method}: {view.describe()} has no field {value!r}")
        return value

    return check, lambda host, key: key in (HOST_FIELDS if host else GUEST_FIELDS)


def _control_name(node: Node, method: str) -> Tuple[Check, Accepts]:
    def check(view: View, value: Any) -> str:
        if not isinstance(value, str):
            raise node.error(f"{method}: the control name must be a string, got {type_name(value)}")
        if value not in view.control_names:
            raise node.error(
                f"{method}: {view.describe()} has no control {value!r} "
                f"(it has: {', '.join(sorted(view.control_names))})"
            )
        return value

    return check, lambda host, key: key in (HOST_CONTROLS if host else GUEST_CONTROLS)


def _string(what: str) -> Rule:
    """The rule of a key that is any string (a property's must not start with '_')."""
    prop = what == "property"

    def accepts(host: bool, key: str) -> bool:
        return not (prop and key.startswith("_"))

    def rule(node: Node, method: str) -> Tuple[Check, Accepts]:
        def check(view: View, value: Any) -> str:
            if not isinstance(value, str) or not accepts(view.is_host, value):
                raise node.error(f"{method}: the {what} name must be a string, got {show(value)}")
            return value

        return check, accepts

    return rule


def _reading(rule: Rule, act: Action) -> MethodBuilder:
    """A method whose one argument is the key: ``(x.Stat "field")``."""

    def build(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
        return _method(node, obj, stack, codes[0], rule(node, name), act)

    return build


def _plain(value: Any) -> Any:
    # Properties come from the daemon; only plain data reaches the policy.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _m_control(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    key_code, value_code = codes

    def set_control(view: View, key: str, ctx: Context) -> Any:
        value = value_code(ctx)
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

    return _method(node, obj, stack, key_code, _control_name(node, name), set_control)


def _store_cells(store: Dict[str, Any], skip: str) -> int:
    """Cells held by a store's variables other than ``skip``."""
    total = 0
    for key, value in store.items():
        if key != skip:
            total += measure(value)[0]
    return total


def _m_set_var(node: Node, obj: str, name: str, codes: List[Code], stack: List[Any]) -> Code:
    key_code, value_code = codes

    def set_var(view: View, key: str, ctx: Context) -> Any:
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

    return _method(node, obj, stack, key_code, _string("variable")(node, name), set_var)


METHOD_BUILDERS: Dict[str, MethodBuilder] = {
    "Stat": _reading(_field_name, lambda view, key, ctx: view.latest.get(key)),
    "StatAvg": _reading(_field_name, lambda view, key, ctx: view.entity.stat_avg(key)),
    "Prop": _reading(_string("property"), lambda view, key, ctx: _plain(view.props.get(key))),
    "Control": _m_control,
    "GetControl": _reading(_control_name, lambda view, key, ctx: view.controls.get(key)),
    "SetVar": _m_set_var,
    "GetVar": _reading(_string("variable"), lambda view, key, ctx: view.store.get(key)),
}
