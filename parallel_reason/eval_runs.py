"""Benchmark run directories (written by :mod:`eval.benchmark`), read back: the
rows of ``results.jsonl``, the ``summary.json`` and the speedup of one run against
a sequential baseline. The comparison tool (:mod:`eval.compare`) and model cards
(:mod:`parallel_reason.hub`) both read runs through this module.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .inputs import InputError
from .metrics import aggregate

RESULTS = "results.jsonl"
SUMMARY = "summary.json"


def read_rows(path: str | Path) -> tuple[list[dict], int]:
    """Rows of a results file and the number of unreadable lines (a truncated last
    line, say). Rows without an ``id`` count as unreadable; a repeated id keeps its
    first row."""
    rows, bad = scan_rows(path)
    return rows, len(bad)


def scan_rows(path: str | Path) -> tuple[list[dict], list[int]]:
    """:func:`read_rows` with the numbers of the unreadable lines."""
    path = Path(path)
    if not path.exists():
        return [], []
    rows, bad, seen = [], [], set()
    with open(path, "rb") as f:
        data = f.read()
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad.append(lineno)
            continue
        if not isinstance(row, dict) or "id" not in row:
            bad.append(lineno)
            continue
        try:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
        except TypeError:  # an id that is not a JSON scalar
            bad.append(lineno)
            continue
        rows.append(row)
    return rows, bad


def samples_of(row: dict) -> list[dict]:
    """Every sample of a row (the row itself when it has one sample)."""
    return row.get("samples") or [row]


class Run:
    """One benchmark run directory."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        sp = self.path / SUMMARY
        if not sp.is_file():
            raise InputError(f"{self.path}: no {SUMMARY} (not a benchmark run directory?)")
        try:
            self.summary = json.loads(sp.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InputError(
                f"{sp}: not valid JSON ({e}); rerun eval.benchmark with --out {self.path} to rewrite it"
            ) from None
        if not isinstance(self.summary, dict):
            raise InputError(f"{sp}: expected a JSON object, got {type(self.summary).__name__}")
        rp = self.path / RESULTS
        rows, bad = scan_rows(rp)
        for lineno in bad:
            print(f"warning: {rp}:{lineno}: unreadable line skipped (truncated or not a result row)", file=sys.stderr)
        self.rows = [r for r in rows if _usable(r)]
        for r in rows:
            if not _usable(r):
                print(
                    f"warning: {rp}: row id {r['id']!r} lacks result fields (correct, total_tokens, "
                    "critical_path); skipped",
                    file=sys.stderr,
                )
        self.name = name or self.path.name
        self.mode = self.summary.get("mode", "?")

    def samples(self) -> list[dict]:
        return [s for r in self.rows for s in samples_of(r)]


def _usable(row: dict) -> bool:
    """Does every sample of the row carry what the table and the plots read?"""
    samples = row.get("samples") or [row]
    return isinstance(samples, list) and all(
        isinstance(s, dict) and "correct" in s and all(_count(s.get(k)) for k in ("total_tokens", "critical_path"))
        for s in samples
    )


def _count(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def baseline_speedups(run: Run, base: Run) -> dict:
    """Speedup of ``run`` against the sequential ``base`` on their common problems
    (same id and prompt): :func:`parallel_reason.metrics.aggregate` with one
    baseline total per sample (the baseline's mean total tokens on that problem)."""
    base_rows = {r["id"]: r for r in base.rows}
    samples, totals = [], []
    for r in run.rows:
        b = base_rows.get(r["id"])
        if b is None or b.get("prompt") != r.get("prompt"):
            continue
        bs = samples_of(b)
        bt = sum(s["total_tokens"] for s in bs) / len(bs)
        for s in samples_of(r):
            samples.append(s)
            totals.append(bt)
    if not samples:
        return {"baseline_common_problems": 0}
    agg = aggregate(samples, totals)
    return {
        "speedup_vs_baseline_mean_of_ratios": agg["speedup_vs_baseline_mean_of_ratios"],
        "speedup_vs_baseline_ratio_of_means": agg["speedup_vs_baseline_ratio_of_means"],
        "baseline_common_problems": len({r["id"] for r in run.rows if r["id"] in base_rows}),
    }


__all__ = ["RESULTS", "SUMMARY", "Run", "baseline_speedups", "read_rows", "samples_of", "scan_rows"]
