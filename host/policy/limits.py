"""Every bound of the policy sandbox, in one place (docs/policy.md, "Bounds").

A policy is written by an administrator but read by a daemon that must keep
running whatever it says: every value a policy can make, and the time one
evaluation may take, is bounded here. Breaking a bound is a
:class:`~ebb.host.policy.errors.PolicyError` at the position of the
expression that broke it; the tick then applies no policy controls and the
previous policy and kept variables stay, exactly as for any other policy error.

The bounds are chosen so that no single Python operation the evaluator does
can take long (integers stay machine-sized, lists and strings small), so the
daemon's other threads always get the interpreter, and the clock is read often
enough to stop a long evaluation within its deadline.
"""

from __future__ import annotations

# --- loading ---------------------------------------------------------------------

#: Largest policy file accepted (the whole program is read into memory).
MAX_FILE_BYTES = 1 << 20
#: Deepest nesting of lists and blocks in the text.
MAX_NESTING = 48
#: Longest string literal, in characters.
MAX_STRING_CHARS = 4096
#: Longest number literal, in characters (a 64-bit integer has at most 20 digits).
MAX_NUMBER_CHARS = 64

# --- values ----------------------------------------------------------------------

#: Integers stay within [-MAX_INT, MAX_INT] (63 bits and a sign, the range of a
#: C ``int64`` without its lowest value, so that negation and ``abs`` stay in
#: range). An integer literal, an arithmetic result (``+ - * <<``, ``abs``) or a
#: control value outside it is a policy error; floats are not bounded (they
#: overflow to infinity, which a control refuses).
MAX_INT = (1 << 63) - 1
#: Largest shift of ``<<`` and ``>>``.
MAX_SHIFT = 64
#: Largest list a policy can build (a ``with``), counted in cells: one per
#: element, recursively, with a string counting one cell per
#: STRING_CHARS_PER_CELL characters started. A list holding the same inner
#: list twice counts it twice (that is what printing or storing it costs).
MAX_LIST_CELLS = 1 << 16
STRING_CHARS_PER_CELL = 8
#: Deepest nesting of lists a policy can build.
MAX_LIST_DEPTH = 32

# --- variables kept between ticks (SetVar) ---------------------------------------

#: Variables per host or guest.
MAX_VARS_PER_ENTITY = 256
#: Total size of the variables of one host or guest, in cells (as above).
MAX_STORE_CELLS = 1 << 16

# --- debug output ----------------------------------------------------------------

#: Lines of ``(debug ...)`` kept per evaluation.
MAX_DEBUG_LINES = 1000
#: Characters of one debug line (longer lines are cut, marked with "...").
MAX_DEBUG_LINE_CHARS = 1024
#: Characters of debug output per evaluation; later lines are dropped and one
#: last line says so.
MAX_DEBUG_CHARS = 64 * 1024
#: Characters of a value shown in an error message.
MAX_SHOWN_CHARS = 200

# --- one evaluation --------------------------------------------------------------

#: Steps (node evaluations) per evaluation: STEPS_BASE + STEPS_PER_GUEST x guests.
STEPS_BASE = 100_000
STEPS_PER_GUEST = 5_000
#: Calls nest at most this deep.
MAX_DEPTH = 64
#: Wall time of one evaluation, in seconds.
MAX_EVAL_SECONDS = 1.0
#: The clock is read at least every CLOCK_EVERY_STEPS steps (and at every
#: top-level expression). No step takes long: values are small, and ``min``
#: or ``max`` of a list is charged a step per element; the longest single
#: operation is a comparison of two lists of MAX_LIST_CELLS (about a
#: millisecond), so an evaluation stops well within a second of its deadline.
CLOCK_EVERY_STEPS = 256
