"""Converters from published parallel-reasoning dialects (``multiverse``,
``parallel_r1``, ``threadweaver``, ``apr``, ``canonical``) into the grammar of
:mod:`parallel_reason.format`. Reach them through ``format.convert(text, dialect)``;
nothing else in the code knows these dialects. A converter keeps the text, checks
its output with the strict parser and raises :class:`DialectError` (dialect,
offset, problem) on malformed input. How each dialect maps:
docs/design.md#dialects and the worked examples in ``docs/dialects.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .format import (
    CONTROL_TAGS,
    MAX_NESTING,
    Block,
    FormatError,
    Limits,
    Thread,
    Trajectory,
    mark_results,
    parse,
    render,
)

#: longest synthesised outline (Parallel-R1), in characters
OUTLINE_MAX_CHARS = 160


class DialectError(ValueError):
    """Malformed dialect input. ``where`` names the sequence for multi-sequence
    inputs (APR: ``"main_calls[1]"``, ``"sub_calls[0][2].main_calls[0]"``)."""

    def __init__(self, dialect: str, offset: int, problem: str, where: str | None = None):
        self.dialect = dialect
        self.offset = offset
        self.problem = problem
        self.where = where
        loc = f"{where}, offset {offset}" if where else f"offset {offset}"
        super().__init__(f"{dialect}: {loc}: {problem}")


# ---------------------------------------------------------------------------
# A small tag tree for the XML-like dialects


@dataclass
class _Text:
    text: str
    offset: int


@dataclass
class _El:
    name: str
    offset: int  # of the opening tag
    children: list = field(default_factory=list)  # _Text | _El
    end: int = -1  # offset just after the closing tag


_CANON_TAG_RE = re.compile(r"</?(?:Parallel|Outlines|Outline|Thread)>")
# two elements per block level (<Parallel><Path>...), a little more than the grammar allows
_MAX_ELEMENT_DEPTH = 2 * MAX_NESTING + 4


def _lex_tree(text: str, dialect: str, names: tuple[str, ...]) -> _El:
    """Tags ``<N>``/``</N>`` for N in ``names`` -> a tree rooted at a pseudo element
    ``#root``. Unbalanced tags, and canonical control tags that the dialect does not
    use, are errors."""
    tag_re = re.compile(r"<(/?)(" + "|".join(re.escape(n) for n in names) + r")>")
    root = _El("#root", 0)
    stack = [root]
    pos = 0
    own = {f"<{n}>" for n in names} | {f"</{n}>" for n in names}
    for m in _CANON_TAG_RE.finditer(text):
        if m.group(0) not in own:
            raise DialectError(
                dialect, m.start(), f"{m.group(0)} is a canonical tag, not part of the {dialect} dialect"
            )
    for m in tag_re.finditer(text):
        if m.start() > pos:
            stack[-1].children.append(_Text(text[pos : m.start()], pos))
        closing, name = m.group(1) == "/", m.group(2)
        if not closing:
            if len(stack) > _MAX_ELEMENT_DEPTH:  # the converters recurse over the tree
                raise DialectError(dialect, m.start(), f"tags nested deeper than {_MAX_ELEMENT_DEPTH} levels")
            el = _El(name, m.start())
            stack[-1].children.append(el)
            stack.append(el)
        else:
            top = stack[-1]
            if top.name != name:
                if top is root:
                    raise DialectError(dialect, m.start(), f"</{name}> without a matching <{name}>")
                raise DialectError(dialect, m.start(), f"</{name}> closes <{top.name}> opened at offset {top.offset}")
            top.end = m.end()
            stack.pop()
        pos = m.end()
    if pos < len(text):
        stack[-1].children.append(_Text(text[pos:], pos))
    if len(stack) > 1:
        el = stack[-1]
        raise DialectError(dialect, el.offset, f"<{el.name}> opened at offset {el.offset} is never closed")
    root.end = len(text)
    return root


# ---------------------------------------------------------------------------
# Building canonical parts


def _add_text(parts: list, s: str) -> None:
    if not s:
        return
    if parts and isinstance(parts[-1], str):
        parts[-1] += s
    else:
        parts.append(s)


def _add_block(parts: list, block: Block) -> None:
    """Append a block, making sure it starts on its own line."""
    if parts and isinstance(parts[-1], str):
        if parts[-1].strip() == "":
            parts[-1] = "\n" if len(parts) > 1 else ""
            if not parts[-1]:
                parts.pop()
        elif not parts[-1].endswith("\n"):
            parts[-1] = parts[-1].rstrip(" \t") + "\n"
    elif parts and isinstance(parts[-1], Block):
        parts.append("\n")
    parts.append(block)


def _add_after_block(parts: list, s: str) -> None:
    """Text that follows a block: it starts on a new line."""
    if parts and isinstance(parts[-1], Block) and s and not s.startswith("\n"):
        s = "\n" + s.lstrip(" \t")
    _add_text(parts, s)


def _extend(parts: list, more: list) -> None:
    """Append parts (text and blocks) keeping blocks on their own lines."""
    for piece in more:
        if isinstance(piece, Block):
            _add_block(parts, piece)
        elif parts and isinstance(parts[-1], Block):
            _add_after_block(parts, piece)
        else:
            _add_text(parts, piece)


def _rstrip_parts(parts: list) -> list:
    """A conclusion/summary moved after ``</Parallel>``: no trailing whitespace (the
    text that follows the block in the input brings its own)."""
    parts = list(parts)
    if parts and isinstance(parts[-1], str):
        parts[-1] = parts[-1].rstrip()
        if not parts[-1]:
            parts.pop()
    return parts


def _thread_parts(parts: list) -> list:
    """Thread body: one space after the ``i:`` header, no trailing whitespace."""
    parts = list(parts)
    while parts and isinstance(parts[0], str) and not parts[0].strip():
        parts.pop(0)
    while parts and isinstance(parts[-1], str) and not parts[-1].strip():
        parts.pop()
    if not parts:
        return []
    if isinstance(parts[0], str):
        parts[0] = " " + parts[0].lstrip()
    else:
        parts.insert(0, " ")
    if isinstance(parts[-1], str):
        parts[-1] = parts[-1].rstrip()
    return parts


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _make_block(outlines: list[str], threads: list[list]) -> Block:
    return Block(
        outlines=[f"{i}: {_one_line(o)}" for i, o in enumerate(outlines, 1)],
        threads=[Thread(header=f"{i}:", parts=_thread_parts(t)) for i, t in enumerate(threads, 1)],
    )


_NUM_PREFIX_RE = re.compile(r"\s*(\d+)\s*:")


def _strip_number(parts: list, i: int, dialect: str, what: str, offset: int) -> list:
    """Remove a leading ``i:`` from the first text part; a different number is an error."""
    if not parts or not isinstance(parts[0], str):
        return parts
    m = _NUM_PREFIX_RE.match(parts[0])
    if not m:
        return parts
    if int(m.group(1)) != i:
        raise DialectError(dialect, offset, f"{what} {i} is numbered {m.group(1)}")
    return [parts[0][m.end() :], *parts[1:]]


def _finish(parts: list, dialect: str, limits: Limits | None) -> str:
    out = render(Trajectory(parts))
    try:
        parse(out, limits)
    except FormatError as e:  # a depth/width limit, or a converter bug
        raise DialectError(
            dialect, e.offset, f"converted text breaks the canonical grammar (offset in the output): {e}"
        ) from None
    return out


# ---------------------------------------------------------------------------
# Multiverse, Parallel-R1, ThreadWeaver


def _blank(t: _Text) -> bool:
    return t.text.strip() == ""


def _seq(children: list, dialect: str, block_fn: Callable, depth: int = 0) -> list:
    """Sequential context: text and ``<Parallel>`` blocks (and what ``block_fn`` allows)."""
    parts: list = []
    i = 0
    while i < len(children):
        c = children[i]
        if isinstance(c, _Text):
            _extend(parts, [c.text])
            i += 1
        elif c.name == "Parallel":
            i = block_fn(children, i, parts, depth)
        else:
            raise DialectError(dialect, c.offset, f"<{c.name}> outside a <Parallel> block")
    return parts


def _text_of(el: _El, dialect: str, what: str) -> str:
    for c in el.children:
        if isinstance(c, _El):
            raise DialectError(dialect, c.offset, f"<{c.name}> inside {what}")
    return "".join(c.text for c in el.children)


def _multiverse_block(children: list, i: int, parts: list, depth: int) -> int:
    D = "multiverse"
    par: _El = children[i]
    goal: _El | None = None
    paths: list[_El] = []
    conclusion: _El | None = None
    for c in par.children:
        if isinstance(c, _Text):
            if not _blank(c):
                raise DialectError(
                    D,
                    c.offset,
                    f"text {c.text.strip()[:30]!r} directly inside <Parallel> (only <Goal>, <Path> and <Conclusion> may stand there)",
                )
        elif c.name == "Goal":
            if goal is not None or paths or conclusion is not None:
                raise DialectError(D, c.offset, "<Goal> must come once, first in the block")
            goal = c
        elif c.name == "Path":
            if conclusion is not None:
                raise DialectError(D, c.offset, "<Path> after <Conclusion>")
            paths.append(c)
        elif c.name == "Conclusion":
            if conclusion is not None:
                raise DialectError(D, c.offset, "second <Conclusion> in one block")
            conclusion = c
        else:
            raise DialectError(D, c.offset, f"<{c.name}> directly inside <Parallel>")
    if goal is None:
        raise DialectError(D, par.offset, "block without <Goal>")
    if not paths:
        raise DialectError(D, par.offset, "block without <Path>")
    # goal: optional free text, then outlines
    goal_text = ""
    outlines: list[tuple[str, int]] = []  # (text, offset)
    for c in goal.children:
        if isinstance(c, _Text):
            if outlines and not _blank(c):
                raise DialectError(D, c.offset, f"text {c.text.strip()[:30]!r} between outlines of the <Goal>")
            if not outlines:
                goal_text += c.text
        elif c.name == "Outline":
            outlines.append((_text_of(c, D, "an <Outline>"), c.offset))
        else:
            raise DialectError(D, c.offset, f"<{c.name}> inside <Goal>")
    if not outlines:
        raise DialectError(D, goal.offset, "<Goal> without <Outline>")
    if len(outlines) != len(paths):
        raise DialectError(D, par.offset, f"block has {len(outlines)} outlines but {len(paths)} paths")
    plans = []
    for k, (o, off) in enumerate(outlines, 1):
        body = _strip_number([o], k, D, "outline", off)[0].strip()
        if not body:
            raise DialectError(D, off, f"outline {k} is empty")
        plans.append(body)
    threads = []
    for k, p in enumerate(paths, 1):
        body = _strip_number(_seq(p.children, D, _multiverse_block, depth + 1), k, D, "path", p.offset)
        if not _thread_parts(body):
            raise DialectError(D, p.offset, f"path {k} is empty")
        threads.append(body)
    if goal_text.strip():
        if parts and isinstance(parts[-1], Block):
            _add_after_block(parts, goal_text.strip())
        else:
            _add_text(parts, ("" if not parts or parts[-1].endswith(("\n", " ")) else " ") + goal_text.strip())
    _add_block(parts, _make_block(plans, threads))
    if conclusion is not None:
        _extend(parts, _rstrip_parts(_seq(conclusion.children, D, _multiverse_block, depth)))
    return i + 1


_SENT_RE = re.compile(r"(.+?[.!?])(?=\s|$)", re.S)


def first_sentence(text: str, max_chars: int = OUTLINE_MAX_CHARS) -> str:
    """The first sentence of ``text`` (on one line), cut at a word boundary to at most
    ``max_chars`` characters (with an ellipsis when cut)."""
    flat = _one_line(text)
    m = _SENT_RE.match(flat)
    s = m.group(1) if m else flat
    if len(s) > max_chars:
        cut = s[:max_chars].rsplit(" ", 1)[0] or s[:max_chars]
        s = cut.rstrip(",;: ") + " ..."
    return s


def _synth_outline(parts: list) -> str:
    for p in parts:
        if isinstance(p, str) and p.strip():
            return first_sentence(p)
        if isinstance(p, Block):  # a path that opens with a nested block: use its first outline
            return first_sentence(re.sub(r"^\s*\d+:\s*", "", p.outlines[0]))
    return ""


def _parallel_r1_block(children: list, i: int, parts: list, depth: int) -> int:
    D = "parallel_r1"
    par: _El = children[i]
    paths: list[_El] = []
    summary: _El | None = None
    for c in par.children:
        if isinstance(c, _Text):
            if not _blank(c):
                raise DialectError(
                    D,
                    c.offset,
                    f"text {c.text.strip()[:30]!r} directly inside <Parallel> (only <Path> and <Summary> may stand there)",
                )
        elif c.name == "Path":
            if summary is not None:
                raise DialectError(D, c.offset, "<Path> after <Summary>")
            paths.append(c)
        elif c.name == "Summary":
            if summary is not None:
                raise DialectError(D, c.offset, "second <Summary> in one block")
            summary = c
        else:
            raise DialectError(D, c.offset, f"<{c.name}> directly inside <Parallel>")
    if not paths:
        raise DialectError(D, par.offset, "block without <Path>")
    nxt = i + 1
    if summary is None:  # accept <Parallel>..</Parallel><Summary>..</Summary>
        j = nxt
        while j < len(children) and isinstance(children[j], _Text) and _blank(children[j]):
            j += 1
        if j < len(children) and isinstance(children[j], _El) and children[j].name == "Summary":
            summary, nxt = children[j], j + 1
    threads, plans = [], []
    for k, p in enumerate(paths, 1):
        body = _strip_number(_seq(p.children, D, _parallel_r1_block, depth + 1), k, D, "path", p.offset)
        if not _thread_parts(body):
            raise DialectError(D, p.offset, f"path {k} is empty")
        threads.append(body)
        plans.append(_synth_outline(body))
    _add_block(parts, _make_block(plans, threads))
    if summary is not None:
        _extend(parts, _rstrip_parts(_seq(summary.children, D, _parallel_r1_block, depth)))
    return nxt


def _threadweaver_block(children: list, i: int, parts: list, depth: int) -> int:
    D = "threadweaver"
    par: _El = children[i]
    outlines_el: _El | None = None
    threads_el: list[_El] = []
    for c in par.children:
        if isinstance(c, _Text):
            if not _blank(c):
                raise DialectError(
                    D,
                    c.offset,
                    f"text {c.text.strip()[:30]!r} directly inside <Parallel> (only <Outlines> and <Thread> may stand there)",
                )
        elif c.name == "Outlines":
            if outlines_el is not None or threads_el:
                raise DialectError(D, c.offset, "<Outlines> must come once, first in the block")
            outlines_el = c
        elif c.name == "Thread":
            threads_el.append(c)
        else:
            raise DialectError(D, c.offset, f"<{c.name}> directly inside <Parallel>")
    if outlines_el is None:
        raise DialectError(D, par.offset, "block without <Outlines>")
    outlines = []
    for c in outlines_el.children:
        if isinstance(c, _Text):
            if not _blank(c):
                raise DialectError(D, c.offset, f"text {c.text.strip()[:30]!r} between outlines")
        elif c.name == "Outline":
            outlines.append((_text_of(c, D, "an <Outline>"), c.offset))
        else:
            raise DialectError(D, c.offset, f"<{c.name}> inside <Outlines>")
    if not outlines:
        raise DialectError(D, outlines_el.offset, "<Outlines> without <Outline>")
    if not threads_el:
        raise DialectError(D, par.offset, "block without <Thread>")
    if len(outlines) != len(threads_el):
        raise DialectError(D, par.offset, f"block has {len(outlines)} outlines but {len(threads_el)} threads")
    plans = []
    for k, (o, off) in enumerate(outlines, 1):
        body = _strip_number([o], k, D, "outline", off)[0].strip()
        if not body:
            raise DialectError(D, off, f"outline {k} is empty")
        plans.append(body)
    threads = []
    for k, t in enumerate(threads_el, 1):
        body = _strip_number(_seq(t.children, D, _threadweaver_block, depth + 1), k, D, "thread", t.offset)
        threads.append(body)
    _add_block(parts, _make_block(plans, threads))
    return i + 1


def _drop_think(root: _El) -> list:
    """ThreadWeaver wraps reasoning in <think>..</think>: keep the text, drop the tags."""
    out: list = []
    for c in root.children:
        if isinstance(c, _El) and c.name == "think":
            inner = _drop_think(c)
            # the newline right after <think> and right before </think> go with the tags
            if inner and isinstance(inner[0], _Text) and inner[0].text.startswith("\n"):
                inner[0] = _Text(inner[0].text[1:], inner[0].offset + 1)
            if inner and isinstance(inner[-1], _Text) and inner[-1].text.endswith("\n"):
                inner[-1] = _Text(inner[-1].text[:-1], inner[-1].offset)
            out.extend(inner)
        else:
            if isinstance(c, _El):
                c.children = _drop_think(c)
            out.append(c)
    return out


def _merge_texts(children: list) -> list:
    out: list = []
    for c in children:
        if isinstance(c, _Text) and out and isinstance(out[-1], _Text):
            out[-1] = _Text(out[-1].text + c.text, out[-1].offset)
        else:
            out.append(c)
    return out


def convert_multiverse(text: str, limits: Limits | None = None) -> str:
    _need_str(text, "multiverse")
    root = _lex_tree(text, "multiverse", ("Parallel", "Goal", "Outline", "Path", "Conclusion"))
    return _finish(_seq(root.children, "multiverse", _multiverse_block), "multiverse", limits)


def convert_parallel_r1(text: str, limits: Limits | None = None) -> str:
    _need_str(text, "parallel_r1")
    root = _lex_tree(text, "parallel_r1", ("Parallel", "Path", "Summary"))
    return _finish(_seq(root.children, "parallel_r1", _parallel_r1_block), "parallel_r1", limits)


def convert_threadweaver(text: str, limits: Limits | None = None) -> str:
    _need_str(text, "threadweaver")
    root = _lex_tree(text, "threadweaver", ("Parallel", "Outlines", "Outline", "Thread", "think"))
    children = _merge_texts(_drop_think(root))
    _fix_think_texts(children)
    return _finish(_seq(children, "threadweaver", _threadweaver_block), "threadweaver", limits)


def _fix_think_texts(children: list) -> None:
    for c in children:
        if isinstance(c, _El):
            c.children = _merge_texts(c.children)
            _fix_think_texts(c.children)


def convert_canonical(text: str, limits: Limits | None = None) -> str:
    _need_str(text, "canonical")
    try:
        parse(text, limits)
    except FormatError as e:
        raise DialectError("canonical", e.offset, str(e.problems[0].message)) from None
    return text


def _need_str(x, dialect: str) -> None:
    if not isinstance(x, str):
        raise DialectError(dialect, 0, f"expected text, got {type(x).__name__}")


# ---------------------------------------------------------------------------
# APR

APR_SPAWN_OPEN = "<Calling Sub Searches>"
APR_SPAWN_CLOSE = "<End Calling Sub Searches>"
APR_JOIN_OPEN = "<Sub Searches>"
APR_JOIN_CLOSE = "<End Sub Searches>"
_APR_START_RE = re.compile(r"<Start Sub Search (\d+) at level (\d+)>[ \t]*(.*)")


def _apr_load(x, where: str):
    if isinstance(x, str):
        s = x.lstrip()
        if s.startswith("{"):
            try:
                x = json.loads(s)
            except json.JSONDecodeError as e:
                raise DialectError("apr", e.pos, f"invalid trace_dict JSON: {e.msg}", where) from None
        else:
            return {"main_calls": [x], "sub_calls": []}
    if not isinstance(x, dict):
        raise DialectError(
            "apr", 0, f"expected a trace_dict (an object with main_calls and sub_calls), got {type(x).__name__}", where
        )
    main = x.get("main_calls")
    subs = x.get("sub_calls", [])
    if not isinstance(main, list) or not main or not all(isinstance(m, str) for m in main):
        raise DialectError("apr", 0, "main_calls must be a non-empty list of strings", where)
    if not isinstance(subs, list) or not all(isinstance(s, list) for s in subs):
        raise DialectError("apr", 0, "sub_calls must be a list of lists of child trace_dicts", where)
    return x


def _apr_parts(x, where: str, depth: int) -> list:
    td = _apr_load(x, where)
    main, subs = td["main_calls"], td.get("sub_calls", [])
    k = len(main) - 1
    final = main[-1]
    fwhere = f"{where}main_calls[{k}]"
    if len(subs) != k:
        raise DialectError(
            "apr", 0, f"{len(main)} main calls need {k} groups of sub calls, found {len(subs)}", f"{where}sub_calls"
        )
    if APR_SPAWN_OPEN in final:
        at = final.index(APR_SPAWN_OPEN)
        raise DialectError(
            "apr", at, "the last main call holds a spawn section without children (a truncated trace?)", fwhere
        )
    parts: list = []
    pos = 0
    for i in range(k):
        mc, mwhere = main[i], f"{where}main_calls[{i}]"
        at = mc.rfind(APR_SPAWN_OPEN)
        if at < 0:
            raise DialectError("apr", len(mc), f"main call {i} does not end with a {APR_SPAWN_OPEN} section", mwhere)
        close = mc.find(APR_SPAWN_CLOSE, at)
        if close < 0:
            raise DialectError("apr", at, f"{APR_SPAWN_OPEN} without {APR_SPAWN_CLOSE}", mwhere)
        tail = close + len(APR_SPAWN_CLOSE)
        if mc[tail:].strip():
            raise DialectError("apr", tail, f"text after {APR_SPAWN_CLOSE}: {mc[tail:].strip()[:30]!r}", mwhere)
        prefix = mc[:at]
        outlines: list[str] = []
        line_off = at + len(APR_SPAWN_OPEN)
        for line in mc[line_off:close].split("\n"):
            if line.strip():
                m = _APR_START_RE.match(line.strip())
                if not m:
                    raise DialectError(
                        "apr", line_off, f"unexpected line in the spawn section: {line.strip()[:40]!r}", mwhere
                    )
                if int(m.group(1)) != len(outlines):
                    raise DialectError(
                        "apr", line_off, f"sub search numbered {m.group(1)}, expected {len(outlines)}", mwhere
                    )
                outlines.append(m.group(3).strip() or f"Sub Search {m.group(1)} at level {m.group(2)}")
            line_off += len(line) + 1
        if not outlines:
            raise DialectError("apr", at, "spawn section without <Start Sub Search ..> lines", mwhere)
        children = subs[i]
        if len(children) != len(outlines):
            raise DialectError(
                "apr",
                at,
                f"spawn section names {len(outlines)} sub searches but sub_calls[{i}] has {len(children)}",
                mwhere,
            )
        if not final.startswith(prefix):
            diff = next((j for j, (a, b) in enumerate(zip(final, prefix)) if a != b), min(len(final), len(prefix)))
            raise DialectError(
                "apr", diff, f"the last main call does not continue main call {i} (they differ here)", fwhere
            )
        if len(prefix) < pos:
            raise DialectError("apr", len(prefix), f"spawn section {i} comes before spawn section {i - 1}", fwhere)
        if not final[len(prefix) :].lstrip("\n").startswith(APR_JOIN_OPEN):
            raise DialectError("apr", len(prefix), f"expected the join message {APR_JOIN_OPEN} after spawn {i}", fwhere)
        threads = [_apr_parts(c, f"{where}sub_calls[{i}][{j}].", depth + 1) for j, c in enumerate(children)]
        _extend(parts, [final[pos : len(prefix)], _make_block(outlines, threads)])
        pos = len(prefix)
    _extend(parts, [final[pos:]])
    return parts


def convert_apr(trace, limits: Limits | None = None) -> str:
    """APR trace_dict (dict or JSON text; a plain string is one call) -> canonical text."""
    return _finish(_apr_parts(trace, "", 0), "apr", limits)


# ---------------------------------------------------------------------------
# Registry

CONVERTERS: dict[str, Callable] = {
    "apr": convert_apr,
    "multiverse": convert_multiverse,
    "parallel_r1": convert_parallel_r1,
    "threadweaver": convert_threadweaver,
    "canonical": convert_canonical,
}

_ALIASES = {
    "parallel-r1": "parallel_r1",
    "parallelr1": "parallel_r1",
    "pr1": "parallel_r1",
    "thread_weaver": "threadweaver",
    "thread-weaver": "threadweaver",
    "tw": "threadweaver",
    "ours": "canonical",
}

#: tags each dialect uses (for display and tests; APR's are line markers)
DIALECT_TAGS: dict[str, tuple[str, ...]] = {
    "multiverse": ("Parallel", "Goal", "Outline", "Path", "Conclusion"),
    "parallel_r1": ("Parallel", "Path", "Summary"),
    "threadweaver": ("think", *(t.strip("</>") for t in CONTROL_TAGS[::2])),
    "apr": (APR_SPAWN_OPEN, APR_SPAWN_CLOSE, APR_JOIN_OPEN, APR_JOIN_CLOSE, "<Start Sub Search i at level l>"),
    "canonical": tuple(t.strip("</>") for t in CONTROL_TAGS[::2]),
}


def dialect_name(name: str) -> str:
    """Canonical dialect name for ``name`` (case-insensitive, aliases accepted)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in CONVERTERS:
        raise ValueError(f"unknown dialect {name!r}; available: {', '.join(sorted(CONVERTERS))}")
    return key


def convert(text, dialect: str, limits: Limits | None = None, results: bool = False) -> str:
    """Convert ``text`` written in ``dialect`` into the canonical grammar. Raises
    :class:`DialectError` (a ValueError) on malformed input. With ``results`` the last
    line of every thread that has no ``<Result>`` becomes its result
    (:func:`parallel_reason.format.mark_results`; for the summary join)."""
    out = CONVERTERS[dialect_name(dialect)](text, limits)
    return render(mark_results(parse(out))) if results else out


__all__ = [
    "CONVERTERS",
    "DIALECT_TAGS",
    "DialectError",
    "OUTLINE_MAX_CHARS",
    "convert",
    "convert_apr",
    "convert_canonical",
    "convert_multiverse",
    "convert_parallel_r1",
    "convert_threadweaver",
    "dialect_name",
    "first_sentence",
]
