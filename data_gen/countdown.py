"""Countdown search traces, rendered as fork/join (parallel) or linear (sequential)
reasoning, for SFT.

    python -m data_gen.countdown --n 1000 --seed 0 --out train.jsonl --stats
    python -m data_gen.countdown --n 1000 --seed 0 --mode dfs --out dfs.jsonl

A bounded heuristic search records the tree it explores; the same tree is rendered
as ``parallel``, ``sequential``, ``dfs`` or ``mixed`` records (TRL prompt-completion
JSONL, each checked before an atomic write). A problem's split is a hash of its key
and the output does not depend on ``--workers``. Search, renderings, style flags
and splits: docs/design.md#data.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from parallel_reason import files, metrics
from parallel_reason.format import RESULT, Limits, make_block, parse, render
from parallel_reason.inputs import parse_range
from parallel_reason.tasks import countdown as task

TASK = "countdown"
SPLITS = ("train", "val", "test")
MODES = ("parallel", "sequential", "dfs", "mixed")
DEFAULT_SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
DEFAULT_WIDTHS = (3, 2)

# ---------------------------------------------------------------------------
# Search


@dataclass(frozen=True)
class Item:
    """A number still to combine, with the expression that produced it."""

    value: int
    expr: str
    op: str = ""  # top operator of expr ("" for an input number)


@dataclass
class Node:
    """A node of the explored tree."""

    items: tuple  # of Item
    move: str = ""  # the move that produced this node, e.g. "60-25=35" ("" at the root)
    children: list = field(default_factory=list)
    checks: list = field(default_factory=list)  # leaf: "4+9=13", ... in the order tried
    found: str | None = None  # expression reaching the target within this subtree
    fanout: bool = False  # children explored concurrently (a block in parallel mode)

    @property
    def is_leaf(self) -> bool:
        return len(self.items) <= 2

    @property
    def state(self) -> str:
        return "[" + " ".join(str(v) for v in sorted(i.value for i in self.items)) + "]"

    def outline(self, goal: int | None = None) -> str:
        """``"60-25=35 [4 7 35]"``; with ``goal`` the target closes the state: ``[4 7 35|24]``."""
        state = self.state if goal is None else f"{self.state[:-1]}|{goal}]"
        return f"{self.move} {state}"

    def leaves(self) -> int:
        return 1 if self.is_leaf else sum(c.leaves() for c in self.children)


def _combine(a: Item, b: Item):
    """Legal (value, op, text, item) combinations of two items (generation rules)."""
    hi, lo = (a, b) if a.value >= b.value else (b, a)
    return [
        (value, op, f"{hi.value}{op}{lo.value}={value}", _apply(hi, op, lo, value))
        for value, op, _h, _l in task.combine(hi.value, lo.value)
    ]


def _apply(hi: Item, op: str, lo: Item, value: int) -> Item:
    return Item(value, task.join_expr(hi.expr, hi.op, op, lo.expr, lo.op), op)


def _distance(v: int, target: int) -> float:
    """How far a single number is from being useful: distance to the target, or to a
    factor / multiple of it (then one more step may finish)."""
    d = abs(target - v) / target
    if v > 1 and v != target:
        if target % v == 0:
            d = min(d, 0.1 + 0.02 * (target // v))
        elif v % target == 0:
            d = min(d, 0.1 + 0.02 * (v // target))
    return d


def _score(values: Sequence[int], target: int) -> float:
    """Heuristic cost of a state (lower is better)."""
    ds = sorted(_distance(v, target) for v in values)
    return ds[0] + 0.25 * sum(ds[1:]) / max(len(ds) - 1, 1)


def _moves(items: tuple, target: int, rng: random.Random, width: int) -> list:
    """The ``width`` best legal moves of a state as (text, new items), deduplicated by
    resulting state; ties are broken by ``rng``."""
    scored, seen = [], set()
    n = len(items)
    for i in range(n):
        for j in range(i + 1, n):
            hi, lo = (items[i], items[j]) if items[i].value >= items[j].value else (items[j], items[i])
            rest = [x.value for k, x in enumerate(items) if k != i and k != j]
            for value, op, _h, _l in task.combine(hi.value, lo.value):
                key = tuple(sorted(rest + [value]))
                if key in seen:
                    continue
                seen.add(key)
                scored.append((_score(key, target), rng.random(), i, j, value, op))
    scored.sort(key=lambda m: (m[0], m[1]))
    out = []
    for _s, _r, i, j, value, op in scored[:width]:
        hi, lo = (items[i], items[j]) if items[i].value >= items[j].value else (items[j], items[i])
        others = tuple(x for k, x in enumerate(items) if k != i and k != j)
        out.append((f"{hi.value}{op}{lo.value}={value}", others + (_apply(hi, op, lo, value),)))
    return out


def _moves_per_pair(items: tuple, target: int, rng: random.Random, width: int) -> list:
    """For each pair of numbers, in the order the numbers stand (1-2, 1-3, 2-3, ...), its
    ``width`` best operations by the same heuristic; moves that lead to a state already
    listed are dropped. The move a thread takes then follows from its position."""
    out, seen = [], set()
    n = len(items)
    for i in range(n):
        for j in range(i + 1, n):
            hi, lo = (items[i], items[j]) if items[i].value >= items[j].value else (items[j], items[i])
            rest = tuple(x for k, x in enumerate(items) if k != i and k != j)
            scored = []
            for value, op, _h, _l in task.combine(hi.value, lo.value):
                key = tuple(sorted([x.value for x in rest] + [value]))
                scored.append((_score(key, target), rng.random(), value, op, key))
            scored.sort(key=lambda m: (m[0], m[1]))
            for _s, _r, value, op, key in scored[:width]:
                if key in seen:
                    continue
                seen.add(key)
                out.append((f"{hi.value}{op}{lo.value}={value}", rest + (_apply(hi, op, lo, value),)))
    return out


MOVE_RULES = ("best", "per-pair")


def search(
    nums: Sequence[int],
    target: int,
    rng: random.Random,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    max_depth: int = 2,
    moves: str = "best",
) -> Node:
    """The explored search tree of a problem (see the module docstring). ``moves``:
    ``best`` keeps the ``width`` best moves of a state overall; ``per-pair`` the
    ``width`` best operations of each pair of numbers, pairs in order."""
    if moves not in MOVE_RULES:
        raise ValueError(f"moves must be one of {MOVE_RULES}, got {moves!r}")
    moves_rule = moves
    root = Node(items=tuple(Item(int(v), str(int(v))) for v in nums))

    def explore(node: Node, depth: int, level: int) -> None:
        if len(node.items) == 1:  # only with a single input number
            if node.items[0].value == target:
                node.found = node.items[0].expr
            return
        if len(node.items) == 2:
            a, b = node.items
            for value, _op, text, item in _combine(a, b):
                node.checks.append(text)
                if value == target:
                    node.found = item.expr
                    break
            return
        width = widths[min(level, len(widths) - 1)]
        moves = (_moves if moves_rule == "best" else _moves_per_pair)(node.items, target, rng, width)
        node.fanout = depth < max_depth and len(moves) >= 2
        for text, items in moves:
            child = Node(items=items, move=text)
            node.children.append(child)
            explore(child, depth + 1 if node.fanout else depth, level + 1)
            if child.found is not None and node.found is None:
                node.found = child.found
                if not node.fanout:
                    break

    explore(root, 0, 0)
    return root


# ---------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Style:
    """How a trace is written (the search is the same).

    ``restate``: a thread begins with its outline's text (what ``thread_header: outline``
    trains); ``show_target``: every state ends with the target (``[3 21|24]``), so the
    check against it is local; ``leaf_answers``: the move that reaches the target writes
    ``=> Answer: EXPR`` and nothing is restated after it (no conclusion lines, nothing
    after a join), so no answer has to be copied out of a thread; ``bare_outlines``: an
    outline is only its number (``1:``) and the thread writes its own move, so the
    outlines cost a few tokens on the critical path instead of a move each (with
    ``moves="per-pair"`` a thread's move follows from its number); ``results``: a
    thread's last verdict (``=> none``, ``=> Answer: ...``) is marked as its result
    (``=> <Result>none``), what a ``summary`` join shows the text after the block."""

    restate: bool = False
    show_target: bool = False
    leaf_answers: bool = False
    bare_outlines: bool = False
    results: bool = False


def _result(node: Node, target: int, style: Style) -> str:
    if node.found is None:
        return "none"
    return f"Answer: {node.found}" if style.leaf_answers else f"{node.found} = {target}"


def _conclusion(node: Node, target: int, indent: str, style: Style) -> list:
    """What a non-leaf node writes after its children (nothing with leaf answers)."""
    return [] if style.leaf_answers else [f"\n{indent}=> {_result(node, target, style)}"]


def _leaf(node: Node, target: int, style: Style) -> str:
    return " " + " ".join(node.checks) + " => " + _result(node, target, style)


def _render_parts(node: Node, target: int, parallel: bool, indent: str, lead: str, style: Style) -> list:
    """Parts of the node's own search (what follows its move line, or its thread
    header). ``lead`` separates the first element from what precedes it."""
    goal = target if style.show_target else None
    if node.is_leaf:
        return [_leaf(node, target, style)]
    if parallel and node.fanout:

        def thread(c: Node) -> list:
            parts = _render_parts(c, target, True, " ", " ", style)
            if style.leaf_answers and isinstance(parts[-1], str) and "Answer: " in parts[-1].rsplit("\n", 1)[-1]:
                parts = parts + ["\n"]  # the answer line ends before </Thread>
            if style.results:
                parts = _mark_result(_merge_text(parts))
            return [" " + c.outline(goal), *parts] if style.restate or style.bare_outlines else parts

        plan = (lambda c: "") if style.bare_outlines else (lambda c: c.outline(goal))
        block = make_block((plan(c), _merge_text(thread(c))) for c in node.children)
        parts: list = [lead] if lead else []
        return parts + [block] + _conclusion(node, target, indent, style)
    parts = []
    for k, child in enumerate(node.children):
        parts.append((lead if k == 0 else "\n" + indent) + child.outline(goal))
        parts += _render_parts(child, target, parallel, indent + " ", "\n" + indent + " ", style)
    return parts + _conclusion(node, target, indent, style)


def _mark_result(parts: list) -> list:
    """Mark the thread's last verdict (its last ``=> ``, after any nested block) as its result."""
    last = parts[-1] if parts else None
    if not isinstance(last, str) or "=> " not in last:
        return parts  # ends with a block, or no verdict: the thread gives no result
    head, _, tail = last.rpartition("=> ")
    return parts[:-1] + [f"{head}=> {RESULT}{tail}"]


def _render_dfs(node: Node, target: int, indent: str, lead: str, style: Style) -> list:
    """Depth-first rendering that stops at the first solution: the children of a
    fanning-out node are tried one after the other, and the siblings after the
    first one that reaches the target are never written."""
    goal = target if style.show_target else None
    if node.is_leaf:
        return [_leaf(node, target, style)]
    parts: list = []
    for k, child in enumerate(node.children):
        parts.append((lead if k == 0 else "\n" + indent) + child.outline(goal))
        parts += _render_dfs(child, target, indent + " ", "\n" + indent + " ", style)
        if child.found is not None:
            break
    return parts + _conclusion(node, target, indent, style)


def render_tree(root: Node, target: int, mode: str, style: Style = Style()) -> str:
    """The completion for an explored tree (which must contain a solution).
    ``mode``: ``parallel`` (fork/join), ``sequential`` (the same nodes as one chain)
    or ``dfs`` (one chain that stops at the first solution)."""
    if root.found is None:
        raise ValueError("the search found no solution; nothing to render")
    if mode not in ("parallel", "sequential", "dfs"):
        raise ValueError(f"mode must be parallel, sequential or dfs, got {mode!r}")
    if mode == "dfs":
        parts = _render_dfs(root, target, "", "", style)
    else:
        parts = _render_parts(root, target, mode == "parallel", "", "", style)
    text = render(_merge_text(parts)).lstrip()
    return text if style.leaf_answers else f"{text}\nAnswer: {root.found}"


def _merge_text(parts: list) -> list:
    out: list = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------
# Problems, splits, candidates


def problem_key(nums: Sequence[int], target: int) -> str:
    return " ".join(str(int(v)) for v in sorted(nums)) + f" -> {int(target)}"


def split_of(nums: Sequence[int], target: int, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """The split a problem belongs to: a stable hash of its key (never Python's hash)."""
    digest = hashlib.sha256(f"{TASK}|{problem_key(nums, target)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1]


@dataclass(frozen=True)
class GenConfig:
    n_numbers: int = task.N_NUMBERS
    seed: int = 0
    split: str = "train"
    mode: str = "parallel"
    max_depth: int = 2
    widths: tuple = DEFAULT_WIDTHS
    num_range: tuple = task.NUM_RANGE
    target_range: tuple = task.TARGET_RANGE
    restate: bool = False  # parallel: each thread starts by restating its outline
    show_target: bool = False  # every state ends with the target: [3 21|24]
    moves: str = "best"  # which moves a state tries: see search()
    leaf_answers: bool = False  # the solving move states the answer (see Style)
    bare_outlines: bool = False  # parallel: outlines are only "i:", threads write their moves
    results: bool = False  # parallel: a thread's last verdict is marked <Result> (summary join)
    split_fractions: tuple = DEFAULT_SPLIT_FRACTIONS  # train/val/test shares of the problem space
    parallel_fraction: float = 0.5  # mixed: share of records rendered in parallel (the rest: dfs)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 2 <= self.n_numbers <= 6:
            raise ValueError(f"n_numbers must be in 2..6, got {self.n_numbers}")
        if self.max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {self.max_depth}")
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        if (
            len(self.split_fractions) != 3
            or min(self.split_fractions) < 0
            or abs(sum(self.split_fractions) - 1.0) > 1e-9
        ):
            raise ValueError(f"split_fractions must be three shares summing to 1, got {self.split_fractions}")
        if not 0.0 <= self.parallel_fraction <= 1.0:
            raise ValueError(f"parallel_fraction must be in [0, 1], got {self.parallel_fraction}")
        for name in ("num_range", "target_range"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be LO,HI with 1 <= LO <= HI, got {lo},{hi}")


def candidate_rng(cfg: GenConfig, k: int) -> random.Random:
    # str seeds are hashed with sha512 by random.seed: stable across runs and processes
    ranges = (
        ""
        if (cfg.num_range, cfg.target_range) == (task.NUM_RANGE, task.TARGET_RANGE)
        else f"|range={cfg.num_range[0]}-{cfg.num_range[1]}|target={cfg.target_range[0]}-{cfg.target_range[1]}"
    )
    return random.Random(f"{TASK}|seed={cfg.seed}|split={cfg.split}|numbers={cfg.n_numbers}{ranges}|k={k}")


def make_candidate(cfg: GenConfig, k: int) -> dict | None:
    """Candidate ``k``: a checked record (plus internal fields starting with ``_``),
    or None when it belongs to another split or the search found no solution."""
    rng = candidate_rng(cfg, k)
    nums, target = task.make_problem(rng, cfg.n_numbers, tuple(cfg.num_range), tuple(cfg.target_range))
    if split_of(nums, target, cfg.split_fractions) != cfg.split:
        return None
    root = search(nums, target, rng, cfg.widths, cfg.max_depth, cfg.moves)
    if root.found is None:
        return {"_key": None}
    mode = cfg.mode
    if mode == "mixed":  # decided by the candidate's own stream: independent of workers
        mode = "parallel" if rng.random() < cfg.parallel_fraction else "dfs"
    style = Style(cfg.restate, cfg.show_target, cfg.leaf_answers, cfg.bare_outlines, cfg.results)
    completion = render_tree(root, target, mode, style)
    check_completion(completion, nums, target, cfg.max_depth)
    seq = completion if mode != "parallel" else render_tree(root, target, "dfs", style)
    return {
        "task": TASK,
        "prompt": task.prompt(nums, target),
        "completion": completion,
        "nums": list(nums),
        "target": int(target),
        "answer": root.found,
        "mode": mode,
        "_key": problem_key(nums, target),
        "_seq_tokens": metrics.total_tokens(seq),
    }


def check_completion(completion: str, nums: Sequence[int], target: int, max_depth: int) -> None:
    """Raise unless the completion parses strictly and its answer verifies."""
    parse(completion, Limits(max_depth=max_depth))  # raises FormatError
    verdict = task.verify(task.extract_answer(completion), nums, target)
    if not verdict.ok:
        raise RuntimeError(f"generated answer fails verification ({verdict.reason}): {completion!r}")


def _chunk(args: tuple) -> list:
    cfg, start, stop = args
    return [make_candidate(cfg, k) for k in range(start, stop)]


def generate(
    cfg: GenConfig,
    n: int,
    workers: int = 1,
    chunk_size: int = 64,
    progress: bool | None = None,
    info: dict | None = None,
) -> list[dict]:
    """The first ``n`` distinct problems of the split with a solved search, as
    records (internal ``_`` fields included), in candidate order. Output depends
    only on ``cfg`` and ``n``, never on ``workers`` or ``chunk_size``. ``info``, when
    given, receives counts (candidates, other_split, unsolved, duplicates)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    max_candidates = 1000 * n + 100_000
    records: list[dict] = []
    seen: set = set()
    counts = {"candidates": 0, "other_split": 0, "unsolved": 0, "duplicates": 0}
    try:
        from tqdm import tqdm

        bar = tqdm(
            total=n,
            desc=f"countdown {cfg.split}/{cfg.mode}",
            unit="problem",
            disable=(None if progress is None else not progress),
            file=sys.stderr,
        )
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    jobs = ((cfg, start, min(start + chunk_size, max_candidates)) for start in range(0, max_candidates, chunk_size))
    pool = mp.get_context().Pool(workers) if workers > 1 else None
    try:
        # imap yields chunks in index order while the workers run ahead; the pool is
        # terminated as soon as n records are kept
        for chunk in pool.imap(_chunk, jobs) if pool else map(_chunk, jobs):
            for rec in chunk:
                counts["candidates"] += 1
                if rec is None:
                    counts["other_split"] += 1
                elif rec["_key"] is None:
                    counts["unsolved"] += 1
                elif rec["_key"] in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(rec["_key"])
                    records.append({"id": f"{TASK}-{cfg.split}-{len(records):06d}", **rec})
                    if bar is not None:
                        bar.update(1)
                    if len(records) == n:
                        break
            if len(records) == n:
                break
        else:
            raise RuntimeError(
                f"only {len(records)} of {n} problems after {max_candidates} candidates; "
                f"widen the search (--widths) or lower --n"
            )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    if info is not None:
        info.update(counts)
    return records


PUBLIC_KEYS = ("id", "task", "prompt", "completion", "nums", "target", "answer", "mode")


def write_jsonl(records: Iterable[dict], path: str) -> None:
    """Write the public keys of ``records`` as JSONL, atomically (tmp file + rename)."""
    files.write_jsonl(path, ({k: rec[k] for k in PUBLIC_KEYS} for rec in records))


# ---------------------------------------------------------------------------
# Statistics


def summarize(records: Sequence[dict], baseline_totals: Sequence[float] | None = None) -> dict:
    """Metrics over records (their ``completion``), via :func:`metrics.stats` with the
    default token counter and :func:`metrics.aggregate`; ``baseline_totals`` (one per
    record) adds the speedup against a sequential baseline."""
    records = list(records)
    rows = [metrics.stats(r["completion"]).as_dict() for r in records]
    out = metrics.aggregate(rows, baseline_totals)
    if not rows:
        return out
    blocks = sum(r["blocks"] for r in rows)
    threads = sum(r["threads"] for r in rows)
    out["threads_per_block"] = threads / blocks if blocks else 0.0
    out["traces_with_blocks"] = sum(r["blocks"] > 0 for r in rows) / len(rows)
    out["max_depth"] = max(r["max_depth"] for r in rows)
    out["chars_mean"] = sum(len(r["completion"]) for r in records) / len(records)
    return out


_TABLE = [
    ("n", "problems", "{:d}"),
    ("chars_mean", "mean characters per completion", "{:.1f}"),
    ("total_tokens_mean", "mean total tokens (approx_count)", "{:.1f}"),
    ("critical_path_mean", "mean critical path", "{:.1f}"),
    ("speedup_mean_of_ratios", "speedup, mean of ratios", "{:.3f}"),
    ("speedup_ratio_of_means", "speedup, ratio of means", "{:.3f}"),
    ("speedup_vs_baseline_mean_of_ratios", "vs dfs render, mean of ratios", "{:.3f}"),
    ("speedup_vs_baseline_ratio_of_means", "vs dfs render, ratio of means", "{:.3f}"),
    ("blocks_mean", "blocks per trace", "{:.2f}"),
    ("threads_per_block", "threads per block", "{:.2f}"),
    ("traces_with_blocks", "share of traces with a block", "{:.3f}"),
    ("max_depth", "max nesting depth", "{:d}"),
]


def format_table(summary: dict, extra: dict | None = None) -> str:
    rows = [(label, fmt.format(summary[key])) for key, label, fmt in _TABLE if key in summary]
    for label, value in (extra or {}).items():
        rows.append((label, str(value)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ---------------------------------------------------------------------------
# CLI


def _widths(text: str) -> tuple:
    try:
        ws = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not ws or any(w < 1 for w in ws):
        raise argparse.ArgumentTypeError(f"widths must be positive integers, got {text!r}")
    return ws


def _fractions(text: str) -> tuple:
    try:
        fr = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated shares, got {text!r}") from None
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-9:
        raise argparse.ArgumentTypeError(f"expected three non-negative shares summing to 1, got {text!r}")
    return fr


def _bounded(lo: int, hi: int | None = None):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi if hi is not None else 'inf'}, got {v}")
        return v

    return conv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_gen.countdown",
        description="Generate Countdown search traces (parallel or sequential) as JSONL.",
    )
    p.add_argument("--n", type=_bounded(1), default=1000, help="number of records to write (default 1000)")
    p.add_argument(
        "--numbers", type=_bounded(2, 6), default=task.N_NUMBERS, help="input numbers per problem (default 4)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--mode", choices=MODES, default="parallel")
    p.add_argument(
        "--max-depth", type=_bounded(0), default=2, help="maximum nesting depth of parallel blocks (default 2)"
    )
    p.add_argument(
        "--widths",
        type=_widths,
        default=DEFAULT_WIDTHS,
        help="moves kept per search level, comma-separated, the last repeats (default 3,2)",
    )
    p.add_argument(
        "--num-range",
        type=parse_range,
        default=task.NUM_RANGE,
        help="input numbers are drawn uniformly from LO..HI (default %(default)s: 1,99)",
    )
    p.add_argument(
        "--target-range",
        type=parse_range,
        default=task.TARGET_RANGE,
        help="targets are drawn among the reachable values in LO..HI (default 10,100)",
    )
    p.add_argument(
        "--split-fractions",
        type=_fractions,
        default=DEFAULT_SPLIT_FRACTIONS,
        help="train,val,test shares of the problem space (default 0.9,0.05,0.05); every split of "
        "one dataset must be generated with the same shares",
    )
    p.add_argument(
        "--parallel-fraction",
        type=float,
        default=0.5,
        help="--mode mixed: share of records written as fork/join traces, the rest as dfs (default 0.5)",
    )
    p.add_argument(
        "--moves",
        choices=MOVE_RULES,
        default="best",
        help="best: the --widths best moves of a state by the heuristic (default); per-pair: for each "
        "pair of numbers in order, its --widths best operations",
    )
    p.add_argument(
        "--leaf-answers",
        action="store_true",
        help="the move that reaches the target writes '=> Answer: EXPR'; nothing is restated after it",
    )
    p.add_argument(
        "--show-target",
        action="store_true",
        help="every search state ends with the target ([3 21|24]): the check against it is local",
    )
    p.add_argument(
        "--restate",
        action="store_true",
        help="parallel mode: each thread starts by restating its outline (its move and numbers)",
    )
    p.add_argument(
        "--results",
        action="store_true",
        help="parallel mode: each thread marks its last verdict as its result ('=> <Result>none'), "
        "what a summary join shows the text after the block",
    )
    p.add_argument(
        "--bare-outlines",
        action="store_true",
        help="parallel mode: an outline is only its number ('1:') and the thread writes its own move "
        "(shortens the critical path; with --moves per-pair the move follows from the number)",
    )
    p.add_argument("--workers", type=_bounded(1), default=1)
    p.add_argument(
        "--chunk-size", type=_bounded(1), default=64, help="candidates per worker task (does not change the output)"
    )
    p.add_argument("--out", required=True, help="output JSONL path")
    p.add_argument("--stats", action="store_true", help="print statistics of the written records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = GenConfig(
        n_numbers=args.numbers,
        seed=args.seed,
        split=args.split,
        mode=args.mode,
        max_depth=args.max_depth,
        widths=args.widths,
        num_range=args.num_range,
        target_range=args.target_range,
        restate=args.restate,
        show_target=args.show_target,
        moves=args.moves,
        leaf_answers=args.leaf_answers,
        bare_outlines=args.bare_outlines,
        results=args.results,
        split_fractions=args.split_fractions,
        parallel_fraction=args.parallel_fraction,
    )
    t0 = time.perf_counter()
    info: dict = {}
    records = generate(
        cfg,
        args.n,
        workers=args.workers,
        chunk_size=args.chunk_size,
        progress=False if args.no_progress else None,
        info=info,
    )
    write_jsonl(records, args.out)
    dt = time.perf_counter() - t0
    print(f"wrote {len(records)} records to {args.out} in {dt:.1f}s", file=sys.stderr)
    if args.stats:
        base = [r["_seq_tokens"] for r in records] if cfg.mode in ("parallel", "mixed") else None
        summary = summarize(records, base)
        tried = info["candidates"] - info["other_split"]
        extra = {
            "search success rate (own split)": f"{(tried - info['unsolved']) / max(tried, 1):.3f}",
            "candidates (other split / unsolved / duplicate)": f"{info['candidates']} ({info['other_split']} / {info['unsolved']} / {info['duplicates']})",
        }
        print(
            f"countdown {cfg.split} mode={cfg.mode} numbers={cfg.n_numbers} max_depth={cfg.max_depth} "
            f"widths={','.join(map(str, cfg.widths))} seed={cfg.seed}"
        )
        print(format_table(summary, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
