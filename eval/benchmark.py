"""Benchmark a model on a task with the fork/join runner.

    python -m eval.benchmark --model DIR --task countdown --data test.jsonl \\
        --mode parallel --n 500 --out runs/par
    python -m eval.benchmark --model DIR --task math --data openai/gsm8k --config main \\
        --split test --mode parallel --temperature 0.6 --samples 8 --out runs/gsm8k

``--mode sequential`` is the same runner with ``parallel=False`` (tags are ordinary
tokens: the sequential baseline). Greedy by default; sample ``j`` of a problem is
seeded from ``--seed``, the problem id and ``j``. Writes ``results.jsonl`` (one row
per problem, resumable), ``summary.json`` and ``config.json``; metrics come from
:mod:`parallel_reason.metrics`. See docs/design.md#data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from parallel_reason.eval_runs import RESULTS, SUMMARY, read_rows, samples_of
from parallel_reason.evaluate import (
    RUNNER_KEYS,
    SAMPLE_FIELDS,
    add_runner_args,
    decode_and_score,
    load_problems,
    load_runner,
    parse_runner_args,
)
from parallel_reason.files import atomic_write, write_jsonl
from parallel_reason.inputs import reports_input_errors
from parallel_reason.metrics import aggregate

log = logging.getLogger("eval.benchmark")

TASK_NAMES = ("countdown", "math")
MODES = ("parallel", "sequential")
CONFIG = "config.json"

#: fields of a row of results.jsonl
ROW_FIELDS = {
    "id": "problem id",
    "task": "task name",
    "mode": "parallel | sequential",
    "prompt": "prompt text given to the model",
    "reference": "countdown: {nums, target}; math: the reference final answer",
    "seed": "seed of the problem's generators (sampling only; null when greedy)",
    "n_samples": "K",
    "n_correct": "correct samples",
    "wall_clock_amortized_s": "measured seconds of the chunk this problem was decoded in / problems in it",
    **SAMPLE_FIELDS,
    "samples": "K > 1 only: every sample's fields",
    "pass_at_k": "K > 1 only: unbiased pass@k estimates of this problem, {k: value}",
}

#: settings that decide the results: a resumed run must match them
CONFIG_KEYS = (
    "task",
    "mode",
    "model",
    "data",
    "split",
    "config",
    "prompt_field",
    "question_field",
    "answer_field",
    "answer_pattern",
    "prompt_template",
    "chat_template",
    "samples",
    *RUNNER_KEYS,
)


# ---------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from ``n`` samples with ``c`` correct (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, computed as a stable product."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(n: int) -> list[int]:
    """The k reported for ``n`` samples: 1, powers of two below n, and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


# ---------------------------------------------------------------------------
# Results file


def repair_results(path: Path) -> list[dict]:
    """Read the rows of ``path``; when some line is unreadable (or the file does not
    end with a newline) rewrite it with the readable rows only, so that appending
    goes on from a clean line."""
    rows, bad = read_rows(path)
    if not path.exists():
        return rows
    raw = path.read_bytes()
    if bad or (raw and not raw.endswith(b"\n")) or len(rows) != sum(1 for line in raw.split(b"\n") if line.strip()):
        if bad:
            log.warning("%s: dropped %d unreadable line(s); those problems are decoded again", path, bad)
        write_jsonl(path, rows)
    return rows


def make_row(task: str, mode: str, problem: dict, samples: list[dict], seed: int | None, amortized_s: float) -> dict:
    k = len(samples)
    c = sum(1 for s in samples if s["correct"])
    prompt = problem["prompt"]
    row = {
        "id": problem["id"],
        "task": task,
        "mode": mode,
        "prompt": prompt,
        "reference": problem["reference"],
        "seed": seed,
        "n_samples": k,
        "n_correct": c,
        "wall_clock_amortized_s": amortized_s,
    }
    row.update(samples[0])
    if k > 1:
        row["samples"] = samples
        row["pass_at_k"] = {str(kk): pass_at_k(k, c, kk) for kk in ks_for(k)}
    return row


# ---------------------------------------------------------------------------
# Summary


def summarize(rows: Sequence[dict], meta: dict | None = None) -> dict:
    """Aggregate over problems (every sample of every row counts once):
    accuracy (= mean correctness = unbiased pass@1), pass@k (K > 1: mean over
    problems of the per-problem estimates), the token metrics of
    :func:`parallel_reason.metrics.aggregate` (speedup as the mean of per-sample
    ratios and as the ratio of means), wall-clock (``wall_clock_total_s``: measured
    decoding time of all chunks; ``wall_clock_per_problem_s`` = total / problems;
    ``wall_clock_latency_mean_s``: mean over problems of the slowest sample's own
    admission-to-end time), format-valid rate and finish-reason counts."""
    rows = list(rows)
    samples = [s for r in rows for s in samples_of(r)]
    n = len(rows)
    out: dict = dict(meta or {})
    out["n_problems"] = n
    out["n_samples"] = len(samples)
    if not samples:
        return out
    out["samples_per_problem"] = max(int(r.get("n_samples", 1)) for r in rows)
    out["accuracy"] = sum(1 for s in samples if s["correct"]) / len(samples)
    ks = [int(k) for k in (rows[0].get("pass_at_k") or {})]
    if ks and all(r.get("pass_at_k") for r in rows):
        out["pass_at_k"] = {
            str(k): sum(r["pass_at_k"][str(k)] for r in rows) / n
            for k in ks
            if all(str(k) in r["pass_at_k"] for r in rows)
        }
    out["answer_rate"] = sum(1 for s in samples if s.get("answer") is not None) / len(samples)
    agg = aggregate(samples)
    agg.pop("n", None)
    out.update(agg)
    total_s = sum(float(r.get("wall_clock_amortized_s", 0.0)) for r in rows)
    out["wall_clock_total_s"] = total_s
    out["wall_clock_per_problem_s"] = total_s / n
    out["wall_clock_latency_mean_s"] = sum(max(s["wall_clock_s"] for s in samples_of(r)) for r in rows) / n
    out["format_valid_rate"] = sum(1 for s in samples if s["format_valid"]) / len(samples)
    out["finish_reasons"] = dict(Counter(s["finish_reason"] for s in samples).most_common())
    return out


# ---------------------------------------------------------------------------
# Runner


def config_of(args) -> dict:
    cfg = {k: getattr(args, k) for k in CONFIG_KEYS}
    cfg["model"] = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    cfg["data"] = os.path.abspath(args.data) if os.path.exists(args.data) else args.data
    return cfg


def check_config(out: Path, cfg: dict, overwrite: bool) -> None:
    path = out / CONFIG
    res = out / RESULTS
    if overwrite:
        for p in (res, out / SUMMARY, path):
            if p.exists():
                p.unlink()
    elif path.exists() and read_rows(res)[0]:  # results without rows (a failed start) do not bind
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if not isinstance(old, dict):
            raise SystemExit(
                f"{path} is unreadable, so the results in {out} cannot be matched to a "
                "configuration; use another --out or --overwrite"
            )
        diff = {k: (old.get(k), cfg[k]) for k in cfg if old.get(k) != cfg[k]}
        if diff:
            lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(
                f"{out} holds results of a different configuration ({lines}); use another --out or --overwrite"
            )
    atomic_write(path, json.dumps(cfg, indent=2) + "\n")


def run(args, argv: Sequence[str] | None = None) -> dict:
    """Run (or resume) a benchmark; returns the summary (also written to disk)."""
    problems = load_problems(
        args.data,
        args.task,
        args.split,
        args.config,
        args.n,
        args.prompt_field or None,
        args.question_field,
        args.answer_field,
        args.prompt_template,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_of(args)
    check_config(out, cfg, args.overwrite)
    res_path = out / RESULTS
    done_rows = repair_results(res_path)
    done = {r["id"] for r in done_rows}
    todo = [p for p in problems if p["id"] not in done]
    log.info("%d problems, %d already done, %d to decode", len(problems), len(problems) - len(todo), len(todo))

    decoded = 0
    if todo:
        runner = load_runner(args, parallel=(args.mode == "parallel"))
        with open(res_path, "a", encoding="utf-8", newline="\n") as f:
            for chunk, elapsed in decode_and_score(
                runner, todo, args, args.samples, total=len(problems), desc=f"{args.task}/{args.mode}"
            ):
                for d in chunk:
                    row = make_row(args.task, args.mode, d.problem, d.scores, d.seed, elapsed / len(chunk))
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                os.fsync(f.fileno())
                decoded += len(chunk)

    rows, _ = read_rows(res_path)
    wanted = {p["id"] for p in problems}
    rows = [r for r in rows if r["id"] in wanted]
    argv = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "task": args.task,
        "mode": args.mode,
        "model": cfg["model"],
        "data": cfg["data"],
        "split": args.split,
        "decoding": {k: cfg[k] for k in ("samples", *RUNNER_KEYS)}
        | {"batch_size": args.batch_size, "parallel": args.mode == "parallel", "chat_template": args.chat_template},
        "sequential_mode": "Runner(parallel=False): control tags are ordinary tokens, no forks",
        "engine": getattr(args, "engine", None) or "hf",
        "command": "python -m eval.benchmark " + shlex.join(argv),
        "argv": argv,
        "decoded_this_run": decoded,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": RESULTS,
    }
    summary = summarize(rows, meta)
    atomic_write(out / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


# ---------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.benchmark", description="Benchmark a model with the fork/join runner (resumable)."
    )
    p.add_argument("--model", required=True, help="model directory (or hub id already in the local cache)")
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--data", required=True, help="JSONL/JSON/parquet/CSV file, save_to_disk folder or datasets source")
    p.add_argument("--mode", choices=MODES, default="parallel")
    p.add_argument("--n", type=int, default=None, help="benchmark the first N problems (default all)")
    p.add_argument("--out", required=True, help="output directory (results.jsonl, summary.json, config.json)")
    p.add_argument("--samples", type=int, default=1, help="samples per problem K (pass@k when > 1)")
    p.add_argument("--overwrite", action="store_true", help="discard existing results in --out")
    add_runner_args(p, split="test", temperature=0.0, temperature_help="0 = greedy (default)")
    return p


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_runner_args(build_parser(), argv, "--samples")
    summary = run(args, argv)
    keys = (
        "n_problems",
        "accuracy",
        "pass_at_k",
        "total_tokens_mean",
        "critical_path_mean",
        "speedup_mean_of_ratios",
        "speedup_ratio_of_means",
        "wall_clock_per_problem_s",
        "format_valid_rate",
        "finish_reasons",
    )
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    print(f"wrote {Path(args.out) / RESULTS} and {Path(args.out) / SUMMARY}", file=sys.stderr)
    return 0


__all__ = ["ROW_FIELDS", "make_row", "pass_at_k", "repair_results", "run", "summarize", "main"]

if __name__ == "__main__":
    sys.exit(main())
