"""Loading policy files into a checked program, and evaluating it each tick."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ebb.host.policy.entity import PolicyInput
from ebb.host.policy.errors import PolicyError, PolicyLoadError
from ebb.host.policy.forms import Compiler, collect_functions
from ebb.host.policy.limits import (
    MAX_DEPTH,
    MAX_EVAL_SECONDS,
    MAX_FILE_BYTES,
    STEPS_BASE,
    STEPS_PER_GUEST,
)
from ebb.host.policy.reader import Node, read
from ebb.host.policy.runtime import Compiled, Context, View

LOG = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "MAX_DEPTH",
    "MAX_EVAL_SECONDS",
    "MAX_FILE_BYTES",
    "STEPS_BASE",
    "STEPS_PER_GUEST",
    "Evaluation",
    "PolicyRunner",
    "Program",
    "load_policy_dir",
    "load_policy_files",
    "load_policy_texts",
    "policy_files_in",
    "to_json_value",
]


@dataclass
class Program:
    """A loaded, checked policy: every file read and compiled, in order.

    Build one with :func:`load_policy_files` or :func:`load_policy_dir`;
    evaluate it through a :class:`PolicyRunner` (which owns the state that
    persists between ticks).
    """

    paths: Tuple[str, ...]
    compiled: Compiled
    functions: Dict[str, Any] = field(default_factory=dict)

    def evaluate(
        self,
        inp: PolicyInput,
        host_store: Optional[Dict[str, Any]] = None,
        guest_stores: Optional[Mapping[str, Dict[str, Any]]] = None,
        max_steps: Optional[int] = None,
        max_depth: int = MAX_DEPTH,
        max_seconds: float = MAX_EVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> Evaluation:
        """Evaluate once. ``*_store`` are the SetVar dictionaries, changed in place.

        Raises :class:`PolicyError` (with the position of the failing
        expression) when the policy fails at run time, including when it
        breaks a bound of :mod:`ebb.host.policy.limits` (steps, depth, wall
        time ``max_seconds`` read from ``clock``, sizes of values).
        """
        if max_steps is None:
            max_steps = STEPS_BASE + STEPS_PER_GUEST * len(inp.guests)
        compiled = self.compiled
        # The variables' stacks are the program's (see Compiled): one
        # evaluation at a time, each starting and ending with them empty.
        with compiled.lock:
            compiled.reset()
            try:
                ctx = Context(max_steps, max_depth, max_seconds, clock, compiled.stacks)
                return self._evaluate(ctx, inp, host_store, guest_stores)
            finally:
                compiled.reset()

    def _evaluate(
        self,
        ctx: Context,
        inp: PolicyInput,
        host_store: Optional[Dict[str, Any]],
        guest_stores: Optional[Mapping[str, Dict[str, Any]]],
    ) -> Evaluation:
        host_view = View(inp.host, True, host_store if host_store is not None else {})
        stores = guest_stores or {}
        guest_views = [View(g, False, {}) for g in inp.guests]
        for view in guest_views:
            store = stores.get(view.name)
            if store:
                view.store = store
        ctx.bind_global("Host", host_view)
        ctx.bind_global("Guests", guest_views)
        results: List[Any] = []
        node: Optional[Node] = None
        try:
            for code, cost, node in self.compiled.exprs:
                ctx.steps += cost
                ctx.check_budget(node, ctx.steps)
                results.append(code(ctx))
        except RecursionError:
            assert node is not None
            raise node.error("evaluation nested too deeply") from None
        except PolicyError:
            raise
        except Exception as err:  # a bug in ebb, not in the policy: still name the place
            assert node is not None
            LOG.exception("internal error evaluating %s:%d:%d", node.path, node.line, node.col)
            raise node.error(
                f"internal error while evaluating: {type(err).__name__}: {err}"
            ) from err
        return Evaluation(
            results=results,
            host_controls=dict(host_view.controls),
            guest_controls={v.name: v.controls for v in guest_views},
            debug=ctx.debug,
            host_vars=host_view.store,
            guest_vars={v.name: v.store for v in guest_views if v.store},
        )


@dataclass
class Evaluation:
    """The outcome of one evaluation.

    ``results``: the value of each top-level expression, in order (policy
    values: None for nil, bool, int, float, str, list; a host or guest object
    shows as "<Host>"/"<Guest NAME>" through :func:`to_json_value`).
    ``host_controls``: control name -> int. ``guest_controls``: guest name ->
    {control name -> int}, with an entry (maybe empty) for every guest.
    ``debug``: lines produced by ``(debug ...)``, each prefixed with its position.
    """

    results: List[Any]
    host_controls: Dict[str, int]
    guest_controls: Dict[str, Dict[str, int]]
    debug: List[str] = field(default_factory=list)
    host_vars: Dict[str, Any] = field(default_factory=dict)
    guest_vars: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def proposed_targets(self) -> Dict[str, Optional[int]]:
        """guest name -> ``balloon_target`` the policy set, or None (for the governor)."""
        return {name: c.get("balloon_target") for name, c in self.guest_controls.items()}

    def to_json(self) -> Dict[str, Any]:
        """The ``ebbctl policy eval`` shape: results and controls, JSON-ready."""
        return {
            "results": [to_json_value(r) for r in self.results],
            "controls": {
                "host": dict(self.host_controls),
                "guests": {name: dict(c) for name, c in self.guest_controls.items()},
            },
        }


def to_json_value(value: Any) -> Any:
    """A policy value as JSON: nil -> None, booleans stay booleans, a with -> list."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    if isinstance(value, View):
        return repr(value)
    return str(value)


# ------------------------------------------------------------------ loading ----


def policy_files_in(directory: PathLike) -> List[Path]:
    """The ``*.policy`` files of a directory, in name order."""
    d = Path(directory)
    return sorted(
        (p for p in d.iterdir() if p.suffix == ".policy" and p.is_file()), key=lambda p: p.name
    )


def _expand(paths: Iterable[PathLike]) -> Tuple[List[Path], List[PolicyError]]:
    files: List[Path] = []
    errors: List[PolicyError] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = policy_files_in(p)
            if not found:
                errors.append(PolicyError(str(p), 0, 0, "directory has no *.policy files"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            errors.append(PolicyError(str(p), 0, 0, "no such file or directory"))
    return files, errors


def _read_text(path: Path) -> str:
    name = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise PolicyError(name, 0, 0, f"cannot read: {err.strerror or err}") from err
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(name, 0, 0, f"file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise PolicyError(name, line, col, "not valid UTF-8 text") from None


def load_policy_texts(sources: Sequence[Tuple[str, str]]) -> Program:
    """Load ``(path, text)`` pairs as one program (paths are used in messages).

    Raises :class:`PolicyLoadError` listing every error found.
    """
    errors: List[PolicyError] = []
    files: List[Tuple[str, List[Node]]] = []
    for path, text in sources:
        try:
            files.append((path, read(text, path)))
        except PolicyError as err:
            errors.append(err)
    functions: Dict[str, Any] = {}
    defs: Dict[str, int] = {}
    for _, nodes in files:
        collect_functions(nodes, functions, defs)
    compiler = Compiler(functions, defs)
    program_exprs = Compiled(stacks=compiler.program.stacks)
    for path, nodes in files:
        try:
            part = compiler.compile_top(nodes)
        except Exception as err:  # compile_top places its own errors
            # Not a policy mistake the compiler knows: still a load error with
            # a place, never a traceback that takes the daemon down.
            LOG.exception("internal error compiling %s", path)
            errors.append(PolicyError(path, 0, 0, f"cannot load: {type(err).__name__}: {err}"))
            continue
        program_exprs.exprs.extend(part.exprs)
    errors.extend(compiler.errors)
    if errors:
        # Report in file order, then by position, as an editor would list them.
        file_order = {path: i for i, (path, _) in enumerate(sources)}
        errors.sort(key=lambda e: (file_order.get(e.path, -1), e.line, e.col))
        raise PolicyLoadError(errors)
    return Program(paths=tuple(p for p, _ in sources), compiled=program_exprs, functions=functions)


def load_policy_files(paths: Iterable[PathLike]) -> Program:
    """Load files (a directory stands for its ``*.policy`` files) as one program.

    Files are evaluated in the order given. Raises :class:`PolicyLoadError`
    listing every error of every file.
    """
    try:
        files, errors = _expand(paths)
    except OSError as err:  # an unreadable directory
        raise PolicyLoadError(
            [PolicyError(str(err.filename or "<policy>"), 0, 0, f"cannot read: {err.strerror}")]
        ) from None
    sources: List[Tuple[str, str]] = []
    for f in files:
        try:
            sources.append((str(f), _read_text(f)))
        except PolicyError as err:
            errors.append(err)
    try:
        program = load_policy_texts(sources)
    except PolicyLoadError as err:
        errors.extend(err.errors)
    if errors:
        raise PolicyLoadError(errors)
    return program


def load_policy_dir(directory: PathLike) -> Program:
    """Load a directory's ``*.policy`` files, in name order, as one program."""
    return load_policy_files([directory])


# ------------------------------------------------------------------- runner ----


class PolicyRunner:
    """Keeps the last good program and the ``SetVar`` values between ticks.

    ``reload`` swaps the program only when the new one loads; otherwise the
    previous program stays in force and the errors (naming the file) are
    returned. ``evaluate`` runs the program on one tick's input; variables set
    with ``SetVar`` are kept only when the whole evaluation succeeds.
    """

    def __init__(self, program: Optional[Program] = None) -> None:
        self.program: Optional[Program] = program
        self.source: Optional[Tuple[str, ...]] = None
        self._host_vars: Dict[str, Any] = {}
        self._guest_vars: Dict[str, Dict[str, Any]] = {}

    def reload(self, source: Union[PathLike, Sequence[PathLike]]) -> List[PolicyError]:
        """Load a directory or list of files; returns the errors ([] on success)."""
        if isinstance(source, (str, os.PathLike)):
            paths: List[PathLike] = [source]
        else:
            paths = list(source)
        try:
            program = load_policy_files(paths)
        except PolicyLoadError as err:
            return self._failed(err.errors)
        except Exception as err:  # any failure keeps the last good policy
            LOG.exception("internal error loading the policy")
            where = str(paths[0]) if paths else "<policy>"
            return self._failed(
                [PolicyError(where, 0, 0, f"cannot load: {type(err).__name__}: {err}")]
            )
        self.program = program
        self.source = tuple(str(p) for p in paths)
        LOG.info("policy loaded: %s", ", ".join(program.paths) or "(empty)")
        return []

    def _failed(self, errors: List[PolicyError]) -> List[PolicyError]:
        if self.program is not None:
            LOG.error(
                "policy reload failed; keeping the previous policy (%s)",
                ", ".join(self.program.paths),
            )
        for e in errors:
            LOG.error("%s", e)
        return errors

    def evaluate(self, inp: PolicyInput) -> Evaluation:
        """Evaluate the current program.

        Raises PolicyError when nothing is loaded or the policy fails at run time.
        """
        if self.program is None:
            raise PolicyError("<policy>", 0, 0, "no policy loaded")
        host_store = dict(self._host_vars)
        # Copies, so that a failed evaluation leaves the kept values untouched.
        guest_stores = {name: dict(store) for name, store in self._guest_vars.items()}
        evaluation = self.program.evaluate(inp, host_store, guest_stores)
        # Commit SetVar only after success; forget guests that are gone.
        self._host_vars = evaluation.host_vars
        self._guest_vars = {n: v for n, v in evaluation.guest_vars.items() if v}
        return evaluation

    def variables(self) -> Dict[str, Any]:
        """The kept SetVar values: {"host": {...}, "guests": {name: {...}}} (for status/trace)."""
        return {
            "host": dict(self._host_vars),
            "guests": {k: dict(v) for k, v in self._guest_vars.items()},
        }
