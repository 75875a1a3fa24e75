"""The compiler: nodes -> Python closures, with every static check done once.

A policy is compiled when it is loaded, not interpreted from its text each
tick: each node becomes a closure taking the evaluation context, special forms
(here), operators (:mod:`ebb.host.policy.operators`) and methods
(:mod:`ebb.host.policy.methods`) are resolved by name here (never at run
time), and everything a load can catch is caught here with its position:
unknown functions, wrong arity, malformed forms, fields and controls that do
not exist, names outside the sandbox. Nothing here generates or executes
Python source: the closures are the evaluator.

Variables are dynamically scoped (a function sees its caller's variables, as in
MOM). Each variable name of the program has one stack of values ("shallow
binding", see :class:`~ebb.host.policy.runtime.Compiled`), held by the
closures that read or bind it, so a read is one index however deep the call
chain is. Variables and constants are read through their slot (see
:func:`~ebb.host.policy.runtime.slot_of`) by ``if``, calls and the operators,
without calling their closures. A function defined once in the program is
resolved here: its call sites hold it.
"""

from __future__ import annotations

from typing import Any, Callable, Container, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ebb.host.policy import fields as F
from ebb.host.policy.errors import PolicyError
from ebb.host.policy.methods import METHOD_BUILDERS, dot
from ebb.host.policy.operators import OPERATORS
from ebb.host.policy.reader import BLOCK, FLOAT, INT, LIST, STR, SYM, Node
from ebb.host.policy.runtime import (
    NUM_TYPES,
    Code,
    Compiled,
    Context,
    Function,
    ListBuilder,
    constant,
    run_in_scope,
    slot_of,
    type_name,
    variable,
)

SPECIAL_FORMS = frozenset({"defvar", "set", "setq", "def", "defun", "let", "if", "with"})
READ_ONLY = frozenset({"Host", "Guests"})


class Compiler:
    """Compiles the nodes of a program; collects errors instead of stopping at the first."""

    def __init__(self, functions: Dict[str, Set[int]], defs: Dict[str, int]) -> None:
        #: name -> set of arities of every (def ...) in the whole program.
        self.functions = functions
        #: name -> how many (def ...) of it the program has.
        self.defs = defs
        #: The function of each name defined once, held by its call sites.
        self.known: Dict[str, Function] = {}
        self.errors: List[PolicyError] = []
        #: The value stack of every variable name (see Compiled).
        self.program = Compiled()
        for name in READ_ONLY:
            self.program.stack(name)

    def stack(self, name: str) -> List[Any]:
        return self.program.stack(name)

    # -- entry points

    def compile_top(self, nodes: Sequence[Node]) -> Compiled:
        out = Compiled(stacks=self.program.stacks)
        for node in nodes:
            try:
                out.exprs.append((self.expr(node), size(node), node))
            except PolicyError as err:
                self.errors.append(err)
        return out

    # -- dispatch

    def expr(self, node: Node) -> Code:
        """The closure for a node."""
        kind = node.kind
        if kind in (INT, FLOAT, STR):
            return constant(node.value)
        if kind == SYM:
            return self.symbol(node)
        if kind == BLOCK:
            return self.block(node, node.value)
        return self.call(node)

    def exprs(self, nodes: Sequence[Node]) -> List[Code]:
        codes: List[Code] = []
        failed: Optional[PolicyError] = None
        for n in nodes:
            try:
                codes.append(self.expr(n))
            except PolicyError as err:
                # Keep going so one load reports every independent error.
                if failed is not None:
                    self.errors.append(failed)
                failed = err
        if failed is not None:
            raise failed
        return codes

    # -- atoms

    def symbol(self, node: Node) -> Code:
        name: str = node.value
        if name == "nil":
            return constant(None)
        if name in F.METHODS or name in OPERATORS or name in SPECIAL_FORMS:
            raise node.error(f"'{name}' is a function, not a value; call it as ({name} ...)")
        if "." not in name:
            check_variable_name(node, name)
            return variable(node, name, self.stack(name))
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
        return dot(node, head, attr, self.stack(head))

    # -- lists

    def block(self, node: Node, items: Sequence[Node]) -> Code:
        codes = self.exprs(items)
        if not codes:
            return constant(None)
        if len(codes) == 1:
            return codes[0]
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
        op = OPERATORS.get(name)
        if op is not None:
            lo, hi, build = op
            check_arity(head, name, len(args), lo, hi)
            return build(head, self.exprs(args))
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
        known = self.known_function(name, head) or Function(name, (), constant(None), 0, head)
        return user_call(head, name, self.exprs(args), known)

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
        return METHOD_BUILDERS[method](head, obj, name, self.exprs(args), self.stack(obj))

    # -- special forms

    def form_defvar(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        check_arity(head, "defvar", len(args), 2, 2)
        name = self.binding_name(args[0], "defvar")
        value = self.expr(args[1])
        stack = self.stack(name)

        def defvar(ctx: Context) -> Any:
            val = value(ctx)
            scope = ctx.scopes[-1]
            if name in scope:
                return stack[-1]
            scope.append(name)
            stack.append(val)
            return val

        return defvar

    def form_set(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        form = head.value
        check_arity(head, form, len(args), 2, 2)
        name = self.binding_name(args[0], form)
        value = self.expr(args[1])
        target = args[0]
        stack = self.stack(name)

        def set_(ctx: Context) -> Any:
            val = value(ctx)
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
        cost = sum(size(b) for b in body_nodes) + 1
        stacks = tuple(self.stack(p) for p in params)
        scoped = binds_variables(body_nodes)
        fn = self.known_function(fname, name_node) or Function(fname, (), body, 0, name_node)
        fn.params, fn.body, fn.cost, fn.node = tuple(params), body, cost, name_node
        fn.scoped, fn.stacks, fn.arity = scoped, stacks, len(params)

        def define(ctx: Context) -> Any:
            ctx.funcs[fname] = fn
            fn.defined_in = ctx
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
        # Whether anything inside may defvar in the let's scope (see binds_variables).
        scoped = binds_variables(body_nodes) or any(
            binds_variables([b.value[1]]) for b in bindings_node.value
        )
        pushes = [(self.stack(bname), bname, code) for bname, code in bindings]

        def let(ctx: Context) -> Any:
            scope: List[str] = []
            if scoped:
                ctx.scopes.append(scope)
            # Sequential, as in MOM: a later binding sees the earlier ones.
            for stack, bname, code in pushes:
                stack.append(code(ctx))
                scope.append(bname)
            if not scoped:
                result = body(ctx)
                for stack, _, _ in pushes:
                    stack.pop()
                return result
            ctx.scopes.pop()
            return run_in_scope(ctx, body, scope)

        return let

    def form_if(self, node: Node, head: Node, args: Sequence[Node]) -> Code:
        if len(args) != 3:
            raise head.error(
                f"(if condition then else) needs exactly 3 arguments, given {len(args)}"
            )
        cond, yes, no = self.exprs(args)
        sc, sy, sn = slot_of(cond), slot_of(yes), slot_of(no)

        def if_(ctx: Context) -> Any:
            if sc[-1] if sc else cond(ctx):
                return sy[-1] if sy else yes(ctx)
            return sn[-1] if sn else no(ctx)

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
        stack = self.stack(var)
        # Without a defvar inside, the body needs no scope: push and pop the item only.
        scoped = binds_variables(body_nodes)

        def with_(ctx: Context) -> Any:
            seq = items(ctx)
            if not isinstance(seq, list):
                raise list_node.error(f"with: expected a list such as Guests, got {type_name(seq)}")
            builder = ListBuilder(head)
            keep = builder.items.append
            scalars = 0
            for item in seq:
                steps = ctx.steps + cost
                if steps > ctx.step_limit:
                    ctx.check_budget(head, steps)
                ctx.steps = steps
                stack.append(item)
                if scoped:
                    value = run_in_scope(ctx, body, [var])
                else:
                    value = body(ctx)
                    stack.pop()
                keep(value)
                if value.__class__ in NUM_TYPES or value is None:
                    scalars += 1
                else:
                    builder.add(value)
            return builder.done(scalars)

        return with_

    def known_function(self, name: str, node: Node) -> Optional[Function]:
        """The one Function of a name defined once in the program (filled in by its def)."""
        if self.defs.get(name) != 1:
            return None
        fn = self.known.get(name)
        if fn is None:
            fn = self.known[name] = Function(name, (), constant(None), 0, node)
        return fn

    def binding_name(self, node: Node, form: str) -> str:
        if node.kind != SYM or node.value == "nil":
            raise node.error(f"{form}: expected a variable name, found {node.describe()}")
        name: str = node.value
        check_variable_name(node, name)
        if "." in name:
            raise node.error(f"{form}: '{name}' is not a variable name (no '.' allowed)")
        if name in READ_ONLY and form in ("defvar", "set", "setq"):
            raise node.error(f"{form}: '{name}' is provided by ebb and cannot be changed")
        if name in OPERATORS or name in SPECIAL_FORMS:
            raise node.error(f"{form}: '{name}' is a built-in function name")
        return name


def lists_in(nodes: Sequence[Node]) -> Iterator[Node]:
    """Every list and block at or below ``nodes`` (an explicit stack: no recursion)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.kind in (LIST, BLOCK):
            stack.extend(node.value)
            yield node


def calls_to(node: Node, names: Container[str]) -> bool:
    """Whether ``node`` is a list ``(name ...)`` with ``name`` in ``names``."""
    items = node.value
    return node.kind == LIST and bool(items) and items[0].kind == SYM and items[0].value in names


def binds_variables(nodes: Sequence[Node]) -> bool:
    """Whether evaluating ``nodes`` may run a defvar in the scope they are evaluated in.

    Conservative: any defvar anywhere below counts (also one inside a nested
    let or with, which binds in a scope of its own). Code without one needs
    no scope of its own: nothing in it reads or adds to the innermost scope.
    """
    return any(calls_to(node, ("defvar",)) for node in lists_in(nodes))


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
    if name in SPECIAL_FORMS or name in OPERATORS or name == "nil":
        raise node.error(f"'{name}' is built in and cannot be redefined")


def collect_functions(
    nodes: Sequence[Node], out: Dict[str, Set[int]], defs: Dict[str, int]
) -> None:
    """Find every ``(def name (params) ...)`` anywhere in the program.

    ``out`` gets each name's arities, ``defs`` how many defs it has.
    """
    for node in lists_in(nodes):
        items = node.value
        if (
            calls_to(node, ("def", "defun"))
            and len(items) >= 4
            and items[1].kind == SYM
            and items[2].kind == LIST
        ):
            out.setdefault(items[1].value, set()).add(len(items[2].value))
            defs[items[1].value] = defs.get(items[1].value, 0) + 1


# --- user functions ------------------------------------------------------------


def user_call(node: Node, name: str, args: List[Code], known: Function) -> Code:
    """A call of a user function (the one its last evaluated def made).

    ``known``: the one function of a name defined once, taken without a
    lookup once its def has run in this evaluation (for a name defined more
    than once, a stand-in whose def never runs: the call looks the name up).
    """
    nargs = len(args)
    reads = [(slot_of(arg), arg) for arg in args]
    one = nargs == 1
    slot, arg = reads[0] if reads else ((), constant(None))

    def function_of(ctx: Context) -> Function:
        fn = ctx.funcs.get(name)
        if fn is None:
            raise node.error(
                f"function '{name}' is called before its (def {name} ...) was evaluated"
            )
        if fn.arity != nargs:
            raise node.error(f"'{name}' takes {fn.arity} argument(s), given {nargs}")
        return fn

    def call(ctx: Context) -> Any:
        fn = known
        if fn.defined_in is not ctx:
            fn = function_of(ctx)
        # All arguments first (in the caller's scope), then bind them.
        if one:
            value = slot[-1] if slot else arg(ctx)
        else:
            values = []
            for s, a in reads:
                values.append(s[-1] if s else a(ctx))
        steps = ctx.steps + fn.cost
        if steps > ctx.step_limit:
            ctx.check_budget(node, steps)
        ctx.steps = steps
        depth = ctx.depth
        if depth >= ctx.max_depth:
            raise node.error(f"calls nested deeper than {ctx.max_depth} (runaway recursion?)")
        ctx.depth = depth + 1
        if one and not fn.scoped:
            # The usual call: one parameter, and no defvar in the body.
            stack = fn.stacks[0]
            stack.append(value)
            result = fn.body(ctx)
            stack.pop()
        else:
            result = run_bound(ctx, fn, [value] if one else values)
        ctx.depth = depth
        return result

    return call


def run_bound(ctx: Context, fn: Function, values: List[Any]) -> Any:
    """Run ``fn``'s body with its parameters bound to ``values``, then unbind them."""
    stacks = fn.stacks
    for stack, value in zip(stacks, values):
        stack.append(value)
    if fn.scoped:
        # The body may defvar: it gets a scope, and what it binds is unbound too.
        return run_in_scope(ctx, fn.body, list(fn.params))
    result = fn.body(ctx)
    for stack in stacks:
        stack.pop()
    return result
