"""The compiler: nodes -> Python closures, with every static check done once.

A policy is compiled when it is loaded, not interpreted from its text each
tick: each node becomes a closure taking the evaluation context, special forms
and operators are resolved by name here (never at run time), and everything a
load can catch is caught here with its position: unknown functions, wrong
arity, malformed forms, fields and controls that do not exist, names outside
the sandbox.

Variables are dynamically scoped (a function sees its caller's variables, as in
MOM). The context keeps one stack of values per name ("shallow binding"), so a
variable read is one dictionary lookup however deep the call chain is.

Speed (bench/bench_policy.py): the cost of a tick is mostly the number of
Python calls, so common shapes get closures of their own (constant operands,
``(or g.field 0)``, calls with a variable argument, bodies without defvar that
need no scope), and a tree of pure operations is also compiled to one Python
expression whose result is checked against the closures' rules (see
``Compiler.wrap``); the closures remain the reference for values and errors.
"""

from __future__ import annotations

import logging
import math
import operator
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ebb.host.policy import fields as F
from ebb.host.policy.errors import PolicyError
from ebb.host.policy.limits import (
    CLOCK_EVERY_STEPS,
    MAX_DEBUG_CHARS,
    MAX_DEBUG_LINE_CHARS,
    MAX_DEBUG_LINES,
    MAX_INT,
    MAX_LIST_CELLS,
    MAX_LIST_DEPTH,
    MAX_SHIFT,
    MAX_SHOWN_CHARS,
    MAX_STORE_CELLS,
    MAX_VARS_PER_ENTITY,
    STRING_CHARS_PER_CELL,
)
from ebb.host.policy.reader import BLOCK, FLOAT, INT, LIST, STR, SYM, Node

LOG = logging.getLogger(__name__)

Code = Callable[["Context"], Any]

SPECIAL_FORMS = frozenset({"defvar", "set", "setq", "def", "defun", "let", "if", "with"})
READ_ONLY = frozenset({"Host", "Guests"})
_NUMERIC = (int, float, bool)
_NUM_TYPES = frozenset({int, float, bool})


# ----------------------------------------------------------------- runtime ----


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
        "guest_latest",
        "host_latest",
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
        # The fields of one kind only (None on the other kind), for fast paths.
        self.host_latest = self.latest if is_host else None
        self.guest_latest = None if is_host else self.latest
        self.props = entity.props
        self.field_names = _HOST_FIELDS if is_host else _GUEST_FIELDS
        self.prop_names = F.HOST_PROPS if is_host else F.GUEST_PROPS
        self.control_names = _HOST_CONTROLS if is_host else _GUEST_CONTROLS
        self.controls: Dict[str, Any] = {}
        self.store = store

    def describe(self) -> str:
        return "Host" if self.is_host else f"guest {self.name!r}"

    def __repr__(self) -> str:
        return "<Host>" if self.is_host else f"<Guest {self.name}>"


_HOST_FIELDS = frozenset(F.HOST_FIELDS)
_GUEST_FIELDS = frozenset(F.GUEST_FIELDS)
_HOST_CONTROLS = frozenset(F.HOST_CONTROLS)
_GUEST_CONTROLS = frozenset(F.GUEST_CONTROLS)


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
    ) -> None:
        self.vars: Dict[str, List[Any]] = {}
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
        self.vars[name] = [value]

    def check_budget(self, node: Node, steps: int) -> None:
        """Raise at ``node`` when ``steps`` or the wall time is over budget."""
        if steps > self.max_steps:
            raise node.error(f"evaluation exceeded {self.max_steps} steps")
        if self.clock() > self.deadline:
            raise node.error(
                f"evaluation took longer than {self.max_seconds:g} s (see Bounds in docs/policy.md)"
            )
        self.step_limit = min(self.max_steps, steps + CLOCK_EVERY_STEPS)


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
        return 1, 0, value is None or cls in _NUM_TYPES
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
            plain = plain and (item is None or cls in _NUM_TYPES)
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
    arity: int = field(init=False)

    def __post_init__(self) -> None:
        self.arity = len(self.params)


@dataclass
class Compiled:
    """A compiled program: top-level expressions with their node and step cost."""

    exprs: List[Tuple[Code, int, Node]] = field(default_factory=list)


#: Closures that return a constant, and their value: operators built on a
#: constant operand use the value directly instead of calling for it.
_CONSTANTS: weakref.WeakKeyDictionary[Code, Any] = weakref.WeakKeyDictionary()
#: Closures that read ``head.attr`` (a field or property), with (head, attr).
_PURE_METHODS = frozenset({"Stat", "StatAvg", "Prop", "GetVar", "GetControl"})


def _bad() -> Any:
    raise ValueError("not a number")  # caught by the fast path: the closure decides


_DOTS: weakref.WeakKeyDictionary[Code, Tuple[str, str]] = weakref.WeakKeyDictionary()
#: Closures that read a variable, with its name.
_VARIABLES: weakref.WeakKeyDictionary[Code, str] = weakref.WeakKeyDictionary()
NO_VALUE: Any = object()


def _constant(value: Any) -> Code:
    def constant(ctx: Context) -> Any:
        return value

    _CONSTANTS[constant] = value
    return constant


def constant_value(code: Code) -> Any:
    """The value a closure always returns, or NO_VALUE when it is not a constant."""
    return _CONSTANTS.get(code, NO_VALUE)


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


# ---------------------------------------------------------------- compiler ----


class Compiler:
    """Compiles the nodes of a program; collects errors instead of stopping at the first."""

    def __init__(self, functions: Dict[str, Set[int]]) -> None:
        #: name -> set of arities of every (def ...) in the whole program.
        self.functions = functions
        self.errors: List[PolicyError] = []
        #: Pure closures (no side effects, no steps) and the Python expression
        #: that computes the same value; see wrap().
        self.sources: Dict[Code, str] = {}
        #: Pure closures built from pure operands (worth a fast path of their own).
        self.compound: Set[Code] = set()
        #: Globals of the generated fast paths: the closures and constants they use.
        self.env: Dict[str, Any] = {"_N": _NUM_TYPES, "_M": MAX_INT, "_bad": _bad}
        self._serial = 0

    # -- entry points

    def compile_top(self, nodes: Sequence[Node]) -> Compiled:
        out = Compiled()
        for node in nodes:
            try:
                out.exprs.append((self.expr(node), size(node), node))
            except PolicyError as err:
                self.errors.append(err)
        return out

    # -- dispatch

    def expr(self, node: Node) -> Code:
        """The closure for a node, with a fast path when it is a pure expression."""
        return self.wrap(self.raw(node))

    def raw(self, node: Node) -> Code:
        """The closure for a node; a pure one is left for its parent to fuse."""
        kind = node.kind
        if kind in (INT, FLOAT, STR):
            code = _constant(node.value)
            value = node.value
            if kind == INT and value >= 0:
                self.sources[code] = repr(value)
            else:
                self.sources[code] = self.global_name("k", value)
            return code
        if kind == SYM:
            return self.symbol(node)
        if kind == BLOCK:
            return self.block(node, node.value)
        return self.call(node)

    def exprs(self, nodes: Sequence[Node], raw: bool = False) -> List[Code]:
        codes: List[Code] = []
        failed: Optional[PolicyError] = None
        for n in nodes:
            try:
                codes.append(self.raw(n) if raw else self.expr(n))
            except PolicyError as err:
                # Keep going so one load reports every independent error.
                if failed is not None:
                    self.errors.append(failed)
                failed = err
        if failed is not None:
            raise failed
        return codes

    # -- fast paths for pure expressions
    #
    # A tree of pure operations (arithmetic, comparisons, and/or/not, if,
    # min/max, valid, reads of variables, fields, Stat/StatAvg/Prop/GetVar/
    # GetControl) is also written out as one Python expression, compiled once,
    # so evaluating it is one call instead of one per node. The text is made
    # only from the operators' own symbols, allow-listed attribute names and
    # repr() of names: no policy text is ever executed. The closure tree stays
    # the reference: when the fast path raises anything, the closure is
    # evaluated instead and gives the value or the exact error (it may run
    # again because a pure expression changes nothing). The fast path returns
    # normally only where the closure returns the same value; where a closure
    # checks types (arithmetic, min/max) the result's type is checked.

    def global_name(self, prefix: str, value: Any) -> str:
        self._serial += 1
        name = f"{prefix}{self._serial}"
        self.env[name] = value
        return name

    def leaf(self, code: Code) -> Code:
        """Mark a pure closure that a fast path calls as it is."""
        self.sources[code] = f"{self.global_name('c', code)}(ctx)"
        return code

    def checked(self, text: str) -> str:
        """``text``, failing (to the closure) unless its value is a number in range.

        A float beyond the integer bound also fails here: the closure then
        gives the float, or the range error for an integer.
        """
        self._serial += 1
        t = f"_t{self._serial}"
        return f"({t} if ({t} := {text}).__class__ in _N and -_M <= {t} <= _M else _bad())"

    def operator_source(self, name: str, codes: Sequence[Code]) -> Optional[str]:
        if not all(c in self.sources for c in codes):
            return None
        src = [self.sources[c] for c in codes]
        if name in ("+", "*") or (name == "-" and len(src) == 2):
            return self.checked("(" + f" {name} ".join(src) + ")")
        if name == "-":
            return f"(-{src[0]})"
        if name in ("/", "<", ">", "<=", ">=", "==", "!="):
            return f"({src[0]} {name} {src[1]})"
        if name in ("and", "or"):
            return "(" + f" {name} ".join(src) + ")"
        if name == "not":
            return f"(not {src[0]})"
        if name == "abs":
            return f"abs({src[0]})"
        if name == "valid":
            # A literal number is never nil (and "1 is not None" draws a warning).
            tests = ["True" if x.isdigit() else f"{x} is not None" for x in src]
            return "(" + " and ".join(tests) + ")"
        if name in ("min", "max") and len(src) == 2:
            # Ties keep the first operand, as the closure does.
            self._serial += 1
            a, b = f"_a{self._serial}", f"_b{self._serial}"
            cmp = "<" if name == "min" else ">"
            return self.checked(f"({b} if ({b} := {src[1]}) {cmp} ({a} := {src[0]}) else {a})")
        return None

    def wrap(self, code: Code) -> Code:
        """A pure compound closure with its fast path; anything else unchanged."""
        if code not in self.compound:
            return code
        plain = self.global_name("p", code)
        fast = self.global_name("f", None)
        text = (
            f"def {fast}(ctx):\n"
            "    V = ctx.vars\n"
            "    try:\n"
            f"        return {self.sources[code]}\n"
            "    except Exception:\n"
            f"        return {plain}(ctx)\n"
        )
        exec(compile(text, "<policy fast path>", "exec"), self.env)
        wrapped: Code = self.env[fast]
        return wrapped

    def pure(self, code: Code, source: Optional[str]) -> Code:
        """Record that ``code`` is pure, computed by ``source``."""
        if source is not None:
            self.sources[code] = source
            self.compound.add(code)
        return code

    # -- atoms

    def symbol(self, node: Node) -> Code:
        name: str = node.value
        if name == "nil":
            code = _constant(None)
            self.sources[code] = "None"
            return code
        if name in F.METHODS or name in _OPERATORS or name in SPECIAL_FORMS:
            raise node.error(f"'{name}' is a function, not a value; call it as ({name} ...)")
        if "." not in name:
            check_variable_name(node, name)
            code = _variable(node, name)
            self.sources[code] = f"V[{name!r}][-1]"
            return code
        head, _, attr = name.partition(".")
        check_variable_name(node, head)
        if "." in attr:
            raise node.error(f"'{name}': only one '.' is allowed (entity.field)")
        if attr in F.METHODS:
            raise node.error(f"'{name}' is a method: call it as ({name} ...)")
        if attr not in F.ALL_DOT_NAMES:
            raise node.error(
                f"unknown field '{attr}' in '{name}' (fields are listed in docs/policy.md)"
            )
        code = _dot(node, head, attr)
        view = f"V[{head!r}][-1]"
        if attr in _HOST_FIELDS and attr in _GUEST_FIELDS:
            self.sources[code] = f"{view}.latest.get({attr!r})"
        elif attr in _GUEST_FIELDS:
            self.sources[code] = f"{view}.guest_latest.get({attr!r})"
        elif attr in _HOST_FIELDS:
            self.sources[code] = f"{view}.host_latest.get({attr!r})"
        elif attr in F.HOST_PROPS and attr in F.GUEST_PROPS:
            self.sources[code] = f"{view}.props.get({attr!r})"
        else:
            self.leaf(code)
        return code

    # -- lists

    def block(self, node: Node, items: Sequence[Node]) -> Code:
        codes = self.exprs(items)
        if not codes:
            return _constant(None)
        if len(codes) == 1:
            return codes[0]
        if len(codes) == 2:
            a, b = codes

            def block2(ctx: Context) -> Any:
                a(ctx)
                return b(ctx)

            return block2
        *init, last = codes

        def block_n(ctx: Context) -> Any:
            for c in init:
                c(ctx)
            return last(ctx)

        return block_n

    def call(self, node: Node) -> Code:
        items: List[Node] = node.value
        if not items:
            raise node.error("empty expression '()'")
        head = items[0]
        if head.kind != SYM:
            raise head.error(
                f"expected a function name at the start of a list, found {head.describe()}"
            )
        name: str = head.value
        args = items[1:]
        if name in SPECIAL_FORMS:
            forms: Dict[str, Callable[[Node, Node, Sequence[Node]], Code]] = {
                "defvar": self.form_defvar,
                "set": self.form_set,
                "setq": self.form_set,
                "def": self.form_def,
                "defun": self.form_def,
                "let": self.form_let,
                "if": self.form_if,
                "with": self.form_with,
            }
            return forms[name](node, head, args)
        op = _OPERATORS.get(name)
        if op is not None:
            lo, hi, build = op
            check_arity(head, name, len(args), lo, hi)
            codes = self.exprs(args, raw=True)
            source = self.operator_source(name, codes)
            if source is None:
                codes = [self.wrap(c) for c in codes]
            return self.pure(build(head, codes), source)
        if "." in name:
            return self.method_call(node, head, name, args)
        arities = self.functions.get(name)
        if arities is None:
            if name == "nil":
                raise head.error("nil is not a function")
            raise head.error(f"unknown function '{name}'")
        if len(args) not in arities:
            want = " or ".join(str(a) for a in sorted(arities))
            raise head.error(f"'{name}' takes {want} argument(s), given {len(args)}")
        return _user_call(head, name, self.exprs(args))

    def method_call(self, node: Node, head: Node, name: str, args: Sequence[Node]) -> Code:
        obj, _, method = name.partition(".")
        check_variable_name(head, obj)
        if "." in method:
            raise head.error(f"'{name}': only one '.' is allowed (entity.Method)")
        if method not in F.METHODS:
            if method in F.ALL_DOT_NAMES:
                raise head.error(f"'{name}' is a field, not a method; write it without parentheses")
            raise head.error(
                f"unknown method '{method}' in '{name}' (methods: {', '.join(sorted(F.METHODS))})"
            )
        check_arity(head, name, len(args), F.METHODS[method], F.METHODS[method])
        if args and args[0].kind == STR:
            literal = args[0].value
            if method in ("Stat", "StatAvg") and literal not in F.ALL_FIELDS:
                raise args[0].error(
                    f"unknown field {literal!r} (fields are listed in docs/policy.md)"
                )
            if method == "Control" and literal not in F.ALL_CONTROLS:
                raise args[0].error(
                    f"unknown control {literal!r} (controls: {', '.join(sorted(F.ALL_CONTROLS))})"
                )
        elif args and args[0].kind in (INT, FLOAT, LIST, BLOCK) and method != "SetVar":
            pass  # checked at run time: may still evaluate to a string
        codes = self.exprs(args)
        code = _METHOD_BUILDERS[method](head, obj, name, codes)
        if method in _PURE_METHODS and all(c in self.sources for c in codes):
            self.leaf(code)
        return code

    # -- special forms

    def form_defvar(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        check_arity(head, "defvar", len(args), 2, 2)
        name = self.binding_name(args[0], "defvar")
        value = self.expr(args[1])

        def defvar(ctx: Context) -> Any:
            val = value(ctx)
            scope = ctx.scopes[-1]
            if name in scope:
                return ctx.vars[name][-1]
            scope.append(name)
            stack = ctx.vars.get(name)
            if stack is None:
                ctx.vars[name] = [val]
            else:
                stack.append(val)
            return val

        return defvar

    def form_set(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        form = head.value
        check_arity(head, form, len(args), 2, 2)
        name = self.binding_name(args[0], form)
        value = self.expr(args[1])
        target = args[0]

        def set_(ctx: Context) -> Any:
            val = value(ctx)
            stack = ctx.vars.get(name)
            if not stack:
                raise target.error(
                    f"({form} {name} ...): no variable '{name}' exists; "
                    f"create it with (defvar {name} ...)"
                )
            stack[-1] = val
            return val

        return set_

    def form_def(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        form = head.value
        if len(args) < 3:
            raise head.error(
                f"({form} name (params) body) needs a name, a parameter list and a body"
            )
        name_node, params_node, *body_nodes = args
        if name_node.kind != SYM:
            raise name_node.error(f"{form}: the function name must be a symbol")
        fname: str = name_node.value
        check_function_name(name_node, fname)
        if params_node.kind != LIST:
            raise params_node.error(f"{form} {fname}: parameters must be a list like (a b)")
        params: List[str] = []
        for p in params_node.value:
            if p.kind != SYM or p.value == "nil":
                raise p.error(f"{form} {fname}: parameter must be a name, found {p.describe()}")
            check_variable_name(p, p.value)
            if "." in p.value:
                raise p.error(f"{form} {fname}: parameter '{p.value}' must not contain '.'")
            if p.value in params:
                raise p.error(f"{form} {fname}: parameter '{p.value}' appears twice")
            params.append(p.value)
        body = self.block(node, body_nodes)
        fn = Function(
            fname,
            tuple(params),
            body,
            sum(size(b) for b in body_nodes) + 1,
            name_node,
            scoped=binds_variables(body_nodes),
        )

        def define(ctx: Context) -> Any:
            ctx.funcs[fname] = fn
            return fname

        return define

    def form_let(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        if len(args) < 2:
            raise head.error("(let ((name value) ...) body...) needs bindings and a body")
        bindings_node, *body_nodes = args
        if bindings_node.kind != LIST:
            raise bindings_node.error("let: the bindings must be a list like ((a 1) (b 2))")
        bindings: List[Tuple[str, Code]] = []
        seen: Set[str] = set()
        for b in bindings_node.value:
            if b.kind != LIST or len(b.value) != 2 or b.value[0].kind != SYM:
                raise b.error("let: each binding must be (name value)")
            bname = self.binding_name(b.value[0], "let")
            if bname in seen:
                raise b.value[0].error(f"let: '{bname}' is bound twice")
            seen.add(bname)
            bindings.append((bname, self.expr(b.value[1])))
        body = self.block(node, body_nodes)
        if not binds_variables(body_nodes) and not any(
            binds_variables([b.value[1]]) for b in bindings_node.value
        ):
            names = [bname for bname, _ in bindings]

            # Nothing inside binds in this scope: push and pop the bindings only.
            def let_unscoped(ctx: Context) -> Any:
                variables = ctx.vars
                for bname, code in bindings:
                    val = code(ctx)
                    stack = variables.get(bname)
                    if stack is None:
                        variables[bname] = [val]
                    else:
                        stack.append(val)
                result = body(ctx)
                for bname in names:
                    variables[bname].pop()
                return result

            return let_unscoped

        def let(ctx: Context) -> Any:
            scope: List[str] = []
            ctx.scopes.append(scope)
            variables = ctx.vars
            # Sequential, as in MOM: a later binding sees the earlier ones.
            for bname, code in bindings:
                val = code(ctx)
                scope.append(bname)
                stack = variables.get(bname)
                if stack is None:
                    variables[bname] = [val]
                else:
                    stack.append(val)
            result = body(ctx)
            ctx.scopes.pop()
            for bound in scope:
                variables[bound].pop()
            return result

        return let

    def form_if(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        if len(args) != 3:
            raise head.error(
                f"(if condition then else) needs exactly 3 arguments, given {len(args)}"
            )
        codes = self.exprs(args, raw=True)
        source = None
        if all(c in self.sources for c in codes):
            c, y, n = (self.sources[c] for c in codes)
            source = f"({y} if {c} else {n})"
        else:
            codes = [self.wrap(c) for c in codes]
        return self.pure(self.if_code(codes), source)

    def if_code(self, codes: Sequence[Code]) -> Code:
        cond, yes, no = codes
        # (if c x 0) is the common shape: a constant branch costs no call.
        no_value = constant_value(no)
        if no_value is not NO_VALUE:

            def if_else_constant(ctx: Context) -> Any:
                return yes(ctx) if cond(ctx) else no_value

            return if_else_constant
        yes_value = constant_value(yes)
        if yes_value is not NO_VALUE:

            def if_then_constant(ctx: Context) -> Any:
                return yes_value if cond(ctx) else no(ctx)

            return if_then_constant

        def if_(ctx: Context) -> Any:
            return yes(ctx) if cond(ctx) else no(ctx)

        return if_

    def form_with(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        if len(args) < 3:
            raise head.error("(with List name body...) needs a list, a name and a body")
        list_node, var_node, *body_nodes = args
        if var_node.kind != SYM:
            raise var_node.error("with: the second argument must be a name")
        var = self.binding_name(var_node, "with")
        items = self.expr(list_node)
        body = self.block(node, body_nodes)
        cost = sum(size(b) for b in body_nodes) + 1
        if not binds_variables(body_nodes):
            # The body binds nothing in its scope: push and pop the item only.
            def with_unscoped(ctx: Context) -> Any:
                seq = items(ctx)
                if not isinstance(seq, list):
                    raise list_node.error(
                        f"with: expected a list such as Guests, got {type_name(seq)}"
                    )
                builder = ListBuilder(head)
                results = builder.items
                scalars = 0
                stack = ctx.vars.get(var)
                if stack is None:
                    ctx.vars[var] = stack = []
                for item in seq:
                    steps = ctx.steps + cost
                    if steps > ctx.step_limit:
                        ctx.check_budget(head, steps)
                    ctx.steps = steps
                    stack.append(item)
                    value = body(ctx)
                    results.append(value)
                    if value.__class__ in _NUM_TYPES or value is None:
                        scalars += 1
                    else:
                        builder.add(value)
                    stack.pop()
                return builder.done(scalars)

            return with_unscoped

        def with_(ctx: Context) -> Any:
            seq = items(ctx)
            if not isinstance(seq, list):
                raise list_node.error(f"with: expected a list such as Guests, got {type_name(seq)}")
            builder = ListBuilder(head)
            results = builder.items
            scalars = 0
            variables = ctx.vars
            scopes = ctx.scopes
            for item in seq:
                ctx.steps += cost
                if ctx.steps > ctx.step_limit:
                    ctx.check_budget(head, ctx.steps)
                scope = [var]
                scopes.append(scope)
                stack = variables.get(var)
                if stack is None:
                    variables[var] = [item]
                else:
                    stack.append(item)
                value = body(ctx)
                results.append(value)
                if value.__class__ in _NUM_TYPES or value is None:
                    scalars += 1
                else:
                    builder.add(value)
                scopes.pop()
                for bound in scope:
                    variables[bound].pop()
            return builder.done(scalars)

        return with_

    def binding_name(self, node: Node, form: str) -> str:
        if node.kind != SYM or node.value == "nil":
            raise node.error(f"{form}: expected a variable name, found {node.describe()}")
        name: str = node.value
        check_variable_name(node, name)
        if "." in name:
            raise node.error(f"{form}: '{name}' is not a variable name (no '.' allowed)")
        if name in READ_ONLY and form in ("defvar", "set", "setq"):
            raise node.error(f"{form}: '{name}' is provided by ebb and cannot be changed")
        if name in _OPERATORS or name in SPECIAL_FORMS:
            raise node.error(f"{form}: '{name}' is a built-in function name")
        return name


def binds_variables(nodes: Sequence[Node]) -> bool:
    """Whether evaluating ``nodes`` may run a defvar in the scope they are evaluated in.

    Conservative: any defvar anywhere below counts (also one inside a nested
    let or with, which binds in a scope of its own). Code without one needs
    no scope of its own: nothing in it reads or adds to the innermost scope.
    """
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.kind not in (LIST, BLOCK):
            continue
        items = node.value
        if node.kind == LIST and items and items[0].kind == SYM and items[0].value == "defvar":
            return True
        stack.extend(items)
    return False


def size(node: Node) -> int:
    """Number of nodes in a tree (the step cost of evaluating it once)."""
    if node.kind in (LIST, BLOCK):
        return 1 + sum(size(n) for n in node.value)
    return 1


def check_arity(node: Node, name: str, given: int, lo: int, hi: Optional[int]) -> None:
    if given < lo or (hi is not None and given > hi):
        if hi == lo:
            want = f"exactly {lo}"
        elif hi is None:
            want = f"at least {lo}"
        else:
            want = f"{lo} to {hi}"
        raise node.error(f"'{name}' takes {want} argument(s), given {given}")


def check_variable_name(node: Node, name: str) -> None:
    for part in name.split("."):
        if part.startswith("_"):
            raise node.error(f"'{name}': names starting with '_' are not allowed")
        if not part:
            raise node.error(f"'{name}' is not a valid name")


def check_function_name(node: Node, name: str) -> None:
    check_variable_name(node, name)
    if "." in name:
        raise node.error(f"function name '{name}' must not contain '.'")
    if name in SPECIAL_FORMS or name in _OPERATORS or name == "nil":
        raise node.error(f"'{name}' is built in and cannot be redefined")


def collect_functions(nodes: Sequence[Node], out: Dict[str, Set[int]]) -> None:
    """Find every ``(def name (params) ...)`` anywhere in the program."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.kind not in (LIST, BLOCK):
            continue
        items = node.value
        stack.extend(items)
        if (
            node.kind == LIST
            and len(items) >= 4
            and items[0].kind == SYM
            and items[0].value in ("def", "defun")
            and items[1].kind == SYM
            and items[2].kind == LIST
        ):
            out.setdefault(items[1].value, set()).add(len(items[2].value))


# ------------------------------------------------------- variables, fields ----


def _variable(node: Node, name: str) -> Code:
    def var(ctx: Context) -> Any:
        try:
            return ctx.vars[name][-1]
        except (KeyError, IndexError):
            raise node.error(f"undefined variable '{name}'") from None

    _VARIABLES[var] = name
    return var


def _entity_of(ctx: Context, node: Node, name: str) -> View:
    try:
        value = ctx.vars[name][-1]
    except (KeyError, IndexError):
        raise node.error(f"undefined variable '{name}'") from None
    if value.__class__ is not View:
        raise node.error(f"'{name}' is {type_name(value)}, not the host or a guest")
    view: View = value
    return view


def _dot(node: Node, head: str, attr: str) -> Code:
    full = f"{head}.{attr}"

    def dot(ctx: Context) -> Any:
        try:
            view = ctx.vars[head][-1]
        except (KeyError, IndexError):
            raise node.error(f"undefined variable '{head}'") from None
        if view.__class__ is View:
            if attr in view.field_names:
                return view.latest.get(attr)
            if attr in view.prop_names:
                return view.props.get(attr)
            raise node.error(f"'{full}': {view.describe()} has no field '{attr}'")
        raise node.error(f"'{full}': '{head}' is {type_name(view)}, not the host or a guest")

    _DOTS[dot] = (head, attr)
    return dot


# ------------------------------------------------------------------ methods ----


def _field_arg(node: Node, view: View, method: str, value: Any) -> str:
    if not isinstance(value, str):
        raise node.error(f"{method}: the field name must be a string, got {type_name(value)}")
    if value not in view.field_names:
        raise node.error(f"{method}: {view.describe()} has no field {value!r}")
    return value


def _m_stat(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    (arg,) = codes

    def stat(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
        return view.latest.get(_field_arg(node, view, name, arg(ctx)))

    field_name = constant_value(arg)
    if field_name.__class__ is not str:
        return stat

    # (g.Stat "field"): the common case inline; anything else (not a view,
    # no such field here) goes through the general closure for its error.
    def stat_field(ctx: Context) -> Any:
        stack = ctx.vars.get(obj)
        if stack:
            view = stack[-1]
            if view.__class__ is View and field_name in view.field_names:
                return view.latest.get(field_name)
        return stat(ctx)

    return stat_field


def _m_stat_avg(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    (arg,) = codes

    def stat_avg(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
        return view.entity.stat_avg(_field_arg(node, view, name, arg(ctx)))

    field_name = constant_value(arg)
    if field_name.__class__ is not str:
        return stat_avg

    # (g.StatAvg "field"), as in _m_stat.
    def stat_avg_field(ctx: Context) -> Any:
        stack = ctx.vars.get(obj)
        if stack:
            view = stack[-1]
            if view.__class__ is View and field_name in view.field_names:
                return view.entity.stat_avg(field_name)
        return stat_avg(ctx)

    return stat_avg_field


def _m_prop(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    (arg,) = codes

    def prop(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
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


def _m_control(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    key_code, value_code = codes

    def set_control(view: View, key: str, value: Any) -> Any:
        if value.__class__ not in _NUM_TYPES:
            raise node.error(f"{name} {key!r}: value must be a number, got {show(value)}")
        if value.__class__ is float and not math.isfinite(value):
            raise node.error(f"{name} {key!r}: value must be finite, got {value}")
        if not -MAX_INT <= value <= MAX_INT:  # type: ignore[operator]
            raise node.error(
                f"{name} {key!r}: value {show(value)} is outside -{MAX_INT}..{MAX_INT}"
            )
        # Every control is a whole number (KiB, pages, ms, a mode); the
        # controllers take integers, as MOM's did.
        value = int(value)  # type: ignore[call-overload]
        view.controls[key] = value
        return value

    def control(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
        key = _control_name(node, view, name, key_code(ctx))
        return set_control(view, key, value_code(ctx))

    constant_key = constant_value(key_code)
    if constant_key.__class__ is not str:
        return control

    # (g.Control "name" value): the checks of the name inline, the general
    # closure for the errors.
    def control_key(ctx: Context) -> Any:
        stack = ctx.vars.get(obj)
        if stack:
            view = stack[-1]
            if view.__class__ is View and constant_key in view.control_names:
                return set_control(view, constant_key, value_code(ctx))
        return control(ctx)

    return control_key


def _m_get_control(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    (key_code,) = codes

    def get_control(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
        return view.controls.get(_control_name(node, view, name, key_code(ctx)))

    return get_control


def _store_cells(store: Dict[str, Any], skip: str) -> int:
    """Cells held by a store's variables other than ``skip``."""
    total = 0
    for key, value in store.items():
        if key != skip:
            total += measure(value)[0]
    return total


def _m_set_var(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    key_code, value_code = codes

    def set_var(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
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


def _m_get_var(node: Node, obj: str, name: str, codes: List[Code]) -> Code:
    (key_code,) = codes

    def get_var(ctx: Context) -> Any:
        view = _entity_of(ctx, node, obj)
        key = key_code(ctx)
        if not isinstance(key, str):
            raise node.error(f"{name}: the variable name must be a string, got {show(key)}")
        return view.store.get(key)

    return get_var


_METHOD_BUILDERS: Dict[str, Callable[[Node, str, str, List[Code]], Code]] = {
    "Stat": _m_stat,
    "StatAvg": _m_stat_avg,
    "Prop": _m_prop,
    "Control": _m_control,
    "GetControl": _m_get_control,
    "SetVar": _m_set_var,
    "GetVar": _m_get_var,
}


# ----------------------------------------------------------- user functions ----


def _user_call(node: Node, name: str, args: List[Code]) -> Code:
    nargs = len(args)

    def function_of(ctx: Context) -> Function:
        fn = ctx.funcs.get(name)
        if fn is None:
            raise node.error(
                f"function '{name}' is called before its (def {name} ...) was evaluated"
            )
        if fn.arity != nargs:
            raise node.error(f"'{name}' takes {fn.arity} argument(s), given {nargs}")
        return fn

    def enter(ctx: Context, fn: Function) -> None:
        steps = ctx.steps + fn.cost
        if steps > ctx.step_limit:
            ctx.check_budget(node, steps)
        ctx.steps = steps
        if ctx.depth >= ctx.max_depth:
            raise node.error(f"calls nested deeper than {ctx.max_depth} (runaway recursion?)")

    def run_scoped(ctx: Context, fn: Function, scope: List[str]) -> Any:
        # The body may defvar: give it a scope, and unbind what it bound.
        ctx.scopes.append(scope)
        result = fn.body(ctx)
        ctx.scopes.pop()
        variables = ctx.vars
        for bound in scope:
            variables[bound].pop()
        return result

    # The common arities get their own closure: calls are the hottest path.
    # A body without defvar (fn.scoped false) gets no scope: its parameters
    # are pushed and popped directly.
    if nargs == 0:

        def call0(ctx: Context) -> Any:
            fn = ctx.funcs.get(name)
            if fn is None or fn.arity:
                fn = function_of(ctx)
            steps = ctx.steps + fn.cost
            depth = ctx.depth
            if steps > ctx.step_limit or depth >= ctx.max_depth:
                enter(ctx, fn)  # raises the right error
            ctx.steps = steps
            ctx.depth = depth + 1
            result = run_scoped(ctx, fn, []) if fn.scoped else fn.body(ctx)
            ctx.depth = depth
            return result

        return call0

    if nargs == 1 and args[0] in _VARIABLES:
        (arg0,) = args
        arg_name = _VARIABLES[arg0]

        # (f g), the usual call: the argument read inline.
        def call1_variable(ctx: Context) -> Any:
            fn = ctx.funcs.get(name)
            if fn is None or fn.arity != 1:
                fn = function_of(ctx)
            variables = ctx.vars
            try:
                value = variables[arg_name][-1]
            except (KeyError, IndexError):
                value = arg0(ctx)  # raises the right error
            steps = ctx.steps + fn.cost
            depth = ctx.depth
            if steps > ctx.step_limit or depth >= ctx.max_depth:
                enter(ctx, fn)  # raises the right error
            ctx.steps = steps
            ctx.depth = depth + 1
            param = fn.params[0]
            stack = variables.get(param)
            if stack is None:
                variables[param] = stack = [value]
            else:
                stack.append(value)
            if fn.scoped:
                result = run_scoped(ctx, fn, [param])
            else:
                result = fn.body(ctx)
                stack.pop()
            ctx.depth = depth
            return result

        return call1_variable

    if nargs == 1:
        (arg0,) = args

        def call1(ctx: Context) -> Any:
            fn = ctx.funcs.get(name)
            if fn is None or fn.arity != 1:
                fn = function_of(ctx)
            value = arg0(ctx)
            steps = ctx.steps + fn.cost
            depth = ctx.depth
            if steps > ctx.step_limit or depth >= ctx.max_depth:
                enter(ctx, fn)  # raises the right error
            ctx.steps = steps
            ctx.depth = depth + 1
            param = fn.params[0]
            variables = ctx.vars
            stack = variables.get(param)
            if stack is None:
                variables[param] = stack = [value]
            else:
                stack.append(value)
            if fn.scoped:
                result = run_scoped(ctx, fn, [param])
            else:
                result = fn.body(ctx)
                stack.pop()
            ctx.depth = depth
            return result

        return call1

    if nargs == 2:
        arg0, arg1 = args

        def call2(ctx: Context) -> Any:
            fn = ctx.funcs.get(name)
            if fn is None or fn.arity != 2:
                fn = function_of(ctx)
            value0 = arg0(ctx)
            value1 = arg1(ctx)
            steps = ctx.steps + fn.cost
            depth = ctx.depth
            if steps > ctx.step_limit or depth >= ctx.max_depth:
                enter(ctx, fn)  # raises the right error
            ctx.steps = steps
            ctx.depth = depth + 1
            param0, param1 = fn.params
            variables = ctx.vars
            stack0 = variables.get(param0)
            if stack0 is None:
                variables[param0] = stack0 = [value0]
            else:
                stack0.append(value0)
            stack1 = variables.get(param1)
            if stack1 is None:
                variables[param1] = stack1 = [value1]
            else:
                stack1.append(value1)
            if fn.scoped:
                result = run_scoped(ctx, fn, [param0, param1])
            else:
                result = fn.body(ctx)
                stack0.pop()
                stack1.pop()
            ctx.depth = depth
            return result

        return call2

    def call(ctx: Context) -> Any:
        fn = function_of(ctx)
        values = [a(ctx) for a in args]
        enter(ctx, fn)
        ctx.depth += 1
        variables = ctx.vars
        for p, v in zip(fn.params, values):
            stack = variables.get(p)
            if stack is None:
                variables[p] = [v]
            else:
                stack.append(v)
        result = run_scoped(ctx, fn, list(fn.params))
        ctx.depth -= 1
        return result

    return call


# ---------------------------------------------------------------- operators ----


def _num(node: Node, op: str, value: Any) -> Any:
    if value.__class__ in _NUM_TYPES:
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
    checks_operands = op == "*"

    def build(node: Node, codes: List[Code]) -> Code:
        if len(codes) == 2:
            a, b = codes
            k = constant_value(b)
            if k.__class__ in _NUM_TYPES and not checks_operands:

                def arith_constant(ctx: Context) -> Any:
                    x = a(ctx)
                    if x.__class__ in _NUM_TYPES:
                        r = fn(x, k)
                        if r.__class__ is not int or -MAX_INT <= r <= MAX_INT:
                            return r
                        raise _range_error(node, op, "the result")
                    return _num(node, op, x)

                return arith_constant

            def arith2(ctx: Context) -> Any:
                x = a(ctx)
                y = b(ctx)
                if x.__class__ in _NUM_TYPES and y.__class__ in _NUM_TYPES:
                    return _apply(node, op, fn, x, y)
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

    def div(ctx: Context) -> Any:
        x = _num(node, "/", a(ctx))
        y = _num(node, "/", b(ctx))
        if not y:
            raise node.error(f"division by zero ({show(x)} / {show(y)})")
        return x / y

    return div


def _shift(op: str, left: bool) -> Callable[[Node, List[Code]], Code]:
    def build(node: Node, codes: List[Code]) -> Code:
        a, b = codes

        def shift(ctx: Context) -> Any:
            x = a(ctx)
            y = b(ctx)
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
        k = constant_value(b)
        if k is not NO_VALUE:
            return _compare_constant(node, op, a, k)
        second = _VARIABLES.get(b)
        if second is not None:
            # (op x name): the variable read inline.
            def compare_variable(ctx: Context) -> Any:
                x = a(ctx)
                try:
                    y = ctx.vars[second][-1]
                except (KeyError, IndexError):
                    y = b(ctx)  # raises the right error
                try:
                    return fn(x, y)
                except TypeError:
                    raise node.error(f"'{op}' cannot compare {show(x)} with {show(y)}") from None

            return compare_variable

        def compare(ctx: Context) -> Any:
            x = a(ctx)
            y = b(ctx)
            try:
                # Numbers with numbers, strings with strings: anything else
                # (nil, objects) raises TypeError, reported with the position.
                return fn(x, y)
            except TypeError:
                raise node.error(f"'{op}' cannot compare {show(x)} with {show(y)}") from None

        return compare

    return build


def _compare_constant(node: Node, op: str, a: Code, k: Any) -> Code:
    """``(op x K)`` with a constant K: the comparison inline, no call for K."""

    def fail(x: Any) -> PolicyError:
        return node.error(f"'{op}' cannot compare {show(x)} with {show(k)}")

    if op == "<":

        def lt(ctx: Context) -> Any:
            x = a(ctx)
            try:
                return x < k
            except TypeError:
                raise fail(x) from None

        return lt
    if op == ">":

        def gt(ctx: Context) -> Any:
            x = a(ctx)
            try:
                return x > k
            except TypeError:
                raise fail(x) from None

        return gt
    if op == "<=":

        def le(ctx: Context) -> Any:
            x = a(ctx)
            try:
                return x <= k
            except TypeError:
                raise fail(x) from None

        return le

    def ge(ctx: Context) -> Any:
        x = a(ctx)
        try:
            return x >= k
        except TypeError:
            raise fail(x) from None

    return ge


def _build_eq(negate: bool) -> Callable[[Node, List[Code]], Code]:
    def build(node: Node, codes: List[Code]) -> Code:
        a, b = codes
        k = constant_value(b)
        if k is not NO_VALUE:
            if negate:
                return lambda ctx: a(ctx) != k
            return lambda ctx: a(ctx) == k
        if negate:
            return lambda ctx: a(ctx) != b(ctx)
        return lambda ctx: a(ctx) == b(ctx)

    return build


def _build_and(node: Node, codes: List[Code]) -> Code:
    if len(codes) == 2:
        a, b = codes

        def and2(ctx: Context) -> Any:
            return a(ctx) and b(ctx)

        return and2

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
        dot = _DOTS.get(a)
        default = constant_value(b)
        if dot is not None and default is not NO_VALUE:
            head, attr = dot

            # (or g.field 0), the policies' way to read a field that may be
            # missing, in one call: the read is done inline when the variable
            # holds a view with that field, else by the dot closure (which
            # reads a property or raises the right error).
            def or_field(ctx: Context) -> Any:
                stack = ctx.vars.get(head)
                if stack:
                    view = stack[-1]
                    if view.__class__ is View and attr in view.field_names:
                        return view.latest.get(attr) or default
                return a(ctx) or default

            return or_field

        def or2(ctx: Context) -> Any:
            return a(ctx) or b(ctx)

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
            culprit = next((v for v in values if v.__class__ not in _NUM_TYPES), values[0])
            return node.error(f"'{op}' needs numbers, got {show(culprit)}")

        if len(codes) == 2:
            a, b = codes
            # (max 0 x), (min x 1): a constant operand costs no call. Ties
            # keep the first operand, as Python's min/max do.
            k = constant_value(a)
            if k.__class__ in _NUM_TYPES:

                def constant_first(ctx: Context) -> Any:
                    y: Any = b(ctx)
                    if y.__class__ not in _NUM_TYPES:
                        raise bad([k, y])
                    if smaller:
                        return y if y < k else k
                    return y if y > k else k

                return constant_first
            k = constant_value(b)
            if k.__class__ in _NUM_TYPES:

                def constant_second(ctx: Context) -> Any:
                    x: Any = a(ctx)
                    if x.__class__ not in _NUM_TYPES:
                        raise bad([x, k])
                    if smaller:
                        return k if k < x else x  # type: ignore[operator]
                    return k if k > x else x  # type: ignore[operator]

                return constant_second

            def extreme2(ctx: Context) -> Any:
                x: Any = a(ctx)
                y: Any = b(ctx)
                numbers = x.__class__ in _NUM_TYPES and y.__class__ in _NUM_TYPES
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
            if all(v.__class__ in _NUM_TYPES for v in values) or all(
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
    dots = [_DOTS.get(c) for c in codes]
    if all(d is not None for d in dots):
        reads = [(d[0], d[1], c) for d, c in zip(dots, codes) if d is not None]

        # (valid g.a g.b ...): the field reads inline (see _build_or).
        def valid_fields(ctx: Context) -> Any:
            variables = ctx.vars
            for head, attr, code in reads:
                stack = variables.get(head)
                if stack:
                    view = stack[-1]
                    if view.__class__ is View and attr in view.field_names:
                        if view.latest.get(attr) is None:
                            return False
                        continue
                if code(ctx) is None:
                    return False
            return True

        return valid_fields

    def valid(ctx: Context) -> Any:
        for c in codes:  # noqa: SIM110 (as in null)
            if c(ctx) is None:
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
_OPERATORS: Dict[str, Tuple[int, Optional[int], Callable[[Node, List[Code]], Code]]] = {
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

BUILTIN_NAMES = frozenset(_OPERATORS)
