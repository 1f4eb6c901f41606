"""The fork/join trajectory grammar: the one definition of the control tags, parsing,
rendering and validation.

A completion parses to a :class:`Trajectory` of text parts and blocks
(:class:`Block`) whose threads may nest blocks. :func:`parse` is strict,
:func:`parse_lenient` never raises and returns :class:`Problem` records with
offsets, :func:`parse_ids` reads token ids; ``render(parse(t)) == t``. Parsing is
linear-time and nests at most :data:`MAX_NESTING` deep. See docs/design.md#grammar.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any, Union

# ---------------------------------------------------------------------------
# The tags: the one source of truth.
PARALLEL_OPEN, PARALLEL_CLOSE = "<Parallel>", "</Parallel>"
OUTLINES_OPEN, OUTLINES_CLOSE = "<Outlines>", "</Outlines>"
OUTLINE_OPEN, OUTLINE_CLOSE = "<Outline>", "</Outline>"
THREAD_OPEN, THREAD_CLOSE = "<Thread>", "</Thread>"
#: marks the start of a thread's result: the rest of the thread, up to ``</Thread>``, is
#: what a ``summary`` join shows the continuation (docs/design.md#joins). At most one per
#: thread, in the thread's own text (not in a nested block), with no block after it.
RESULT = "<Result>"

#: All control tags, in a fixed order (this order is the order they are added to a tokenizer).
CONTROL_TAGS: tuple[str, ...] = (
    PARALLEL_OPEN,
    PARALLEL_CLOSE,
    OUTLINES_OPEN,
    OUTLINES_CLOSE,
    OUTLINE_OPEN,
    OUTLINE_CLOSE,
    THREAD_OPEN,
    THREAD_CLOSE,
)

#: Tags a tokenizer gets besides :data:`CONTROL_TAGS`: optional in a tokenizer (models
#: trained before the tag existed decode without it), required by the ``summary`` join.
OPTIONAL_TAGS: tuple[str, ...] = (RESULT,)
#: every tag a new tokenizer gets, in the order they are added
ALL_TAGS: tuple[str, ...] = CONTROL_TAGS + OPTIONAL_TAGS

#: Canonical separators, used when a block is built in code rather than parsed.
CANONICAL_PRE_OUTLINES = "\n"
CANONICAL_THREAD_SEP = "\n"

#: deepest block nesting the parser builds (real trajectories nest a few levels)
MAX_NESTING = 64

_TAG_RE = re.compile(r"</?(?:Parallel|Outlines|Outline|Thread)>|<Result>")
_HEADER_RE = re.compile(r"(\d+):")
# tags that end an outline even when its "</Outline>" is missing
_OUTLINE_STOP = ("</Outlines>", "<Outline>", "</Parallel>", "<Thread>")

Piece = str | tuple  # text, or a tuple of token ids when parsed from ids
Part = Union[str, tuple, "Block"]


@dataclass
class Thread:
    """One thread: ``<Thread>`` + header (``"1:"``) + parts + ``</Thread>``."""

    header: Piece
    parts: list = field(default_factory=list)
    closed: bool = True

    @property
    def number(self) -> int | None:
        """The number in the header, or None when the header is missing."""
        if isinstance(self.header, str):
            m = _HEADER_RE.fullmatch(self.header)
            return int(m.group(1)) if m else None
        return None

    @property
    def result(self) -> str | None:
        """The thread's result: its text after :data:`RESULT` (None without one)."""
        last = self.parts[-1] if self.parts else None
        if isinstance(last, str) and RESULT in last:
            return last.rsplit(RESULT, 1)[1]
        return None


@dataclass
class Block:
    """A ``<Parallel>`` block. ``outline_seps`` has one more entry than ``outlines``
    (before each outline and before ``</Outlines>``); ``thread_seps`` has one more
    entry than ``threads`` (before each ``<Thread>`` and before ``</Parallel>``)."""

    outlines: list
    threads: list
    pre_outlines: Piece = CANONICAL_PRE_OUTLINES
    # None (the default) is replaced by canonical separators in __post_init__: always a list after init
    outline_seps: list = None  # type: ignore[assignment]
    thread_seps: list = None  # type: ignore[assignment]
    has_outlines: bool = True  # "<Outlines>" was seen
    outlines_closed: bool = True  # "</Outlines>" was seen
    open_outline: bool = False  # last outline misses "</Outline>" (lenient only)
    closed: bool = True  # "</Parallel>" was seen

    def __post_init__(self) -> None:
        empty = "" if isinstance(self.pre_outlines, str) else ()
        if self.outline_seps is None:
            self.outline_seps = [empty] * (len(self.outlines) + 1)
        if self.thread_seps is None:
            sep = CANONICAL_THREAD_SEP if isinstance(self.pre_outlines, str) else ()
            self.thread_seps = [sep] * (len(self.threads) + 1)

    @property
    def width(self) -> int:
        return len(self.threads)


@dataclass
class Trajectory:
    """A parsed completion: a list of parts (text pieces and blocks)."""

    parts: list = field(default_factory=list)

    def blocks(self) -> list[tuple[Block, int]]:
        """Every block with its depth (1 = top level), in document order."""
        out: list[tuple[Block, int]] = []

        def walk(parts: list, depth: int) -> None:
            for p in parts:
                if isinstance(p, Block):
                    out.append((p, depth))
                    for t in p.threads:
                        walk(t.parts, depth + 1)

        walk(self.parts, 1)
        return out

    @property
    def depth(self) -> int:
        return max((d for _, d in self.blocks()), default=0)


@dataclass(frozen=True)
class Problem:
    """A defect found by the parser or the validator."""

    offset: int  # character offset (token index for ids)
    code: str  # machine-readable kind, e.g. "unclosed", "count_mismatch"
    message: str

    def __str__(self) -> str:
        return f"offset {self.offset}: {self.message}"


class FormatError(ValueError):
    """Raised by the strict parser; carries the first :class:`Problem` and all of them."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        self.offset = self.problems[0].offset
        self.code = self.problems[0].code
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(str(self.problems[0]) + more)


@dataclass(frozen=True)
class Limits:
    """Bounds on nesting depth and block width (None = unbounded)."""

    max_depth: int | None = None
    max_width: int | None = None


# ---------------------------------------------------------------------------
# Lexing: text or token ids -> a stream of (tag | content, offset)


@dataclass
class _Alphabet:
    """What the parser needs to know about its pieces (str or tuple of ids)."""

    empty: Piece
    # one alphabet takes only str pieces, the other only tuples of ids
    is_blank: Callable[[Any], bool]
    split_header: Callable[[Any], tuple]
    join: Callable[[list], Piece]  # pieces -> one piece, in linear time


def _split_header_text(piece: str) -> tuple[str, str]:
    m = _HEADER_RE.match(piece)
    return (m.group(0), piece[m.end() :]) if m else ("", piece)


_TEXT = _Alphabet("", lambda s: s.strip() == "", _split_header_text, "".join)


def _join_ids(pieces: list) -> tuple:
    return tuple(chain.from_iterable(pieces))


def _lex_text(text: str) -> list[tuple[str | None, Piece, int]]:
    """Split text into ("tag", tag, offset) and (None, text, offset) items."""
    items: list[tuple[str | None, Piece, int]] = []
    pos = 0
    for m in _TAG_RE.finditer(text):
        if m.start() > pos:
            items.append((None, text[pos : m.start()], pos))
        items.append((m.group(0), m.group(0), m.start()))
        pos = m.end()
    if pos < len(text):
        items.append((None, text[pos:], pos))
    return items


class _Parser:
    """Recursive descent over the lexed items. Text is gathered in lists and joined
    once (linear time whatever the number of stray tags); recursion is bounded by
    :data:`MAX_NESTING` (three frames per level)."""

    def __init__(self, items, alphabet: _Alphabet, total_len: int):
        self.items = items
        self.i = 0
        self.a = alphabet
        self.end = total_len
        self.problems: list[Problem] = []

    # helpers
    def peek(self):
        return self.items[self.i] if self.i < len(self.items) else None

    def problem(self, offset: int, code: str, message: str) -> None:
        self.problems.append(Problem(offset, code, message))

    def take_content(self) -> Piece:
        """Consume consecutive content items (no tags) and return them joined."""
        out = []
        while (it := self.peek()) is not None and it[0] is None:
            out.append(it[1])
            self.i += 1
        return out[0] if len(out) == 1 else self.a.join(out)

    def offset(self) -> int:
        it = self.peek()
        return it[2] if it is not None else self.end

    # grammar
    def parse_seq(self, depth: int, in_thread: bool) -> tuple[list, bool]:
        """Parts until end (top level) or ``</Thread>`` (inside a thread)."""
        parts: list = []
        text: list = []  # text pieces since the last block
        result_at = -1  # offset of this thread's <Result>

        def flush() -> None:
            if text:
                parts.append(self.a.join(text))
                text.clear()

        while (it := self.peek()) is not None:
            tag, value, off = it
            self.i += 1
            if tag is None:
                text.append(value)
            elif tag == RESULT and in_thread:
                if result_at >= 0:
                    self.problem(
                        off, "result_twice", f"second {RESULT} in one thread (the first at offset {result_at})"
                    )
                result_at = off
                text.append(value)
            elif tag == PARALLEL_OPEN and depth < MAX_NESTING:
                if result_at >= 0:
                    self.problem(
                        off, "block_after_result", f"{PARALLEL_OPEN} after the thread's {RESULT} (offset {result_at})"
                    )
                flush()
                parts.append(self.parse_block(depth + 1, off))
            elif tag == THREAD_CLOSE and in_thread:
                flush()
                return parts, True
            else:
                if tag == PARALLEL_OPEN:
                    self.problem(
                        off,
                        "too_deep",
                        f"{PARALLEL_OPEN} at offset {off} would nest blocks deeper than {MAX_NESTING} levels",
                    )
                else:
                    where = "inside a thread" if in_thread else "outside any block"
                    self.problem(off, "unexpected_tag", f"unexpected {tag} {where}")
                text.append(value)
        flush()
        return parts, False

    def parse_block(self, depth: int, start: int) -> Block:
        block = Block(
            outlines=[],
            threads=[],
            pre_outlines=self.a.empty,
            outline_seps=[],
            thread_seps=[],
            has_outlines=False,
            outlines_closed=False,
            closed=False,
        )
        block._offset = start  # type: ignore[attr-defined]
        # -- <Outlines>
        sep = self.take_content()
        it = self.peek()
        if it is not None and it[0] == OUTLINES_OPEN:
            block.pre_outlines = sep
            block.has_outlines = True
            self.i += 1
            self.parse_outlines(block)
        else:
            block.pre_outlines = sep
            if it is None:
                self.problem(
                    self.end, "unclosed", f"{PARALLEL_OPEN} at offset {start} is not closed: missing {OUTLINES_OPEN}"
                )
                return block
            self.problem(it[2], "missing_outlines", f"block at offset {start}: expected {OUTLINES_OPEN}, found {it[0]}")
        # -- threads
        seps = [self.take_content()]
        while True:
            it = self.peek()
            if it is None:
                block.thread_seps.append(self.a.join(seps))
                self.problem(
                    self.end, "unclosed", f"{PARALLEL_OPEN} at offset {start} is not closed: missing {PARALLEL_CLOSE}"
                )
                return block
            tag, value, off = it
            self.i += 1
            if tag == THREAD_OPEN:
                block.thread_seps.append(self.a.join(seps))
                block.threads.append(self.parse_thread(depth, off))
                seps = [self.take_content()]
            elif tag == PARALLEL_CLOSE:
                block.thread_seps.append(self.a.join(seps))
                block.closed = True
                return block
            else:  # a stray tag between threads: kept in the separator
                self.problem(off, "unexpected_tag", f"unexpected {tag} between threads of the block at offset {start}")
                seps += [value, self.take_content()]

    def parse_outlines(self, block: Block) -> None:
        """After ``<Outlines>``: outlines until ``</Outlines>``."""
        seps = [self.take_content()]
        while True:
            it = self.peek()
            if it is None:
                block.outline_seps.append(self.a.join(seps))
                self.problem(self.end, "unclosed", f"missing {OUTLINES_CLOSE}")
                return
            tag, value, off = it
            if tag == OUTLINE_OPEN:
                block.outline_seps.append(self.a.join(seps))
                self.i += 1
                text = []
                while (it2 := self.peek()) is not None and it2[0] not in (OUTLINE_CLOSE, *_OUTLINE_STOP):
                    if it2[0] is not None:
                        self.problem(it2[2], "unexpected_tag", f"unexpected {it2[0]} inside an outline")
                    text.append(it2[1])
                    self.i += 1
                block.outlines.append(self.a.join(text))
                if (it2 := self.peek()) is not None and it2[0] == OUTLINE_CLOSE:
                    self.i += 1
                    seps = [self.take_content()]
                    continue
                block.open_outline = True
                self.problem(it2[2] if it2 else self.end, "unclosed", f"{OUTLINE_OPEN} at offset {off} is not closed")
                block.outline_seps.append(self.a.empty)
                if it2 is not None and it2[0] == OUTLINES_CLOSE:
                    self.i += 1
                    block.outlines_closed = True
                return
            elif tag == OUTLINES_CLOSE:
                block.outline_seps.append(self.a.join(seps))
                self.i += 1
                block.outlines_closed = True
                return
            elif tag in (THREAD_OPEN, PARALLEL_CLOSE):
                block.outline_seps.append(self.a.join(seps))
                self.problem(off, "unclosed", f"missing {OUTLINES_CLOSE} before {tag}")
                return
            else:
                self.problem(off, "unexpected_tag", f"unexpected {tag} inside {OUTLINES_OPEN}")
                self.i += 1
                seps += [value, self.take_content()]

    def parse_thread(self, depth: int, start: int) -> Thread:
        first = self.peek()
        header = self.a.empty
        if first is not None and first[0] is None:
            header, rest = self.a.split_header(first[1])
            if rest:
                self.items[self.i] = (None, rest, first[2] + len(header))
            else:
                self.i += 1
        parts, closed = self.parse_seq(depth, in_thread=True)
        if not closed:
            self.problem(self.end, "unclosed", f"{THREAD_OPEN} at offset {start} is not closed")
        t = Thread(header=header, parts=parts, closed=closed)
        t._offset = start  # type: ignore[attr-defined]
        return t


def _parse_items(items, alphabet: _Alphabet, total_len: int) -> tuple[Trajectory, list[Problem]]:
    p = _Parser(list(items), alphabet, total_len)
    parts, _ = p.parse_seq(0, in_thread=False)
    return Trajectory(parts), p.problems


# ---------------------------------------------------------------------------
# Public API


def parse_lenient(text: str, limits: Limits | None = None) -> tuple[Trajectory, list[Problem]]:
    """Parse any text without raising. Returns the trajectory and every problem
    found (structural and semantic). ``render`` of the result gives back ``text``."""
    traj, problems = _parse_items(_lex_text(text), _TEXT, len(text))
    problems = problems + _semantic_problems(traj, limits or Limits())
    problems.sort(key=lambda p: p.offset)
    return traj, problems


def parse(text: str, limits: Limits | None = None) -> Trajectory:
    """Parse a well-formed trajectory; raise :class:`FormatError` naming the first
    problem and its character offset otherwise."""
    traj, problems = parse_lenient(text, limits)
    if problems:
        raise FormatError(problems)
    return traj


def validate(text: str, limits: Limits | None = None) -> list[Problem]:
    """All problems of ``text`` (empty list = valid)."""
    return parse_lenient(text, limits)[1]


def is_valid(text: str, limits: Limits | None = None) -> bool:
    return not validate(text, limits)


def _semantic_problems(traj: Trajectory, limits: Limits) -> list[Problem]:
    out: list[Problem] = []
    for block, depth in traj.blocks():
        off = getattr(block, "_offset", 0)
        if limits.max_depth is not None and depth > limits.max_depth:
            out.append(
                Problem(off, "depth", f"block at offset {off} is at depth {depth}, over the limit {limits.max_depth}")
            )
        if limits.max_width is not None and len(block.threads) > limits.max_width:
            out.append(
                Problem(
                    off,
                    "width",
                    f"block at offset {off} has {len(block.threads)} threads, over the limit {limits.max_width}",
                )
            )
        if not block.closed or not block.has_outlines:
            continue  # already reported as structural
        if len(block.outlines) == 0:
            out.append(Problem(off, "no_outlines", f"block at offset {off} has no outlines"))
        if len(block.outlines) != len(block.threads):
            out.append(
                Problem(
                    off,
                    "count_mismatch",
                    f"block at offset {off} has {len(block.outlines)} outlines but {len(block.threads)} threads",
                )
            )
        for i, o in enumerate(block.outlines, 1):
            if isinstance(o, str) and not re.match(rf"\s*{i}:", o):
                out.append(
                    Problem(off, "numbering", f"outline {i} of the block at offset {off} does not start with '{i}:'")
                )
        for i, t in enumerate(block.threads, 1):
            toff = getattr(t, "_offset", off)
            if isinstance(t.header, str) and t.header != f"{i}:":
                found = repr(t.header) if t.header else "no header"
                out.append(
                    Problem(
                        toff,
                        "numbering",
                        f"thread {i} of the block at offset {off} must start with '{i}:', found {found}",
                    )
                )
        seps = [block.pre_outlines, *block.outline_seps, *block.thread_seps]
        for s in seps:
            if isinstance(s, str) and s.strip():
                out.append(
                    Problem(
                        off,
                        "text_between",
                        f"text {s.strip()[:30]!r} between the tags of the block at offset {off} (only whitespace may stand between outlines and threads)",
                    )
                )
    return out


def render(traj: Trajectory | list) -> str:
    """Text of a trajectory (inverse of :func:`parse`)."""
    parts = traj.parts if isinstance(traj, Trajectory) else traj
    return "".join(_render_part(p) for p in parts)


def _render_part(p) -> str:
    if isinstance(p, str):
        return p
    b: Block = p
    out: list = [PARALLEL_OPEN, b.pre_outlines]  # text pieces: render only sees str blocks
    if b.has_outlines:
        out.append(OUTLINES_OPEN)
        for i, o in enumerate(b.outlines):
            out.append(b.outline_seps[i])
            out.append(OUTLINE_OPEN + o)
            if not (b.open_outline and i == len(b.outlines) - 1):
                out.append(OUTLINE_CLOSE)
        if len(b.outline_seps) > len(b.outlines):
            out.append(b.outline_seps[len(b.outlines)])
        if b.outlines_closed:
            out.append(OUTLINES_CLOSE)
    for i, t in enumerate(b.threads):
        out.append(b.thread_seps[i])
        out.append(THREAD_OPEN + t.header + render(t.parts))
        if t.closed:
            out.append(THREAD_CLOSE)
    if len(b.thread_seps) > len(b.threads):
        out.append(b.thread_seps[len(b.threads)])
    if b.closed:
        out.append(PARALLEL_CLOSE)
    return "".join(out)


# ---------------------------------------------------------------------------
# Construction helpers (generators build trajectories in code, then render)


def mark_results(traj: Trajectory) -> Trajectory:
    """Copy of ``traj`` in which every thread without a result gets one: its last line
    (for data whose threads end with their outcome, as converted APR sub-searches do).
    A thread that ends with a nested block keeps none. Nested threads are marked too."""

    def fix(parts: list) -> list:
        out: list = []
        for p in parts:
            if not isinstance(p, Block):
                out.append(p)
                continue
            threads = []
            for t in p.threads:
                tp = fix(t.parts)
                last = tp[-1] if tp else None
                if isinstance(last, str) and last.strip() and RESULT not in last:
                    body = last.rstrip()
                    cut = body.rfind("\n") + 1
                    cut += len(body[cut:]) - len(body[cut:].lstrip())
                    tp = tp[:-1] + [last[:cut] + RESULT + last[cut:]]
                threads.append(Thread(t.header, tp, t.closed))
            out.append(replace(p, threads=threads))
        return out

    return Trajectory(fix(traj.parts))


def make_block(threads: Iterable[tuple[str, str | list]]) -> Block:
    """Block from (outline plan, thread body) pairs, numbered from 1, canonical spacing.

    A thread body is a string or a list of parts (to nest blocks). Outline ``i``
    becomes ``"i: plan"``; thread ``i`` gets header ``"i:"`` followed by the body
    (which should start with a space, as in ``" text"``).
    """
    outlines, ts = [], []
    for i, (plan, body) in enumerate(threads, 1):
        outlines.append(f"{i}: {plan}" if plan else f"{i}:")
        ts.append(Thread(header=f"{i}:", parts=[body] if isinstance(body, str) else list(body)))
    return Block(outlines=outlines, threads=ts)


def thread_opener(i: int, sep: str = CANONICAL_THREAD_SEP) -> str:
    """The text the runner writes to open thread ``i`` (1-based): separator, tag, header."""
    return f"{sep}{THREAD_OPEN}{i}:"


def join_closer(sep: str = CANONICAL_THREAD_SEP) -> str:
    """The text the runner writes at the join."""
    return f"{sep}{PARALLEL_CLOSE}"


def canonicalize(traj: Trajectory) -> Trajectory:
    """Copy of ``traj`` with the runner-written separators set to the canonical ones
    (what the runner writes at forks and joins), so training sees what decoding writes."""

    def fix(parts: list) -> list:
        out = []
        for p in parts:
            if isinstance(p, Block):
                out.append(
                    Block(
                        outlines=list(p.outlines),
                        threads=[Thread(t.header, fix(t.parts), t.closed) for t in p.threads],
                        pre_outlines=p.pre_outlines,
                        outline_seps=list(p.outline_seps),
                        thread_seps=[CANONICAL_THREAD_SEP] * (len(p.threads) + 1),
                        has_outlines=p.has_outlines,
                        outlines_closed=p.outlines_closed,
                        open_outline=p.open_outline,
                        closed=p.closed,
                    )
                )
            else:
                out.append(p)
        return out

    return Trajectory(fix(traj.parts))


def split_at_first_tag(text: str) -> tuple[str, str]:
    """(text before the first control tag, the rest)."""
    m = _TAG_RE.search(text)
    return (text, "") if m is None else (text[: m.start()], text[m.start() :])


def strip_tags(text: str) -> str:
    """The text with every control tag removed (for display and answer extraction)."""
    return _TAG_RE.sub("", text)


def parse_ids(
    ids: Sequence[int],
    tag_ids: dict[int, str],
    header_ids: Callable[[int], tuple] | None = None,
    decode: Callable[[tuple], str] | None = None,
) -> tuple[Trajectory, list[Problem]]:
    """Lenient parse of a token-id sequence. ``tag_ids`` maps the id of each control
    token to its tag. Pieces of the result are tuples of ids; ``header_ids(i)`` gives
    the ids of thread ``i``'s header so it can be split from the thread body.

    Offsets in problems are token indices. Only structural problems are reported
    (numbering and spacing are checked on text)."""
    items: list[tuple[str | None, Piece, int]] = []
    run: list[int] = []
    run_start = 0
    for k, t in enumerate(ids):
        t = int(t)
        if t in tag_ids:
            if run:
                items.append((None, tuple(run), run_start))
                run = []
            items.append((tag_ids[t], (t,), k))
        else:
            if not run:
                run_start = k
            run.append(t)
    if run:
        items.append((None, tuple(run), run_start))

    def split_header(piece: tuple) -> tuple[tuple, tuple]:
        if header_ids is None:
            return (), piece
        for n in range(1, 65):
            h = tuple(header_ids(n))
            if h and piece[: len(h)] == h:
                return h, piece[len(h) :]
        return (), piece

    alphabet = _Alphabet(
        (), (lambda s: decode(s).strip() == "") if decode else (lambda s: True), split_header, _join_ids
    )
    return _parse_items(items, alphabet, len(ids))
