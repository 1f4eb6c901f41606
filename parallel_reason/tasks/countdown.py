"""Countdown (as in APR / Stream of Search): combine all N input numbers with
``+ - * /`` to reach a target.

Problems and :func:`solve` / :func:`reachable` keep every intermediate value a
non-negative integer; the verifier accepts any expression over exactly the input
numbers whose exact value is the target, read by a bounded parser (never
``eval``/``exec``), and refuses control tags in answers and non-integer problems.
See docs/design.md#tasks.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from ..format import split_at_first_tag

NAME = "countdown"

#: default problem shape
N_NUMBERS = 4
NUM_RANGE = (1, 99)
TARGET_RANGE = (10, 100)

#: verifier bounds
MAX_ANSWER_CHARS = 200
MAX_NESTING = 16

ANSWER_PREFIX = "Answer:"
_DIGITS = "0123456789"
_OPS = "+-*/"

# ---------------------------------------------------------------------------
# Solver


def combine(a: int, b: int):
    """Legal results of combining ``a`` and ``b``: (value, op, left, right) with the
    larger operand on the left (needed for - and /, kept for + and * too)."""
    hi, lo = (a, b) if a >= b else (b, a)
    out = [(hi + lo, "+", hi, lo), (hi - lo, "-", hi, lo), (hi * lo, "*", hi, lo)]
    if lo != 0 and hi % lo == 0:
        out.append((hi // lo, "/", hi, lo))
    return out


def _splits(key: tuple[int, ...]):
    """Every split of the sorted multiset ``key`` into two non-empty sorted
    sub-multisets (each unordered split once, duplicates of equal numbers removed)."""
    n = len(key)
    seen = set()
    for mask in range(1, (1 << n) - 1):
        if not mask & 1:  # element 0 always on the left: each unordered split once
            continue
        left = tuple(key[i] for i in range(n) if mask >> i & 1)
        right = tuple(key[i] for i in range(n) if not mask >> i & 1)
        if (left, right) not in seen:
            seen.add((left, right))
            yield left, right


@lru_cache(maxsize=1 << 16)
def _values(key: tuple[int, ...]) -> frozenset:
    """Values reachable from the sorted multiset ``key`` using all of it."""
    if len(key) == 1:
        return frozenset(key)
    out: set[int] = set()
    for left, right in _splits(key):
        vr = _values(right)
        for a in _values(left):
            for b in vr:
                out.add(a + b)
                out.add(a - b if a >= b else b - a)
                out.add(a * b)
                if b and a % b == 0:
                    out.add(a // b)
                if a and b % a == 0:
                    out.add(b // a)
    return frozenset(out)


def join_expr(left: str, left_op: str, op: str, right: str, right_op: str) -> str:
    """``left op right`` with the fewest parentheses that keep its value; ``*_op`` is
    the top operator of an operand ("" for a literal)."""
    if op in "*/" and left_op in ("+", "-"):
        left = f"({left})"
    if (
        (op == "-" and right_op in ("+", "-"))
        or (op == "*" and right_op in ("+", "-"))
        or (op == "/" and right_op != "")
    ):
        right = f"({right})"
    return f"{left}{op}{right}"


@lru_cache(maxsize=1 << 14)
def _exprs(key: tuple[int, ...]) -> dict:
    """value -> (expression, top operator) for every value reachable from ``key``.
    Treat the returned dict as read-only (it is cached)."""
    if len(key) == 1:
        return {key[0]: (str(key[0]), "")}
    out: dict[int, tuple[str, str]] = {}
    for left, right in _splits(key):
        er = _exprs(right)
        for a, (ea, oa) in _exprs(left).items():
            for b, (eb, ob) in er.items():
                for value, op, hi, _lo in combine(a, b):
                    if value in out:
                        continue
                    if hi == a:
                        out[value] = (join_expr(ea, oa, op, eb, ob), op)
                    else:
                        out[value] = (join_expr(eb, ob, op, ea, oa), op)
    return out


def reachable(nums: Sequence[int]) -> frozenset:
    """Every value reachable using ALL of ``nums`` under the generation rules."""
    return _values(tuple(sorted(int(x) for x in nums)))


def solve(nums: Sequence[int], target: int) -> str | None:
    """An expression over exactly ``nums`` that evaluates to ``target`` under the
    generation rules, or None when there is none. Exact; memoised over sorted tuples."""
    key = tuple(sorted(int(x) for x in nums))
    if int(target) not in _values(key):
        return None
    return _exprs(key)[int(target)][0]


class CountdownProblem(NamedTuple):
    nums: list
    target: int


def _integer(x, what: str) -> int:
    if isinstance(x, bool) or x is None:
        raise ValueError(f"{what} must be an integer, got {x!r}")
    try:
        if isinstance(x, str):
            return int(x.strip())
        if int(x) == x:  # ints, integral floats and numpy scalars; 2.5 or "x" fail
            return int(x)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ValueError(f"{what} must be an integer, got {x!r}")


def check_problem(nums, target) -> CountdownProblem:
    """``(nums, target)`` as integers; ``ValueError`` saying what is wrong otherwise
    (a non-integer is refused, never truncated)."""
    if isinstance(nums, (str, bytes, dict)) or not hasattr(nums, "__iter__"):
        raise ValueError(f"'nums' must be a list of integers, got {type(nums).__name__} {nums!r}")
    nums = [_integer(x, f"nums[{i}]") for i, x in enumerate(nums)]
    if not nums:
        raise ValueError("'nums' is empty")
    return CountdownProblem(nums, _integer(target, "'target'"))


def make_problem(
    rng: random.Random,
    n_numbers: int = N_NUMBERS,
    num_range: tuple[int, int] = NUM_RANGE,
    target_range: tuple[int, int] = TARGET_RANGE,
) -> CountdownProblem:
    """Sample ``n_numbers`` numbers uniformly in ``num_range`` and a target uniformly
    among the values in ``target_range`` reachable from them (resampling the
    numbers when there is none). Returns ``(nums, target)``."""
    if n_numbers < 2:
        raise ValueError(f"n_numbers must be >= 2, got {n_numbers}")
    lo, hi = target_range
    while True:
        nums = [rng.randint(*num_range) for _ in range(n_numbers)]
        candidates = sorted(v for v in reachable(nums) if lo <= v <= hi)
        if candidates:
            return CountdownProblem(nums, rng.choice(candidates))


# ---------------------------------------------------------------------------
# Prompt and answer extraction


def prompt(nums: Sequence[int], target: int) -> str:
    """The problem as plain text (no chat template)."""
    nums, target = check_problem(nums, target)
    return f"Numbers: {' '.join(str(x) for x in nums)}\nTarget: {target}\n"


def extract_answer(completion: str) -> str | None:
    """The expression after the last ``Answer:`` (rest of that line, stripped); None
    when there is no (non-empty) answer. Control tags are kept: an answer holding
    one is not an expression, and :func:`verify` rejects it."""
    if not isinstance(completion, str):
        return None
    text = completion
    at = text.rfind(ANSWER_PREFIX)
    if at < 0:
        return None
    line = text[at + len(ANSWER_PREFIX) :].split("\n", 1)[0].strip()
    return line or None


# ---------------------------------------------------------------------------
# Verifier


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    value: Fraction | str | None = None  # Countdown: the value reached; math: the extracted answer

    def __bool__(self) -> bool:
        return self.ok


class _Reject(Exception):
    pass


def _tokenize(s: str) -> list[tuple[str, object, int]]:
    """("num", int, pos) and ("op", char, pos) tokens; rejects anything else."""
    toks: list[tuple[str, object, int]] = []
    depth = 0
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == " ":
            i += 1
        elif c in _DIGITS:
            j = i
            while j < n and s[j] in _DIGITS:
                j += 1
            lit = s[i:j]
            if len(lit) > 1 and lit[0] == "0":
                raise _Reject(f"number {lit!r} at position {i} has a leading zero")
            toks.append(("num", int(lit), i))
            i = j
        elif c in "+-*/()":
            if c == "(":
                depth += 1
                if depth > MAX_NESTING:
                    raise _Reject(f"parentheses nested deeper than {MAX_NESTING} at position {i}")
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise _Reject(f"unmatched ')' at position {i}")
            toks.append(("op", c, i))
            i += 1
        else:
            raise _Reject(f"character {c!r} at position {i} is not allowed (only digits, + - * / ( ) and spaces)")
    return toks


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := NUMBER | '(' expr ')'. Evaluates with Fractions while parsing; a
    division by zero is recorded (value None) and reported after a clean parse."""

    def __init__(self, toks, length: int):
        self.toks = toks
        self.i = 0
        self.end = length
        self.literals: list[int] = []
        self.div_zero: int | None = None

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _describe(self, tok) -> str:
        return "end of input" if tok is None else f"{tok[1]!r} at position {tok[2]}"

    def expr(self, depth: int):
        value = self.term(depth)
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "+-":
            self.i += 1
            rhs = self.term(depth)
            if value is not None and rhs is not None:
                value = value + rhs if tok[1] == "+" else value - rhs
            else:
                value = None
        return value

    def term(self, depth: int):
        value = self.factor(depth)
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "*/":
            self.i += 1
            rhs = self.factor(depth)
            if value is None or rhs is None:
                value = None
            elif tok[1] == "*":
                value = value * rhs
            elif rhs == 0:
                if self.div_zero is None:
                    self.div_zero = tok[2]
                value = None
            else:
                value = value / rhs
        return value

    def factor(self, depth: int):
        tok = self.peek()
        if tok is None:
            raise _Reject("expression ends unexpectedly (expected a number or '(')")
        if tok[0] == "num":
            self.i += 1
            self.literals.append(tok[1])
            return Fraction(tok[1])
        if tok[1] == "(":
            if depth >= MAX_NESTING:  # also bounded by the tokenizer; never recurse deeper
                raise _Reject(f"parentheses nested deeper than {MAX_NESTING} at position {tok[2]}")
            self.i += 1
            value = self.expr(depth + 1)
            close = self.peek()
            if close is None or close[1] != ")":
                raise _Reject(f"expected ')' but found {self._describe(close)}")
            self.i += 1
            return value
        if tok[1] == "-":
            raise _Reject(f"unary minus at position {tok[2]} is not allowed")
        raise _Reject(f"unexpected {tok[1]!r} at position {tok[2]} (expected a number or '(')")

    def parse(self):
        value = self.expr(0)
        tok = self.peek()
        if tok is not None:
            raise _Reject(f"unexpected {tok[1]!r} at position {tok[2]}")
        return value


def _times(k: int) -> str:
    return {1: "once", 2: "twice"}.get(k, f"{k} times")


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _number_problems(literals: list[int], nums: Sequence[int]) -> list[str]:
    used, given = Counter(literals), Counter(nums)
    out: list[str] = []
    for v in dict.fromkeys(literals):
        if given[v] == 0:
            out.append(f"uses {v} which is not available")
        elif used[v] > given[v]:
            out.append(f"uses {v} {_times(used[v])} but it is given {_times(given[v])}")
    for v in dict.fromkeys(nums):
        if used[v] == 0:
            out.append(f"does not use {v}")
        elif used[v] < given[v]:
            out.append(f"uses {v} {_times(used[v])} but it is given {_times(given[v])}")
    return out


def verify(answer_or_completion: str | None, nums: Sequence[int], target: int) -> Verdict:
    """Check an answer expression (or a whole completion, whose last ``Answer:`` line
    is read) against the problem. Never raises on any string input; ``ValueError``
    when the problem itself is not integers (:func:`check_problem`)."""
    nums, target = check_problem(nums, target)
    if answer_or_completion is None:
        return Verdict(False, "no answer")
    if not isinstance(answer_or_completion, str):
        return Verdict(False, f"answer is a {type(answer_or_completion).__name__}, not a string")
    text = answer_or_completion
    if ANSWER_PREFIX in text:
        expr = extract_answer(text)
        if expr is None:
            return Verdict(False, "empty answer after 'Answer:'")
    else:
        expr = text.strip()
        if "\n" in expr:
            return Verdict(False, "no 'Answer:' line found")
    if not expr:
        return Verdict(False, "empty answer")
    before, tag = split_at_first_tag(expr)
    if tag:
        return Verdict(False, f"the answer holds the control tag {tag[: tag.index('>') + 1]} at position {len(before)}")
    if len(expr) > MAX_ANSWER_CHARS:
        return Verdict(False, f"answer is {len(expr)} characters long, over the limit of {MAX_ANSWER_CHARS}")
    try:
        parser = _Parser(_tokenize(expr), len(expr))
        value = parser.parse()
    except _Reject as e:
        return Verdict(False, str(e))
    if parser.div_zero is not None:
        return Verdict(False, f"division by zero at position {parser.div_zero}")
    problems = _number_problems(parser.literals, nums)
    if problems:
        return Verdict(False, "; ".join(problems), value)
    if value != target:
        return Verdict(False, f"evaluates to {_fmt(value)}, target is {target}", value)
    return Verdict(True, "correct", value)


def reward(completion: str, nums: Sequence[int], target: int) -> float:
    """1.0 when the completion's ``Answer:`` line is a correct expression, else 0.0."""
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    return 1.0 if verify(answer, nums, target).ok else 0.0


__all__ = [
    "NAME",
    "CountdownProblem",
    "Verdict",
    "check_problem",
    "combine",
    "extract_answer",
    "join_expr",
    "make_problem",
    "prompt",
    "reachable",
    "reward",
    "solve",
    "verify",
]
