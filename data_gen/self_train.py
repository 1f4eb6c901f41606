"""Self-training data: sample K fork/join trajectories per problem with the runner,
keep the correct, well-formed, parallel ones, write them as SFT data.

    python -m data_gen.self_train --model runs/demo/models/sft_parallel/final --input train.jsonl \\
        --k 8 --out runs/self_train/kept.jsonl
    python recipes/sft.py --config configs/sft/countdown_tiny.yaml --train_data runs/self_train/kept.jsonl \\
        --model_name_or_path DIR          # the output trains as it is

Problems are loaded, prompted, seeded and scored as :mod:`eval.benchmark` does. Each
sample is kept or gets the first failing reason (finish, grammar, answer, speedup,
re-tokenization, duplicate); ``--keep best`` keeps the fastest per problem. Runs
resume from ``OUT.progress.jsonl``; ``OUT.stats.json`` sums up. Filter, outputs
and the re-tokenization check: docs/design.md#data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from parallel_reason.data import DataError, read_records
from parallel_reason.evaluate import (
    RUNNER_KEYS,
    add_runner_args,
    decode_and_score,
    load_problems,
    load_runner,
    parse_runner_args,
)
from parallel_reason.files import atomic_write
from parallel_reason.finish import EOS, FINISH_REASONS
from parallel_reason.inputs import reports_input_errors
from parallel_reason.layout import graph_from_text
from parallel_reason.metrics import aggregate

log = logging.getLogger("data_gen.self_train")

TASK_NAMES = ("countdown", "math")
KEEP = ("best", "all")
SOURCE = "self_train"

#: rejection reasons (in the order they are checked); ``finish:<reason>`` for every
#: runner finish reason other than ``eos``
REASONS = tuple(f"finish:{r}" for r in FINISH_REASONS if r != EOS) + (
    "malformed",
    "no_answer",
    "incorrect",
    "no_block",
    "below_speedup",
    "retokenize_mismatch",
    "duplicate",
    "not_best",
)
KEPT = "kept"

#: settings that decide the output: a resumed run must match them
CONFIG_KEYS = (
    "task",
    "model",
    "input",
    "split",
    "config",
    "prompt_field",
    "question_field",
    "answer_field",
    "answer_pattern",
    "prompt_template",
    "chat_template",
    "k",
    *RUNNER_KEYS,
    "min_speedup",
    "keep",
    "require_same_tokens",
)


def side_paths(out: str | Path) -> tuple[Path, Path]:
    """``(OUT.progress.jsonl, OUT.stats.json)``."""
    out = Path(out)
    return out.with_name(out.name + ".progress.jsonl"), out.with_name(out.name + ".stats.json")


# ---------------------------------------------------------------------------
# Filtering


def same_tokens(
    rollout, prompt_text: str, completion: str, tokenizer, join: str = "concat", thread_header: str = "index"
) -> bool:
    """Does SFT's packed graph of ``prompt_text`` + ``completion`` (+ EOS), re-tokenized
    from text by :func:`parallel_reason.layout.graph_from_text` with the model's thread
    header mode, equal the graph the runner sampled (ids, predecessors, positions, loss mask)?"""
    try:
        g = graph_from_text(prompt_text, completion, tokenizer, join=join, eos=True, thread_header=thread_header)
    except ValueError:  # FormatError included: the text does not parse strictly
        return False
    r = rollout.graph
    return all(
        getattr(g, f).shape == getattr(r, f).shape and bool((getattr(g, f) == getattr(r, f)).all())
        for f in ("input_ids", "pred", "position_ids", "loss_mask")
    )


def judge(score: dict, min_speedup: float) -> str | None:
    """The first failed filter of a scored sample (see the module docstring), or None
    when it passes the per-sample filters (duplicates and the keep policy are decided
    per problem by :func:`select`)."""
    if score["finish_reason"] != EOS:
        return f"finish:{score['finish_reason']}"
    if not score["format_valid"]:
        return "malformed"
    if score["answer"] is None:
        return "no_answer"
    if not score["correct"]:
        return "incorrect"
    if min_speedup > 1 and score["blocks"] == 0:
        return "no_block"
    if score["speedup"] < min_speedup:
        return "below_speedup"
    return None


def select(
    scores: Sequence[dict], min_speedup: float, keep: str = "best", require_same_tokens: bool = False
) -> list[str]:
    """Verdict of every sample of one problem: ``"kept"`` or its rejection reason.
    ``scores`` are :func:`parallel_reason.evaluate.score_sample` dicts with ``retokenize_match``
    added (None where not checked)."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    verdicts: list[str] = []
    seen: set[str] = set()
    eligible: list[int] = []
    for i, s in enumerate(scores):
        reason = judge(s, min_speedup)
        if reason is None and require_same_tokens and not s.get("retokenize_match"):
            reason = "retokenize_mismatch"
        if reason is None and s["completion"] in seen:
            reason = "duplicate"
        if reason is None:
            seen.add(s["completion"])
            eligible.append(i)
            reason = KEPT
        verdicts.append(reason)
    if keep == "best" and len(eligible) > 1:
        best = max(eligible, key=lambda i: (scores[i]["speedup"], -scores[i]["total_tokens"], -i))
        for i in eligible:
            if i != best:
                verdicts[i] = "not_best"
    return verdicts


def sft_prompt(problem: dict, chat_template: bool):
    """The prompt as stored for SFT: rendered by ``parallel_reason.data.render_prompt``
    into the same text the runner was given."""
    p = problem["prompt"]
    if chat_template and isinstance(p, str):
        return [{"role": "user", "content": p}]
    return p


def make_record(task: str, problem: dict, score: dict, seed: int | None, model: str, chat_template: bool) -> dict:
    """One SFT record of a kept sample (see the module docstring)."""
    rec = {
        "id": f"{problem['id']}/{score['sample_index']}",
        "problem_id": problem["id"],
        "task": task,
        "prompt": sft_prompt(problem, chat_template),
        "completion": score["completion"],
    }
    rec.update(problem["args"])  # countdown: nums, target; math: answer (the reference)
    if task == "countdown":
        rec["answer"] = score["answer"]
    rec.update(
        {
            "model_answer": score["answer"],
            "mode": "parallel",
            "source": SOURCE,
            "model": model,
            "sample_index": score["sample_index"],
            "seed": seed,
            "total_tokens": score["total_tokens"],
            "critical_path": score["critical_path"],
            "speedup": score["speedup"],
            "blocks": score["blocks"],
            "threads": score["threads"],
            "retokenize_match": score["retokenize_match"],
        }
    )
    return rec


_MARK_FIELDS = (
    "sample_index",
    "finish_reason",
    "correct",
    "format_valid",
    "blocks",
    "threads",
    "total_tokens",
    "critical_path",
    "speedup",
    "retokenize_match",
    "replacement_char",
)


def make_marker(
    problem: dict, scores: Sequence[dict], verdicts: Sequence[str], seed: int | None, amortized_s: float
) -> dict:
    """The progress line of a finished problem."""
    samples = []
    for s, v in zip(scores, verdicts):
        d = {k: s[k] for k in _MARK_FIELDS}
        d["verdict"] = v
        if v == "malformed":
            d["format_problems"] = s["format_problems"]
        elif v in ("incorrect", "no_answer"):
            d["reason"] = s["verdict"]
        samples.append(d)
    return {
        "id": problem["id"],
        "seed": seed,
        "kept": sum(v == KEPT for v in verdicts),
        "wall_clock_amortized_s": amortized_s,
        "samples": samples,
    }


# ---------------------------------------------------------------------------
# Files


def _read_lines(path: Path) -> tuple[list[dict], int]:
    """JSON objects of a JSONL file and the number of unreadable lines."""
    if not path.exists():
        return [], 0
    out, bad = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
        else:
            bad += 1
    return out, bad


def _dump(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _clean(path: Path, bad: int) -> bool:
    """True when a JSONL file has no unreadable line and ends with a newline (or is empty)."""
    return not bad and (not path.exists() or path.read_bytes()[-1:] in (b"", b"\n"))


def read_progress(path: Path) -> tuple[dict | None, dict[str, dict]]:
    """``(settings, {problem id: marker})`` of a progress file (unreadable lines dropped;
    a repeated id keeps its first marker)."""
    rows, _ = _read_lines(path)
    cfg = None
    marks: dict[str, dict] = {}
    for r in rows:
        if "config" in r and "id" not in r and isinstance(r["config"], dict):
            cfg = cfg or r["config"]
        elif "id" in r and isinstance(r.get("samples"), list) and isinstance(r.get("kept"), int):
            marks.setdefault(str(r["id"]), r)
    return cfg, marks


def prepare_files(out: Path, cfg: dict, overwrite: bool) -> dict[str, dict]:
    """Check (or start) the output files for a run with settings ``cfg``; returns the
    markers of the finished problems. Files of a run that finished no problem (a
    start that failed) are started afresh, whatever their settings. Makes ``OUT`` and the progress file agree:
    records of problems without a marker, truncated lines, and problems whose record
    count differs from their marker are dropped (those problems are sampled again)."""
    progress, stats = side_paths(out)
    if overwrite:
        for p in (out, progress, stats):
            if p.exists():
                p.unlink()
    old_cfg, marks = read_progress(progress)
    ours = old_cfg is not None  # OUT was written by a run of ours
    if not marks:
        old_cfg = None  # a start that finished no problem (it failed): nothing to keep, nothing binds
    if old_cfg is not None:
        diff = {
            k: (old_cfg.get(k), cfg.get(k)) for k in sorted(set(cfg) | set(old_cfg)) if old_cfg.get(k) != cfg.get(k)
        }
        if diff:
            lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(
                f"{out} holds self-training data of a different configuration ({lines}); "
                f"use another --out or --overwrite"
            )
    elif out.exists() and out.stat().st_size > 0 and not ours:
        raise SystemExit(f"{out} exists but {progress.name} does not describe it; use another --out or --overwrite")
    raw, bad = _read_lines(out)
    records = [r for r in raw if "problem_id" in r and "id" in r]
    bad += len(raw) - len(records)
    have = Counter(str(r["problem_id"]) for r in records)
    done = {pid: m for pid, m in marks.items() if have.get(pid, 0) == int(m.get("kept", -1))}
    if len(done) != len(marks):
        log.warning(
            "%s: %d finished problem(s) lack some of their records; they are sampled again", out, len(marks) - len(done)
        )
    keep = [r for r in records if str(r["problem_id"]) in done]
    if not _clean(out, bad) or len(keep) != len(records):
        if bad or len(keep) != len(records):
            log.warning(
                "%s: dropped %d unreadable line(s) and %d record(s) of unfinished problems",
                out,
                bad,
                len(records) - len(keep),
            )
        atomic_write(out, _dump(keep))
    if old_cfg is None or len(done) != len(marks) or not _clean(progress, _read_lines(progress)[1]):
        atomic_write(progress, _dump([{"config": cfg}] + list(done.values())))
    if not out.exists():
        out.touch()
    return done


# ---------------------------------------------------------------------------
# Statistics


def summarize(markers: Sequence[dict], records: Sequence[dict], meta: dict | None = None) -> dict:
    """Statistics of a self-training run (see the module docstring)."""
    out: dict = {}
    samples = [s for m in markers for s in m["samples"]]
    n = len(samples)
    out["problems"] = len(markers)
    out["samples"] = n
    out["kept"] = len(records)
    out["kept_rate"] = len(records) / n if n else 0.0
    eligible = sum(1 for s in samples if s["verdict"] in (KEPT, "not_best"))
    out["eligible"] = eligible  # pass every filter (distinct); keep=best writes one per problem
    out["eligible_rate"] = eligible / n if n else 0.0
    with_kept = sum(1 for m in markers if m["kept"] > 0)
    out["problems_with_kept"] = with_kept
    out["problems_with_kept_rate"] = with_kept / len(markers) if markers else 0.0
    if n:
        out["accuracy"] = sum(1 for s in samples if s["correct"]) / n
        out["well_formed_rate"] = sum(1 for s in samples if s["format_valid"] and s["finish_reason"] == EOS) / n
        out["parallel_rate"] = sum(1 for s in samples if s["blocks"] > 0) / n
        out["speedup_all_mean"] = sum(s["speedup"] for s in samples) / n
        correct = [s for s in samples if s["correct"]]
        if correct:
            out["speedup_correct_mean"] = sum(s["speedup"] for s in correct) / len(correct)
    if records:
        agg = aggregate(records)
        out["speedup_kept_mean"] = agg["speedup_mean_of_ratios"]
        out["speedup_kept_median"] = statistics.median(r["speedup"] for r in records)
        out["speedup_kept_ratio_of_means"] = agg["speedup_ratio_of_means"]
        out["total_tokens_kept_mean"] = agg["total_tokens_mean"]
        out["critical_path_kept_mean"] = agg["critical_path_mean"]
        out["blocks_kept_mean"] = agg.get("blocks_mean", 0.0)
        out["threads_kept_mean"] = agg.get("threads_mean", 0.0)
    out["reasons"] = dict(Counter(s["verdict"] for s in samples).most_common())
    out["finish_reasons"] = dict(Counter(s["finish_reason"] for s in samples).most_common())
    checked = [s for s in samples if s["retokenize_match"] is not None]
    out["retokenize"] = {
        "checked": len(checked),  # samples that ended with EOS and are well formed
        "mismatches": sum(1 for s in checked if not s["retokenize_match"]),
        "mismatches_kept": sum(1 for r in records if not r["retokenize_match"]),
        # mismatches whose text holds U+FFFD: the model sampled byte tokens that are not valid UTF-8
        "mismatches_replacement_char": sum(
            1 for s in checked if not s["retokenize_match"] and s.get("replacement_char")
        ),
    }
    out["decode_wall_clock_s"] = sum(float(m.get("wall_clock_amortized_s", 0.0)) for m in markers)
    if meta:
        out.update(meta)
    return out


_TABLE = [
    ("problems", "problems", "{:d}"),
    ("samples", "samples", "{:d}"),
    ("kept", "kept records", "{:d}"),
    ("kept_rate", "kept / samples", "{:.3f}"),
    ("eligible_rate", "eligible (pass every filter) / samples", "{:.3f}"),
    ("problems_with_kept_rate", "problems with >= 1 kept", "{:.3f}"),
    ("accuracy", "accuracy (all samples)", "{:.3f}"),
    ("well_formed_rate", "well formed: EOS + strict grammar (all samples)", "{:.3f}"),
    ("speedup_kept_mean", "speedup of kept, mean", "{:.3f}"),
    ("speedup_kept_median", "speedup of kept, median", "{:.3f}"),
    ("total_tokens_kept_mean", "total tokens of kept, mean", "{:.1f}"),
    ("critical_path_kept_mean", "critical path of kept, mean", "{:.1f}"),
    ("decode_wall_clock_s", "decoding wall-clock (s)", "{:.1f}"),
]


def format_table(stats: dict) -> str:
    rows = [(label, fmt.format(stats[key])) for key, label, fmt in _TABLE if key in stats]
    rows.append(("reasons", ", ".join(f"{k} {v}" for k, v in stats.get("reasons", {}).items()) or "-"))
    rt = stats.get("retokenize", {})
    rows.append(
        (
            "re-tokenization mismatches",
            f"{rt.get('mismatches', 0)} of {rt.get('checked', 0)} checked "
            f"({rt.get('mismatches_replacement_char', 0)} with U+FFFD, "
            f"{rt.get('mismatches_kept', 0)} kept)",
        )
    )
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ---------------------------------------------------------------------------
# Run


def config_of(args) -> dict:
    cfg = {k: getattr(args, k) for k in CONFIG_KEYS}
    cfg["model"] = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    cfg["input"] = os.path.abspath(args.input) if os.path.exists(args.input) else args.input
    return cfg


def load(args) -> list[dict]:
    """The problems of ``--input`` (:func:`parallel_reason.evaluate.load_problems`); a record the
    task cannot use raises :class:`parallel_reason.data.DataError` naming it."""
    try:
        return load_problems(
            args.input,
            args.task,
            args.split,
            args.config,
            args.n,
            args.prompt_field or None,
            args.question_field,
            args.answer_field,
            args.prompt_template,
        )
    except DataError:
        raise
    except (ValueError, TypeError) as e:
        # a field of the wrong type (load_problems converts without naming the record): find it
        if args.task == "countdown":
            rows = read_records(args.input, args.split, args.config)
            for origin, rec in rows[: args.n] if args.n is not None and args.n >= 0 else rows:
                try:
                    [int(x) for x in rec["nums"]], int(rec["target"])
                except (ValueError, TypeError) as e2:
                    raise DataError(
                        f"{origin}: 'nums' must be a list of integers and 'target' an integer "
                        f"(nums={rec.get('nums')!r}, target={rec.get('target')!r}): {e2}"
                    ) from None
        raise DataError(f"{args.input}: {type(e).__name__}: {e}") from e


def run(args, argv: Sequence[str] | None = None) -> dict:
    """Sample, filter and write (or resume); returns the statistics (also written)."""
    t_start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    progress_path, stats_path = side_paths(out)
    cfg = config_of(args)
    problems = load(args)
    done = prepare_files(out, cfg, args.overwrite)
    todo = [p for p in problems if p["id"] not in done]
    log.info("%d problems, %d already done, %d to sample", len(problems), len(problems) - len(todo), len(todo))

    decoded = 0
    if todo:
        runner = load_runner(args, parallel=True)
        tok = runner.tokenizer
        with (
            open(out, "a", encoding="utf-8", newline="\n") as fo,
            open(progress_path, "a", encoding="utf-8", newline="\n") as fp,
        ):
            for chunk, elapsed in decode_and_score(
                runner, todo, args, args.k, total=len(problems), desc=f"self-train {args.task}"
            ):
                recs, marks = [], []
                for d in chunk:
                    p, scores = d.problem, d.scores
                    for ro, s in zip(d.rollouts, scores):
                        ok = s["finish_reason"] == EOS and s["format_valid"]
                        s["retokenize_match"] = (
                            same_tokens(ro, p["text"], s["completion"], tok, runner.join, runner.thread_header)
                            if ok
                            else None
                        )
                        # invalid UTF-8 byte tokens decode to U+FFFD: the text lost what was sampled
                        s["replacement_char"] = "\ufffd" in s["completion"]
                    verdicts = select(scores, args.min_speedup, args.keep, args.require_same_tokens)
                    recs += [
                        make_record(args.task, p, s, d.seed, cfg["model"], args.chat_template)
                        for s, v in zip(scores, verdicts)
                        if v == KEPT
                    ]
                    marks.append(make_marker(p, scores, verdicts, d.seed, elapsed / len(chunk)))
                # records first, then the markers that declare their problems finished
                fo.write(_dump(recs))
                fo.flush()
                os.fsync(fo.fileno())
                fp.write(_dump(marks))
                fp.flush()
                os.fsync(fp.fileno())
                for m in marks:
                    done[m["id"]] = m
                decoded += len(chunk)

    wanted = {p["id"] for p in problems}
    markers = [done[p["id"]] for p in problems if p["id"] in done]
    all_records, _ = _read_lines(out)
    records = [r for r in all_records if r.get("problem_id") in wanted]
    argv = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "settings": cfg
        | {"n": args.n, "batch_size": args.batch_size, "chunk_size": args.chunk_size, "dtype": args.dtype},
        "command": "python -m data_gen.self_train " + shlex.join(argv),
        "decoded_this_run": decoded,
        "wall_clock_this_run_s": time.perf_counter() - t_start,
        "records_in_file": len(all_records),
        "files": {"out": str(out), "progress": str(progress_path), "stats": str(stats_path)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    stats = summarize(markers, records, meta)
    atomic_write(stats_path, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats


# ---------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_gen.self_train",
        description="Sample K fork/join trajectories per problem, keep the correct, "
        "well-formed, parallel ones as SFT data (resumable).",
    )
    p.add_argument("--model", required=True, help="model directory (or hub id already in the local cache)")
    p.add_argument(
        "--input",
        "--data",
        dest="input",
        required=True,
        help="problems: JSONL/JSON/parquet/CSV file, save_to_disk folder or datasets source",
    )
    p.add_argument("--task", choices=TASK_NAMES, default="countdown")
    p.add_argument("--out", required=True, help="output JSONL (side files OUT.progress.jsonl, OUT.stats.json)")
    p.add_argument("--k", type=int, default=8, help="samples per problem (default 8)")
    p.add_argument("--n", type=int, default=None, help="the first N problems (default all)")
    p.add_argument(
        "--min-speedup",
        type=float,
        default=1.2,
        help="keep samples with total/critical-path >= this (default 1.2; <= 1 also keeps "
        "trajectories without a <Parallel> block)",
    )
    p.add_argument(
        "--keep",
        choices=KEEP,
        default="best",
        help="best: the eligible sample with the highest speedup per problem (default); "
        "all: every eligible distinct sample",
    )
    p.add_argument(
        "--require-same-tokens",
        action="store_true",
        help="reject samples whose re-tokenized text differs from the sampled tokens",
    )
    p.add_argument("--overwrite", action="store_true", help="discard OUT and its side files first")
    add_runner_args(
        p, split="train", temperature=1.0, temperature_help="sampling temperature (default 1.0; 0 = greedy)"
    )
    return p


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_runner_args(build_parser(), argv, "--k")
    stats = run(args, argv)
    print(format_table(stats))
    print(f"wrote {args.out} ({stats['records_in_file']} records) and {side_paths(args.out)[1]}", file=sys.stderr)
    return 0


__all__ = [
    "CONFIG_KEYS",
    "REASONS",
    "format_table",
    "judge",
    "make_marker",
    "make_record",
    "main",
    "prepare_files",
    "read_progress",
    "run",
    "same_tokens",
    "select",
    "side_paths",
    "summarize",
]

if __name__ == "__main__":
    sys.exit(main())
