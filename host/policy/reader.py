"""The reader: policy text -> nodes with positions.

MOM's dialect: ``#`` comments to the end of the line; integers, floats
(``.5``, ``1e3``, ``-0.05``), hex ``0x1f``, octal ``0o17``; strings in single or
double quotes (``\\`` escapes ``\\\\ \\" \\' \\n \\t``); symbols of letters, digits,
``_``, ``-`` and ``.``; the operators ``+ - * / < > <= >= == != << >>``;
``( ... )`` lists and ``{ ... }`` blocks. Any other character is an error that
rejects the whole file: nothing is ever skipped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional

from ebb.host.policy.errors import PolicyError
from ebb.host.policy.limits import MAX_INT, MAX_NESTING, MAX_NUMBER_CHARS, MAX_STRING_CHARS

# Kinds of node.
INT = "int"
FLOAT = "float"
STR = "str"
SYM = "sym"
LIST = "list"
BLOCK = "block"


@dataclass(eq=False)
class Node:
    """One datum: an atom (``value`` is its Python value) or a list of nodes."""

    kind: str
    value: Any
    path: str
    line: int
    col: int

    def error(self, message: str) -> PolicyError:
        """A :class:`PolicyError` at this node's position."""
        return PolicyError(self.path, self.line, self.col, message)

    def describe(self) -> str:
        """Short text of the node for messages."""
        if self.kind == SYM:
            return str(self.value)
        if self.kind == STR:
            return repr(self.value)
        if self.kind in (INT, FLOAT):
            return repr(self.value)
        return "(...)" if self.kind == LIST else "{...}"


_SYMBOL_START = re.compile(r"[A-Za-z_]")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")
_NUMBER = re.compile(
    r"""-?(?:
        0[xX][0-9A-Fa-f]+(?![0-9A-Za-z_.])
      | 0[oO][0-7]+(?![0-9A-Za-z_.])
      | (?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![0-9A-Za-z_.])
    )""",
    re.VERBOSE,
)
_NUMBER_LIKE = re.compile(r"-?\.?[0-9][0-9A-Za-z_.]*")
_OPERATORS = ("<=", ">=", "==", "!=", "<<", ">>", "+", "-", "*", "/", "<", ">")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


def read(text: str, path: str) -> List[Node]:
    """Read every top-level datum of a policy file.

    Raises :class:`PolicyError` at the first problem (the file is rejected),
    and nothing else: any other failure is reported at the datum being read.
    """
    reader = _Reader(text, path)
    try:
        return reader.read_all()
    except PolicyError:
        raise
    except Exception as err:  # a reader bug must not escape as a traceback
        raise PolicyError(
            path, reader.token_line, reader.token_col, f"cannot read: {type(err).__name__}: {err}"
        ) from None


class _Reader:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.pos = 0
        self.line = 1
        self.line_start = 0
        # Where the datum being read starts (for errors nothing else places).
        self.token_line = 1
        self.token_col = 1

    def error(
        self, message: str, line: Optional[int] = None, col: Optional[int] = None
    ) -> PolicyError:
        if line is None:
            line = self.line
        if col is None:
            col = self.pos - self.line_start + 1
        return PolicyError(self.path, line, col, message)

    def read_all(self) -> List[Node]:
        # An explicit stack instead of recursion: nesting depth is checked, not
        # discovered by a RecursionError.
        top: List[Node] = []
        stack: List[Node] = []
        closers: List[str] = []
        text = self.text
        n = len(text)
        while True:
            self.skip_blank()
            if self.pos >= n:
                break
            ch = text[self.pos]
            line, col = self.line, self.pos - self.line_start + 1
            self.token_line, self.token_col = line, col
            if ch in "({":
                if len(stack) >= MAX_NESTING:
                    raise self.error(f"nesting deeper than {MAX_NESTING} levels")
                node = Node(LIST if ch == "(" else BLOCK, [], self.path, line, col)
                (stack[-1].value if stack else top).append(node)
                stack.append(node)
                closers.append(")" if ch == "(" else "}")
                self.pos += 1
                continue
            if ch in ")}":
                if not stack:
                    raise self.error(f"unexpected '{ch}' with no open bracket")
                if closers[-1] != ch:
                    opener = stack[-1]
                    raise self.error(
                        f"'{ch}' closes the '{'(' if closers[-1] == ')' else '{'}' opened "
                        f"at {opener.line}:{opener.col}; expected '{closers[-1]}'"
                    )
                stack.pop()
                closers.pop()
                self.pos += 1
                continue
            atom = self.read_atom(line, col)
            (stack[-1].value if stack else top).append(atom)
        if stack:
            opener = stack[-1]
            raise PolicyError(
                self.path,
                opener.line,
                opener.col,
                f"'{'(' if opener.kind == LIST else '{'}' is never closed",
            )
        return top

    def skip_blank(self) -> None:
        text = self.text
        n = len(text)
        while self.pos < n:
            ch = text[self.pos]
            if ch == "\n":
                self.pos += 1
                self.line += 1
                self.line_start = self.pos
            elif ch in " \t\r\f\v":
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                return

    def read_atom(self, line: int, col: int) -> Node:
        text = self.text
        ch = text[self.pos]
        if ch in "\"'":
            return self.read_string(ch, line, col)
        nxt = text[self.pos + 1] if self.pos + 1 < len(text) else ""
        if (
            ch.isdigit()
            or (ch == "." and nxt.isdigit())
            or (
                ch == "-"
                and (nxt.isdigit() or (nxt == "." and text[self.pos + 2 : self.pos + 3].isdigit()))
            )
        ):
            return self.read_number(line, col)
        if _SYMBOL_START.match(ch):
            m = _SYMBOL.match(text, self.pos)
            assert m is not None
            self.pos = m.end()
            return Node(SYM, m.group(), self.path, line, col)
        for op in _OPERATORS:
            if text.startswith(op, self.pos):
                end = self.pos + len(op)
                if end < len(text) and text[end] not in " \t\r\n\f\v(){}#":
                    break
                self.pos = end
                return Node(SYM, op, self.path, line, col)
        shown = repr(ch) if ch.isprintable() and ch != " " else f"U+{ord(ch):04X}"
        raise self.error(f"unexpected character {shown}")

    def read_number(self, line: int, col: int) -> Node:
        text = self.text
        m = _NUMBER.match(text, self.pos)
        if m is None:
            bad = _NUMBER_LIKE.match(text, self.pos)
            word = bad.group() if bad else text[self.pos]
            raise self.error(f"malformed number {word!r}")
        word = m.group()
        if len(word) > MAX_NUMBER_CHARS:
            raise self.error(
                f"number is {len(word)} characters long (at most {MAX_NUMBER_CHARS}; "
                f"integers must be within -{MAX_INT}..{MAX_INT})"
            )
        self.pos = m.end()
        body = word.lstrip("-")
        sign = -1 if word.startswith("-") else 1
        low = body.lower()
        if low.startswith("0x"):
            return self.int_node(word, sign * int(body[2:], 16), line, col)
        if low.startswith("0o"):
            return self.int_node(word, sign * int(body[2:], 8), line, col)
        if "." in body or "e" in low:
            return Node(FLOAT, float(word), self.path, line, col)
        if len(body) > 1 and body.startswith("0"):
            raise self.error(
                f"number {word!r} has a leading zero: write {int(body)} for decimal "
                f"or 0o{body.lstrip('0') or '0'} for octal",
                line,
                col,
            )
        return self.int_node(word, int(word), line, col)

    def int_node(self, word: str, value: int, line: int, col: int) -> Node:
        if not -MAX_INT <= value <= MAX_INT:
            raise self.error(
                f"integer {word} is outside -{MAX_INT}..{MAX_INT} (2^63 - 1); "
                "write a float (1e30) for larger magnitudes",
                line,
                col,
            )
        return Node(INT, value, self.path, line, col)

    def read_string(self, quote: str, line: int, col: int) -> Node:
        text = self.text
        n = len(text)
        i = self.pos + 1
        out: List[str] = []
        while True:
            if i >= n:
                raise self.error("string is never closed", line, col)
            ch = text[i]
            if ch == quote:
                break
            if len(out) >= MAX_STRING_CHARS:
                raise self.error(f"string is longer than {MAX_STRING_CHARS} characters", line, col)
            if ch == "\n":
                self.line += 1
                self.line_start = i + 1
            if ch == "\\":
                if i + 1 >= n:
                    raise self.error("string is never closed", line, col)
                esc = text[i + 1]
                if esc not in _ESCAPES:
                    raise self.error(
                        f"unknown escape '\\{esc}' in string",
                        self.line,
                        i - self.line_start + 1,
                    )
                out.append(_ESCAPES[esc])
                i += 2
                continue
            out.append(ch)
            i += 1
        self.pos = i + 1
        return Node(STR, "".join(out), self.path, line, col)
