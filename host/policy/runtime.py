"""What an evaluation works with: the context, the values, and their bounds.

A policy is compiled (:mod:`ebb.host.policy.forms`) into closures that take a
:class:`Context`; the values they pass around are None, bool, int, float, str,
lists (:class:`PolicyList` when a policy built them) and :class:`View` (the
host or a guest). The sizes of values are bounded here (see
:mod:`ebb.host.policy.limits`). The closures of variable reads, constants and
field reads are made here too, with what lets the closures that take them as
operands read them without a call (:func:`slot_of`, :func:`field_of`).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from ebb.host.policy import fields as F
from ebb.host.policy.limits import (
    CLOCK_EVERY_STEPS,
    MAX_LIST_CELLS,
    MAX_LIST_DEPTH,
    MAX_SHOWN_CHARS,
    MAX_STORE_CELLS,
    STRING_CHARS_PER_CELL,
)
from ebb.host.policy.reader import Node

Code = Callable[["Context"], Any]

NUM_TYPES: FrozenSet[Any] = frozenset({int, float, bool})


class View:
    """What a policy holds for the host or a guest during one evaluation.

    Reads go to the entity's plain dictionaries through the allow-lists of
    :mod:`ebb.host.policy.fields`; controls and variables set by the policy are
    collected here. No policy name is ever looked up as a Python attribute.
    """

    __slots__ = (
        "control_names",
        "controls",
        "entity",
        "field_names",
        "is_host",
        "latest",
        "name",
        "prop_names",
        "props",
        "store",
    )

    def __init__(self, entity: Any, is_host: bool, store: Dict[str, Any]) -> None:
        self.entity = entity
        self.is_host = is_host
        self.name: str = str(entity.props.get("name", ""))
        self.latest = entity.latest
        self.props = entity.props
        self.field_names = HOST_FIELDS if is_host else GUEST_FIELDS
        self.prop_names = F.HOST_PROPS if is_host else F.GUEST_PROPS
        self.control_names = HOST_CONTROLS if is_host else GUEST_CONTROLS
        self.controls: Dict[str, Any] = {}
        self.store: Dict[str, Any] = store

    def describe(self) -> str:
        return "Host" if self.is_host else f"guest {self.name!r}"

    def __repr__(self) -> str:
        return "<Host>" if self.is_host else f"<Guest {self.name}>"


HOST_FIELDS = frozenset(F.HOST_FIELDS)
GUEST_FIELDS = frozenset(F.GUEST_FIELDS)
HOST_CONTROLS = frozenset(F.HOST_CONTROLS)
GUEST_CONTROLS = frozenset(F.GUEST_CONTROLS)


class Context:
    """Mutable state of one evaluation (one tick)."""

    __slots__ = (
        "clock",
        "deadline",
        "debug",
        "debug_chars",
        "depth",
        "funcs",
        "max_depth",
        "max_seconds",
        "max_steps",
        "scopes",
        "step_limit",
        "steps",
        "vars",
    )

    def __init__(
        self,
        max_steps: int,
        max_depth: int,
        max_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        variables: Optional[Dict[str, List[Any]]] = None,
    ) -> None:
        #: name -> stack of values, innermost binding last. A compiled program
        #: passes its own (see :class:`Compiled`): its closures hold the stacks.
        self.vars: Dict[str, List[Any]] = {} if variables is None else variables
        # Names bound in each open scope, innermost last (lists: scopes are tiny).
        self.scopes: List[List[str]] = [[]]
        self.funcs: Dict[str, Function] = {}
        self.steps = 0
        self.max_steps = max_steps
        self.depth = 0
        self.max_depth = max_depth
        self.debug: List[str] = []
        self.debug_chars = 0
        self.clock = clock
        self.max_seconds = max_seconds
        self.deadline = clock() + max_seconds
        #: The hot paths compare the step count with this one number only;
        #: passing it means "check the budget" (steps, then the clock).
        self.step_limit = min(max_steps, CLOCK_EVERY_STEPS)

    def bind_global(self, name: str, value: Any) -> None:
        self.scopes[0].append(name)
        stack = self.vars.get(name)
        if stack is None:
            self.vars[name] = [value]
        else:
            stack.append(value)

    def check_budget(self, node: Node, steps: int) -> None:
        """Raise at ``node`` when ``steps`` or the wall time is over budget."""
        if steps > self.max_steps:
            raise node.error(f"evaluation exceeded {self.max_steps} steps")
        if self.clock() > self.deadline:
            raise node.error(
                f"evaluation took longer than {self.max_seconds:g} s (see Bounds in docs/policy.md)"
            )
        limit = steps + CLOCK_EVERY_STEPS
        self.step_limit = limit if limit < self.max_steps else self.max_steps


class PolicyList(list):  # type: ignore[type-arg]
    """A list a policy built (with ``with``), with its size for the bounds.

    ``cells`` counts its elements recursively (see :func:`measure`), ``depth``
    its nesting, ``plain`` whether it holds only data that SetVar can keep.
    """

    __slots__ = ("cells", "depth", "plain")

    def __init__(self, items: List[Any], cells: int, depth: int, plain: bool) -> None:
        super().__init__(items)
        self.cells = cells
        self.depth = depth
        self.plain = plain


def measure(value: Any, budget: int = MAX_STORE_CELLS) -> Tuple[int, int, bool]:
    """``(cells, depth, plain)`` of a value, stopping once cells pass ``budget``.

    A number, nil, or an object is one cell; a string one per
    STRING_CHARS_PER_CELL characters started; a list one plus its elements'.
    ``plain``: only numbers, strings, nil and lists of them (what SetVar keeps).
    """
    cls = value.__class__
    if cls is PolicyList:
        return value.cells, value.depth, value.plain
    if cls is str:
        return 1 + len(value) // STRING_CHARS_PER_CELL, 0, True
    if cls is not list:
        return 1, 0, value is None or cls in NUM_TYPES
    # A list from outside the evaluator (Guests, a restored variable): walk it.
    cells, depth, plain = 1, 1, True
    stack: List[Tuple[Any, int]] = [(item, 1) for item in value]
    while stack and cells <= budget:
        item, level = stack.pop()
        cls = item.__class__
        if cls is PolicyList:
            cells += item.cells
            depth = max(depth, level + item.depth)
            plain = plain and item.plain
        elif cls is list:
            cells += 1
            depth = max(depth, level + 1)
            stack.extend((x, level + 1) for x in item)
        elif cls is str:
            cells += 1 + len(item) // STRING_CHARS_PER_CELL
        else:
            cells += 1
            plain = plain and (item is None or cls in NUM_TYPES)
    return cells, depth, plain


class ListBuilder:
    """Collects the results of a ``with`` into a :class:`PolicyList`, within bounds.

    The loop appends to ``items`` itself and counts results that are numbers,
    booleans or nil (one cell each); anything else goes through :meth:`add`.
    """

    __slots__ = ("cells", "depth", "items", "node", "plain")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.items: List[Any] = []
        self.cells = 1
        self.depth = 1
        self.plain = True

    def add(self, value: Any) -> None:
        """Account for a result that is not a number or nil (already appended)."""
        cells, depth, plain = measure(value, MAX_LIST_CELLS)
        self.cells += cells
        if depth >= self.depth:
            self.depth = depth + 1
            if self.depth > MAX_LIST_DEPTH:
                raise self.node.error(
                    f"with: lists nest deeper than {MAX_LIST_DEPTH} (see Bounds in docs/policy.md)"
                )
        self.plain = self.plain and plain
        if self.cells > MAX_LIST_CELLS:
            self.too_large()

    def too_large(self) -> None:
        raise self.node.error(
            f"with: the list would be larger than {MAX_LIST_CELLS} cells "
            "(see Bounds in docs/policy.md)"
        )

    def done(self, scalars: int) -> PolicyList:
        """The list, counting ``scalars`` more cells (the numbers and nils)."""
        cells = self.cells + scalars
        if cells > MAX_LIST_CELLS:
            self.too_large()
        return PolicyList(self.items, cells, self.depth, self.plain)


@dataclass(slots=True)
class Function:
    """A function defined by ``(def name (params) body...)``."""

    name: str
    params: Tuple[str, ...]
    body: Code
    cost: int
    node: Node
    #: Whether the body may bind with defvar, and so needs a scope of its own
    #: (most functions do not: a call then only pushes and pops its parameters).
    scoped: bool = True
    #: The value stacks of the parameters (see :class:`Compiled`), in order.
    stacks: Tuple[List[Any], ...] = ()
    #: The context of the evaluation that last ran its def (calls of a name
    #: defined once check this instead of looking the name up).
    defined_in: Any = None
    arity: int = field(init=False)

    def __post_init__(self) -> None:
        self.arity = len(self.params)


@dataclass
class Compiled:
    """A compiled program: top-level expressions with their node and step cost.

    ``stacks`` holds one stack of values per variable name of the program
    (every name is written in its text, so all are known when it is
    compiled): the closures that read or bind a variable hold its stack, and
    a read is an index, not a lookup. The stacks belong to the evaluation
    running now, so evaluations of one program take ``lock`` in turn and
    start and end with every stack empty.
    """

    exprs: List[Tuple[Code, int, Node]] = field(default_factory=list)
    stacks: Dict[str, List[Any]] = field(default_factory=dict)
    lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def stack(self, name: str) -> List[Any]:
        """The value stack of variable ``name`` (made on first use)."""
        stack = self.stacks.get(name)
        if stack is None:
            stack = self.stacks[name] = []
        return stack

    def reset(self) -> None:
        """Forget the evaluation that ran (or failed): every stack empty."""
        for stack in self.stacks.values():
            stack.clear()


NO_VALUE: Any = object()


def run_in_scope(ctx: Context, body: Code, scope: List[str]) -> Any:
    """Run ``body`` in a scope of its own holding ``scope`` (names already pushed).

    A defvar in the body adds its name to the scope; when the body is done,
    every name of the scope is unbound.
    """
    scopes = ctx.scopes
    scopes.append(scope)
    result = body(ctx)
    scopes.pop()
    variables = ctx.vars
    for name in scope:
        variables[name].pop()
    return result


#: The slot of each closure whose value can be read without calling it (see slot_of).
_SLOTS: weakref.WeakKeyDictionary[Code, Sequence[Any]] = weakref.WeakKeyDictionary()


def slot_of(code: Code) -> Sequence[Any]:
    """Where a closure's value can be read without a call: ``slot[-1]`` when ``slot``.

    A variable read's slot is the variable's value stack (empty when it is
    not bound: then the closure raises the error), a constant's a one-value
    tuple, any other closure's the empty tuple. So the one idiom
    ``slot[-1] if slot else code(ctx)`` reads any operand, and the two
    commonest kinds without a call.
    """
    return _SLOTS.get(code, ())


#: Field reads ``head.attr`` and ``(or head.attr K)``: the closure -> (head's
#: value stack, attr, K or NO_VALUE).
_FIELDS: weakref.WeakKeyDictionary[Code, Tuple[Sequence[Any], str, Any]] = (
    weakref.WeakKeyDictionary()
)


def field_of(code: Code) -> Tuple[Sequence[Any], str, Any]:
    """``(stack, attr, default)`` of a field read, else ``((), "", NO_VALUE)``.

    A field read is ``head.attr`` (``default`` is NO_VALUE) or ``(or head.attr
    K)`` with a constant K (``default`` is K), ``stack`` being head's value
    stack. The hottest combinators read such an operand without a call when
    head holds a view that has the field: ``view.latest.get(attr)``, or K
    when that is false and there is a default. Anything else (a property, an
    error) is the closure's to read or raise.
    """
    return _FIELDS.get(code, ((), "", NO_VALUE))


def register_field(code: Code, stack: Sequence[Any], attr: str, default: Any = NO_VALUE) -> Code:
    """Make ``code``, a field read (see field_of), known to field_of."""
    _FIELDS[code] = (stack, attr, default)
    return code


def variable(node: Node, name: str, stack: List[Any]) -> Code:
    """A read of variable ``name``, whose value stack is ``stack``."""

    def var(ctx: Context) -> Any:
        if stack:
            return stack[-1]
        raise node.error(f"undefined variable '{name}'")

    _SLOTS[var] = stack
    return var


def constant(value: Any) -> Code:
    def const(ctx: Context) -> Any:
        return value

    _SLOTS[const] = (value,)
    return const


def constant_value(code: Code) -> Any:
    """The value a closure always returns, or NO_VALUE when it is not a constant."""
    slot = _SLOTS.get(code)
    return slot[0] if slot.__class__ is tuple else NO_VALUE


def type_name(value: Any) -> str:
    """How a value's type reads in messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, View):
        return "the host" if value.is_host else "a guest"
    return "a value"


class _Text(str):
    """A piece of punctuation waiting on show()'s stack (not a policy string)."""


def show(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """A value as it reads in messages and debug lines, cut after ``limit`` characters.

    Lists show their first 8 elements. The walk is iterative and stops at the
    limit, so a deep or shared list costs no more than the text it yields.
    """
    out: List[str] = []
    used = 0
    stack: List[Any] = [value]
    while stack:
        item = stack.pop()
        if item.__class__ is _Text:
            text: str = item
        elif item is None:
            text = "nil"
        elif isinstance(item, str):
            text = repr(item[: limit + 1])
        elif isinstance(item, list):
            stack.append(_Text(")"))
            if len(item) > 8:
                stack.append(_Text(" ..."))
            head = item[:8]
            for i in range(len(head) - 1, -1, -1):
                stack.append(head[i])
                if i:
                    stack.append(_Text(" "))
            text = "("
        else:
            text = repr(item)
        if used + len(text) > limit:
            out.append(text[: max(0, limit - used)])
            out.append("...")
            break
        out.append(text)
        used += len(text)
    return "".join(out)
