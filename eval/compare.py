"""Compare benchmark runs: a markdown table and two plots.

    python -m eval.compare runs/seq runs/par runs/par_rl --out runs/compare

Each run is an :mod:`eval.benchmark` directory. Writes ``compare.md`` (accuracy,
pass@k, tokens, critical path, speedup as mean of ratios and ratio of means, speedup
against the first sequential run or ``--baseline``, wall-clock, format-valid rate),
``accuracy_vs_budget.png`` and ``speedup_hist.png``. See docs/design.md#data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from parallel_reason.eval_runs import Run, baseline_speedups
from parallel_reason.inputs import InputError, reports_input_errors
from parallel_reason.metrics import markdown_table, wilson_interval

MD = "compare.md"
BUDGET_PNG = "accuracy_vs_budget.png"
HIST_PNG = "speedup_hist.png"

#: table columns: (header, key in a table record, format)
COLUMNS = [
    ("run", "name", "{}"),
    ("mode", "mode", "{}"),
    ("problems", "n_problems", "{:d}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("accuracy 95% CI", "accuracy_ci", "{}"),
    ("pass@k", "pass_at_k", None),
    ("forks", "fork_rate", "{:.3f}"),
    ("total tokens", "total_tokens_mean", "{:.1f}"),
    ("critical path", "critical_path_mean", "{:.1f}"),
    ("speedup (mean of ratios)", "speedup_mean_of_ratios", "{:.3f}"),
    ("speedup (ratio of means)", "speedup_ratio_of_means", "{:.3f}"),
    ("vs seq (mean of ratios)", "speedup_vs_baseline_mean_of_ratios", "{:.3f}"),
    ("vs seq (ratio of means)", "speedup_vs_baseline_ratio_of_means", "{:.3f}"),
    ("critical path / seq tokens", "cp_over_baseline_tokens", "{:.3f}"),
    ("wall-clock / problem (s)", "wall_clock_per_problem_s", "{:.3f}"),
    ("format valid", "format_valid_rate", "{:.3f}"),
    ("format valid 95% CI", "format_valid_ci", "{}"),
]


def rate_records(samples: Sequence[dict]) -> dict:
    """Rates over samples with their 95% Wilson intervals, and the share that forked."""
    n = len(samples)
    out: dict[str, str | float] = {}
    for key, field in (("accuracy_ci", "correct"), ("format_valid_ci", "format_valid")):
        k = sum(1 for s in samples if s.get(field))
        lo, hi = wilson_interval(k, n)
        out[key] = f"[{lo:.3f}, {hi:.3f}]"
    out["fork_rate"] = sum(1 for s in samples if (s.get("blocks") or 0) > 0) / n if n else 0.0
    return out


def table_records(runs: Sequence[Run], baseline: Run | None) -> list[dict]:
    out = []
    for run in runs:
        rec = {"name": run.name, "mode": run.mode}
        rec.update({k: run.summary.get(k) for _, k, _ in COLUMNS if k in run.summary})
        rec.update(rate_records(run.samples()))
        if baseline is not None:
            if run is baseline:
                rec["is_baseline"] = True
            else:
                rec.update(baseline_speedups(run, baseline))
                r = rec.get("speedup_vs_baseline_ratio_of_means")
                if r:
                    rec["cp_over_baseline_tokens"] = 1.0 / r
        out.append(rec)
    return out


def markdown(records: Sequence[dict], baseline: Run | None) -> str:
    lines = markdown_table(records, COLUMNS)
    notes = [
        "",
        "Speedup = total tokens / critical path of the same sample (mean of per-sample ratios, "
        "and ratio of the means). Accuracy = mean correctness over every sample (= pass@1).",
    ]
    if baseline is not None:
        notes.append(
            f"vs seq = sequential baseline `{baseline.name}`: baseline mean total tokens on the problem "
            "/ critical path, over the problems both runs hold."
        )
    else:
        notes.append("vs seq: n/a (no sequential run among the runs).")
    return "\n".join(lines + notes) + "\n"


def compare(
    paths: Sequence[str], out: str | Path = "compare", names: Sequence[str] | None = None, baseline: str | None = None
) -> dict:
    """Build the table and plots; returns ``{"markdown", "records", "files"}``."""
    from eval.plots import accuracy_vs_budget, speedup_histogram

    if names is not None and len(names) != len(paths):
        raise InputError(f"--names gives {len(names)} names for {len(paths)} runs")
    runs = [Run(p, names[i] if names else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    for r in runs:  # unique names
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name}#{seen[r.name]}"
        else:
            seen[r.name] = 0
    base = None
    if baseline is not None:
        matches = [
            r
            for r in runs
            if r.name == baseline or str(r.path) == baseline or r.path.resolve() == Path(baseline).resolve()
        ]
        if not matches:
            raise InputError(f"--baseline {baseline!r} is not one of the runs")
        base = matches[0]
    else:
        base = next((r for r in runs if r.mode == "sequential"), None)
    records = table_records(runs, base)
    md = markdown(records, base)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MD).write_text(md, encoding="utf-8")
    per_run = {r.name: r.samples() for r in runs}
    f1 = accuracy_vs_budget(per_run, out / BUDGET_PNG)
    f2 = speedup_histogram(per_run, out / HIST_PNG)
    return {"markdown": md, "records": records, "files": [str(out / MD), str(f1), str(f2)]}


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.compare", description="Compare eval.benchmark runs.")
    p.add_argument("runs", nargs="+", help="run directories (summary.json + results.jsonl)")
    p.add_argument("--out", default="compare", help="output directory (default ./compare)")
    p.add_argument("--names", default=None, help="comma-separated display names, one per run")
    p.add_argument("--baseline", default=None, help="the sequential baseline run (default: first sequential run)")
    args = p.parse_args(argv)
    res = compare(args.runs, args.out, args.names.split(",") if args.names else None, args.baseline)
    print(res["markdown"])
    print("wrote " + ", ".join(res["files"]), file=sys.stderr)
    return 0


__all__ = ["COLUMNS", "compare", "markdown", "table_records", "main"]

if __name__ == "__main__":
    sys.exit(main())
