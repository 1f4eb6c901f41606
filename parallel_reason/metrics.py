"""Parallelism metrics, one implementation for the generator statistics, the rewards,
the runner and the evaluation: ``total_tokens``, ``critical_path``, ``speedup``
(:func:`speedup_vs` against a baseline), ``parallel_ratio``, and :func:`aggregate`
(mean of ratios and ratio of means). Only sampled tokens count: the thread openers
and the join written by the runner count nowhere. Input: a trajectory parsed from
text or from token ids. Definitions: docs/design.md#rewards-metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from .format import CONTROL_TAGS, OPTIONAL_TAGS, Block, Piece, Trajectory, parse_ids, parse_lenient

Counter = Callable[[Piece], int]  # tokens in a piece (text, or a tuple of ids)

_WORD_RE = re.compile(r"\d|\w+|[^\w\s]|\s+")


def approx_count(piece) -> int:
    """Token count without a tokenizer: digits one each, words, punctuation and
    whitespace runs one each; tuples of ids count their length."""
    if isinstance(piece, tuple):
        return len(piece)
    return len(_WORD_RE.findall(piece))


def tokenizer_counter(tokenizer) -> Counter:
    """Counter that tokenizes text pieces with ``tokenizer`` (no special tokens added)."""

    def count(piece) -> int:
        if isinstance(piece, tuple):
            return len(piece)
        if not piece:
            return 0
        return len(tokenizer(piece, add_special_tokens=False)["input_ids"])

    return count


def _seq_cost(parts: list, count: Counter) -> tuple[int, int]:
    """(total, critical path) of a list of parts."""
    total = cp = 0
    for p in parts:
        if isinstance(p, Block):
            t, c = _block_cost(p, count)
        else:
            t = c = count(p)
        total += t
        cp += c
    return total, cp


def _block_cost(b: Block, count: Counter) -> tuple[int, int]:
    # sampled non-thread tokens: <Parallel>, pre-outlines text, <Outlines>, each
    # outline with its tags and separators, </Outlines>
    own = 1 + count(b.pre_outlines)
    if b.has_outlines:
        own += 1
        own += sum(count(s) for s in b.outline_seps)
        own += sum(count(o) for o in b.outlines)
        own += 2 * len(b.outlines) - (1 if b.open_outline else 0)
        own += 1 if b.outlines_closed else 0
    total, longest = own, 0
    for t in b.threads:
        tt, tc = _seq_cost(t.parts, count)
        tt += 1 if t.closed else 0  # </Thread> is sampled
        tc += 1 if t.closed else 0
        total += tt
        longest = max(longest, tc)
    return total, own + longest


@dataclass
class TrajectoryStats:
    """Per-trajectory metrics."""

    total_tokens: int
    critical_path: int
    speedup: float
    parallel_ratio: float
    blocks: int
    threads: int
    max_depth: int

    def as_dict(self) -> dict:
        return asdict(self)


def _as_traj(x) -> Trajectory:
    if isinstance(x, Trajectory):
        return x
    if isinstance(x, str):
        return parse_lenient(x)[0]
    raise TypeError(f"expected a Trajectory or text, got {type(x).__name__}")


def total_tokens(traj, count: Counter = approx_count) -> int:
    return _seq_cost(_as_traj(traj).parts, count)[0]


def critical_path(traj, count: Counter = approx_count) -> int:
    return _seq_cost(_as_traj(traj).parts, count)[1]


def speedup(traj, count: Counter = approx_count) -> float:
    t, c = _seq_cost(_as_traj(traj).parts, count)
    return t / c if c else 1.0


def speedup_vs(baseline_total: int, critical: int) -> float:
    """Speedup of a parallel trajectory against a sequential baseline."""
    return baseline_total / critical if critical else 1.0


def parallel_ratio(traj, count: Counter = approx_count) -> float:
    traj = _as_traj(traj)
    total = _seq_cost(traj.parts, count)[0]
    inside = 0
    for p in traj.parts:
        if isinstance(p, Block):
            for t in p.threads:
                inside += _seq_cost(t.parts, count)[0] + (1 if t.closed else 0)
    return inside / total if total else 0.0


def stats(traj, count: Counter = approx_count) -> TrajectoryStats:
    """All metrics of one trajectory (text or parsed)."""
    traj = _as_traj(traj)
    t, c = _seq_cost(traj.parts, count)
    blocks = traj.blocks()
    return TrajectoryStats(
        total_tokens=t,
        critical_path=c,
        speedup=t / c if c else 1.0,
        parallel_ratio=parallel_ratio(traj, count),
        blocks=len(blocks),
        threads=sum(b.width for b, _ in blocks),
        max_depth=max((d for _, d in blocks), default=0),
    )


def control_tag_ids(tokenizer) -> dict[int, str]:
    """Map token id -> tag for the control tags of ``tokenizer`` (they must be added)."""
    out = {}
    vocab = tokenizer.get_vocab()
    for tag in CONTROL_TAGS + tuple(t for t in OPTIONAL_TAGS if t in vocab):
        tid = tokenizer.convert_tokens_to_ids(tag)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(
                f"tokenizer has no single token for {tag}; call parallel_reason.tokens.add_control_tokens first"
            )
        out[int(tid)] = tag
    return out


def trajectory_from_ids(ids: Sequence[int], tokenizer) -> Trajectory:
    """Parse completion token ids (leniently) into a trajectory of id tuples, splitting
    each thread's header (the ids the runner writes for ``i:``) from its body."""
    cache: dict[int, tuple] = {}

    def header_ids(i: int) -> tuple:
        if i not in cache:
            cache[i] = tuple(tokenizer(f"{i}:", add_special_tokens=False)["input_ids"])
        return cache[i]

    traj, _ = parse_ids(ids, control_tag_ids(tokenizer), header_ids)
    return traj


def stats_from_ids(ids: Sequence[int], tokenizer) -> TrajectoryStats:
    """Metrics of a completion given as token ids; every id counts as one token."""
    return stats(trajectory_from_ids(ids, tokenizer), count=len)


def aggregate(rows: Iterable[dict], baseline_total: Sequence[float] | None = None) -> dict:
    """Summary over problems: means of total and critical path, and speedup both as
    the mean of per-problem ratios (``speedup_mean_of_ratios``) and as the ratio of
    means (``speedup_ratio_of_means``). With ``baseline_total`` (one per row, same
    order), the speedups against that baseline are added too."""
    rows = list(rows)
    n = len(rows)
    if n == 0:
        return {"n": 0}
    tot = [r["total_tokens"] for r in rows]
    cp = [max(r["critical_path"], 1) for r in rows]
    out = {
        "n": n,
        "total_tokens_mean": sum(tot) / n,
        "critical_path_mean": sum(cp) / n,
        "speedup_mean_of_ratios": sum(t / c for t, c in zip(tot, cp)) / n,
        "speedup_ratio_of_means": sum(tot) / sum(cp),
    }
    if baseline_total is not None:
        base = list(baseline_total)
        if len(base) != n:
            raise ValueError(f"baseline_total has {len(base)} entries for {n} rows")
        out["speedup_vs_baseline_mean_of_ratios"] = sum(b / c for b, c in zip(base, cp)) / n
        out["speedup_vs_baseline_ratio_of_means"] = sum(base) / sum(cp)
    for key in ("blocks", "threads"):
        if all(key in r for r in rows):
            out[f"{key}_mean"] = sum(r[key] for r in rows) / n
    return out


def format_cell(rec: dict, key: str, fmt: str | None) -> str:
    """One table cell of an aggregated record (``eval.compare``, the model card):
    pass@k as ``@k value`` pairs, ``baseline`` in the baseline's own vs-baseline
    columns, ``n/a`` for a missing value, else ``fmt.format(value)``."""
    v = rec.get(key)
    if key == "pass_at_k":
        if not v:
            return "-"
        try:
            return ", ".join(f"@{k} {float(x):.3f}" for k, x in sorted(v.items(), key=lambda kv: int(kv[0])))
        except (AttributeError, TypeError, ValueError):  # not {k: value}: shown as it is
            return str(v)
    if (key.startswith("speedup_vs_baseline") or key == "cp_over_baseline_tokens") and rec.get("is_baseline"):
        return "baseline"
    if v is None:
        return "n/a"
    if fmt is None:
        return str(v)
    try:
        return fmt.format(v)
    except (ValueError, TypeError, AttributeError):
        return str(v)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a rate ``k / n`` (95% for ``z = 1.96``); ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def markdown_table(records, columns) -> list[str]:
    """Markdown lines of a table: ``columns`` are ``(header, key, format)``, one row per record."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(format_cell(r, k, f) for _, k, f in columns) + " |" for r in records]
    return lines
