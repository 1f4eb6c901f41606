"""Benchmark a model on a task with the fork/join runner.

    python -m eval.benchmark --model DIR --task countdown --data test.jsonl \\
        --mode parallel --n 500 --out runs/par
    python -m eval.benchmark --model DIR --task countdown --data test.jsonl \\
        --mode sequential --n 500 --out runs/seq
    python -m eval.benchmark --model DIR --task math --data openai/gsm8k --config main \\
        --split test --mode parallel --temperature 0.6 --samples 8 --out runs/gsm8k

Decoding
--------
Prompts are decoded in chunks of ``--chunk-size`` problems by
:class:`parallel_reason.runner.Runner` (continuous batching of ``--batch-size``
prompts inside a chunk; each prompt carries its ``--samples`` rollouts).

- ``--mode parallel``: fork/join decoding; ``<Parallel>`` blocks fork threads that
  run concurrently, the runner writes the thread openers and the join.
- ``--mode sequential``: the same runner with ``parallel=False``: control tags are
  ordinary tokens (no fork, nothing runner-written), so critical path == total
  tokens. This is the sequential baseline; a model that writes tags still writes
  them, they just do not fork.

Greedy by default (``--temperature 0``). With ``--samples K`` each problem gets K
rollouts; the generator of sample ``j`` of a problem is seeded from ``--seed``, the
problem's id and ``j``, so results do not depend on batching, chunking or resuming.

Data
----
A local JSONL / JSON / parquet / CSV file, a ``save_to_disk`` folder or any
``datasets.load_dataset`` source (``--split``, ``--config``), read by
:mod:`parallel_reason.data`. A record's ``id`` field is its id (else its row
index). The prompt is the record's ``--prompt-field`` (default ``prompt``) when it
is present, else it is built by the task's ``prompt()``: Countdown from ``nums`` and
``target``; math from ``--question-field`` (default: ``question`` or ``problem``)
with ``--prompt-template``. Math reference answers come from ``--answer-field``
(default: ``answer`` or ``solution``; GSM8K ``#### 42`` and MATH ``\\boxed{}``
solutions are both understood). ``--chat-template`` renders prompts with the
tokenizer's chat template.

Output (``--out DIR``)
----------------------
- ``results.jsonl``: one row per problem, appended and flushed after each chunk
  (see :data:`ROW_FIELDS`);
- ``summary.json``: the aggregate over every row of ``results.jsonl`` (see
  :func:`summarize`), rewritten at the end of each run;
- ``config.json``: the settings that decide the results (resume refuses a
  different configuration; ``--overwrite`` starts afresh).

Resume: rerunning the same command skips every problem whose row is already in
``results.jsonl``; a truncated or corrupt line (a run killed while writing) is
dropped and that problem is decoded again.

Metrics come from :mod:`parallel_reason.metrics` (``aggregate``) and
:func:`parallel_reason.rewards.rollout_stats` (sampled tokens counted on the
runner's token tree); nothing is re-implemented here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from parallel_reason.inputs import DTYPES, check_device, check_model_path, reports_input_errors

log = logging.getLogger("eval.benchmark")

TASK_NAMES = ("countdown", "math")
MODES = ("parallel", "sequential")
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"

#: fields of one sample (top level of a row = sample 0; ``samples`` holds all when K > 1)
SAMPLE_FIELDS = {
    "sample_index": "index of the sample (0..K-1)",
    "answer": "extracted answer (None when there is none)",
    "correct": "the task's verifier accepts the answer",
    "verdict": "the verifier's reason ('correct' or why not)",
    "total_tokens": "sampled tokens (runner token tree)",
    "critical_path": "sampled tokens on the longest causal chain",
    "speedup": "total_tokens / critical_path",
    "blocks": "<Parallel> blocks (nested ones included)",
    "threads": "threads over all blocks",
    "wall_clock_s": "runner-measured seconds from admission to the end of this sample",
    "finish_reason": "the runner's finish reason (see parallel_reason.runner.FINISH_REASONS)",
    "format_valid": "format.validate finds no problem (width/depth limits included)",
    "format_problems": "the first problems found (strings)",
    "completion": "the trajectory text: linear form, runner-written tokens included, special tokens (EOS) removed",
}

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
CONFIG_KEYS = ("task", "mode", "model", "data", "split", "config", "prompt_field", "question_field",
               "answer_field", "answer_pattern", "prompt_template", "chat_template", "samples",
               "temperature", "top_p", "top_k", "seed", "max_new_tokens", "max_thread_tokens",
               "max_width", "max_depth", "join")


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
# Problems


def _first_present(rec: dict, names: Sequence[str]) -> str | None:
    for n in names:
        if n in rec and rec[n] is not None:
            return n
    return None


def load_problems(data, task: str, split: str = "test", config: str | None = None, n: int | None = None,
                  prompt_field: str | None = "prompt", question_field: str | None = None,
                  answer_field: str | None = None, prompt_template: str | None = None) -> list[dict]:
    """Problems of a data source: dicts with ``id``, ``prompt`` (text or messages),
    ``reference`` and the verifier's arguments (``nums``/``target`` or ``answer``)."""
    from parallel_reason.data import DataError, check_prompt, read_records
    from parallel_reason.tasks import get_task

    mod = get_task(task)
    rows = read_records(data, split, config)
    if not rows:
        raise DataError(f"{data}: no records")
    if n is not None and n >= 0:
        rows = rows[:n]
    out, seen = [], set()
    for k, (origin, rec) in enumerate(rows):
        pid = str(rec["id"]) if rec.get("id") is not None else str(k)
        if pid in seen:
            raise DataError(f"{origin}: duplicate id {pid!r}; ids must be unique")
        seen.add(pid)
        p = rec.get(prompt_field) if prompt_field else None
        if p is not None:
            p = check_prompt(p, origin, prompt_field)
        if task == "countdown":
            if rec.get("nums") is None or rec.get("target") is None:
                raise DataError(f"{origin}: a countdown record needs 'nums' and 'target'")
            try:
                nums, target = mod.check_problem(rec["nums"], rec["target"])
            except ValueError as e:
                raise DataError(f"{origin}: 'nums' must be a list of integers and 'target' an integer: {e}") from None
            args = {"nums": nums, "target": target}
            prompt = p if p is not None else mod.prompt(**args)
            reference = dict(args)
        else:
            af = answer_field or _first_present(rec, ("answer", "solution", "final_answer"))
            if af is None or rec.get(af) is None:
                raise DataError(f"{origin}: no answer field (tried {answer_field or 'answer, solution, final_answer'})")
            if p is None:
                qf = question_field or _first_present(rec, ("question", "problem", "query"))
                if qf is None or rec.get(qf) is None:
                    raise DataError(f"{origin}: no question field (tried {question_field or 'question, problem, query'})")
                p = mod.prompt(str(rec[qf]), prompt_template)
            prompt = p
            reference = mod.reference_answer(rec[af])
            args = {"answer": reference}
        out.append({"id": pid, "origin": origin, "prompt": prompt, "reference": reference, "args": args})
    return out


def problem_seed(seed: int, pid: str) -> int:
    """Seed of a problem's generators: a stable hash of the run seed and the id."""
    h = hashlib.sha256(f"{int(seed)}|{pid}".encode()).digest()
    return int.from_bytes(h[:7], "big")


# ---------------------------------------------------------------------------
# Results file


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


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def repair_results(path: Path) -> list[dict]:
    """Read the rows of ``path``; when some line is unreadable (or the file does not
    end with a newline) rewrite it with the readable rows only, so that appending
    goes on from a clean line."""
    rows, bad = read_rows(path)
    if not path.exists():
        return rows
    raw = path.read_bytes()
    if bad or (raw and not raw.endswith(b"\n")) or len(rows) != sum(1 for l in raw.split(b"\n") if l.strip()):
        if bad:
            log.warning("%s: dropped %d unreadable line(s); those problems are decoded again", path, bad)
        atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def samples_of(row: dict) -> list[dict]:
    """Every sample of a row (the row itself when it has one sample)."""
    return row.get("samples") or [row]


# ---------------------------------------------------------------------------
# Scoring


def completion_text(rollout, tokenizer=None) -> str:
    """The text that is scored and stored: the completion ids decoded without special
    tokens (EOS, padding; the control tags are ordinary added tokens and stay), as the
    GRPO trainer's rewards read it; ``rollout.completion`` without a tokenizer."""
    ids = getattr(rollout, "completion_ids", None)
    if tokenizer is not None and ids is not None:
        return tokenizer.decode(ids, skip_special_tokens=True)
    return rollout.completion


def score_sample(task_mod, problem: dict, rollout, limits, answer_pattern: str | None = None,
                 tokenizer=None) -> dict:
    """The fields of one sample (see :data:`SAMPLE_FIELDS`)."""
    from parallel_reason.rewards import format_outcome, rollout_stats

    text = completion_text(rollout, tokenizer)
    if answer_pattern is not None:
        answer = task_mod.extract_answer(text, answer_pattern)
    else:
        answer = task_mod.extract_answer(text)
    if answer is None:
        ok, reason = False, "no answer"
    else:
        # the extracted answer is verified on its own (one line: LaTeX reads a newline as a space)
        one_line = " ".join(answer.split("\n"))
        try:
            if answer_pattern is not None:
                v = task_mod.verify(one_line, **problem["args"], pattern=answer_pattern)
            else:
                v = task_mod.verify(one_line, **problem["args"])
            ok, reason = bool(v.ok), str(v.reason)
        except Exception as e:  # a verifier must not stop a benchmark
            ok, reason = False, f"verifier raised {type(e).__name__}: {e}"
    st = rollout_stats(rollout, text)
    fo = format_outcome(text, None, limits)
    return {
        "sample_index": int(getattr(rollout, "sample_index", 0)),
        "answer": answer,
        "correct": ok,
        "verdict": reason,
        "total_tokens": int(st["total_tokens"]),
        "critical_path": int(st["critical_path"]),
        "speedup": float(st["speedup"]),
        "blocks": int(st["blocks"]),
        "threads": int(st["threads"]),
        "wall_clock_s": float(rollout.wall_s),
        "finish_reason": str(rollout.finish_reason),
        "format_valid": bool(fo.valid),
        "format_problems": [str(p) for p in fo.problems[:3]],
        "completion": text,
    }


def make_row(task: str, mode: str, problem: dict, samples: list[dict], seed: int | None,
             amortized_s: float) -> dict:
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
    from parallel_reason.metrics import aggregate

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
        out["pass_at_k"] = {str(k): sum(r["pass_at_k"][str(k)] for r in rows) / n
                            for k in ks if all(str(k) in r["pass_at_k"] for r in rows)}
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


def load_model(path: str, dtype: str = "auto", device: str = "auto", attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    from parallel_reason.inputs import InputError
    from parallel_reason.tokens import load_tokenizer

    kw = {"attn_implementation": attn}
    if dtype != "auto":
        kw["dtype"] = getattr(torch, dtype)
    try:
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:  # no or broken weights/tokenizer files, an unknown architecture
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--model {path}: cannot be loaded ({why})") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return tok, model


def load_runner(args, parallel: bool):
    """``(tokenizer, runner)``: the HF runner on the loaded model, or with ``--engine URL``
    the remote backend on that server (only the tokenizer of ``--model`` is loaded)."""
    kw = dict(max_new_tokens=args.max_new_tokens, max_thread_tokens=args.max_thread_tokens,
              max_width=args.max_width, max_depth=args.max_depth, join=args.join, batch_size=args.batch_size,
              parallel=parallel)
    if getattr(args, "engine", None):
        from parallel_reason.runner.remote import RemoteRunner, thread_header_of
        from parallel_reason.tokens import load_tokenizer

        tok = load_tokenizer(args.model)
        return tok, RemoteRunner(tok, engine=args.engine, model=args.engine_model,
                                 thread_header=thread_header_of(args.model),
                                 api_key=os.environ.get("OPENAI_API_KEY"), **kw)
    from parallel_reason.runner import Runner

    tok, model = load_model(args.model, args.dtype, args.device, args.attn)
    return tok, Runner(model, tok, **kw)


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
            raise SystemExit(f"{path} is unreadable, so the results in {out} cannot be matched to a "
                             "configuration; use another --out or --overwrite")
        diff = {k: (old.get(k), cfg[k]) for k in cfg if old.get(k) != cfg[k]}
        if diff:
            lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(f"{out} holds results of a different configuration ({lines}); "
                             f"use another --out or --overwrite")
    atomic_write(path, json.dumps(cfg, indent=2) + "\n")


def run(args, argv: Sequence[str] | None = None) -> dict:
    """Run (or resume) a benchmark; returns the summary (also written to disk)."""
    from parallel_reason.data import render_prompt
    from parallel_reason.format import Limits
    from parallel_reason.tasks import get_task

    task_mod = get_task(args.task)
    problems = load_problems(args.data, args.task, args.split, args.config, args.n, args.prompt_field or None,
                             args.question_field, args.answer_field, args.prompt_template)
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
        tok, runner = load_runner(args, parallel=(args.mode == "parallel"))
        for p in todo:
            p["text"] = render_prompt(p["prompt"], tok, args.chat_template, p["origin"])
        limits = Limits(max_depth=args.max_depth, max_width=args.max_width)
        chunk = args.chunk_size or 4 * args.batch_size
        from tqdm import tqdm

        bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem",
                   desc=f"{args.task}/{args.mode}", disable=args.no_progress, file=sys.stderr)
        try:
            with open(res_path, "a", encoding="utf-8", newline="\n") as f:
                for start in range(0, len(todo), chunk):
                    batch = todo[start:start + chunk]
                    seeds = [problem_seed(args.seed, p["id"]) for p in batch]
                    t0 = time.perf_counter()
                    rollouts = runner.generate([p["text"] for p in batch], n=args.samples,
                                               temperature=args.temperature, top_p=args.top_p,
                                               top_k=args.top_k, seed=seeds)
                    elapsed = time.perf_counter() - t0
                    if len(rollouts) != len(batch) * args.samples:
                        raise RuntimeError(f"runner returned {len(rollouts)} rollouts for "
                                           f"{len(batch)} prompts x {args.samples}")
                    for i, p in enumerate(batch):
                        ros = rollouts[i * args.samples:(i + 1) * args.samples]
                        samples = [score_sample(task_mod, p, ro, limits, args.answer_pattern, tok) for ro in ros]
                        row = make_row(args.task, args.mode, p, samples,
                                       seeds[i] if args.temperature > 0 else None, elapsed / len(batch))
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        f.flush()
                    os.fsync(f.fileno())
                    decoded += len(batch)
                    bar.update(len(batch))
        finally:
            bar.close()

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
        "decoding": {k: cfg[k] for k in ("samples", "temperature", "top_p", "top_k", "seed", "max_new_tokens",
                                         "max_thread_tokens", "max_width", "max_depth", "join")}
        | {"batch_size": args.batch_size, "parallel": args.mode == "parallel",
           "chat_template": args.chat_template},
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


def opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def add_runner_args(p: argparse.ArgumentParser, *, split: str, temperature: float,
                    temperature_help: str) -> None:
    """The options :mod:`eval.benchmark` and :mod:`data_gen.self_train` share: the
    data source (``--split`` .. ``--chat-template``), decoding (``--temperature`` ..
    ``--chunk-size``), the model (``--dtype``, ``--device``, ``--attn``) and
    ``--no-progress``. Checked by :func:`check_runner_args`."""
    p.add_argument("--split", default=split, help=f"split of a datasets source (default {split})")
    p.add_argument("--config", default=None, help="configuration name of a datasets source (e.g. main for gsm8k)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts decoded at once by the runner, each with its samples (default 8)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="problems per runner call, written after each (default 4 x batch size)")
    p.add_argument("--temperature", type=float, default=temperature, help=temperature_help)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=1024, help="sampled-token budget per rollout")
    p.add_argument("--max-thread-tokens", type=opt_int, default=None)
    p.add_argument("--max-width", type=opt_int, default=8)
    p.add_argument("--max-depth", type=opt_int, default=2)
    p.add_argument("--join", default="concat")
    p.add_argument("--prompt-field", default="prompt", help="record field holding a ready prompt ('' = always build)")
    p.add_argument("--question-field", default=None, help="math: question field (default question|problem|query)")
    p.add_argument("--answer-field", default=None, help="math: answer field (default answer|solution|final_answer)")
    p.add_argument("--answer-pattern", default=None,
                   help="math: read the model's answer with this regex or alias (gsm8k, answer_is) instead of \\boxed{}")
    p.add_argument("--prompt-template", default=None, help="math: prompt template with {question}")
    p.add_argument("--chat-template", action="store_true", help="render prompts with the tokenizer's chat template")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--engine", default=None, metavar="URL",
                   help="decode on an OpenAI-compatible server (vLLM, SGLang, parallel_reason.serve), e.g. "
                        "http://localhost:8000/v1; --model then only gives the tokenizer (API key: $OPENAI_API_KEY)")
    p.add_argument("--engine-model", default=None, help="model name on --engine (default: the server's first)")


def check_runner_args(p: argparse.ArgumentParser, args, samples: int, samples_flag: str) -> None:
    """``p.error`` on options of :func:`add_runner_args` that cannot work together;
    :class:`~parallel_reason.inputs.InputError` on a ``--device`` this machine lacks
    or a ``--model`` that does not exist (before any data or model is loaded)."""
    if samples < 1:
        p.error(f"{samples_flag} must be >= 1")
    if samples > 1 and args.temperature == 0:
        p.error(f"{samples_flag} > 1 needs --temperature > 0 (greedy samples are identical)")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        p.error("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")
    if args.batch_size < 1 or (args.chunk_size is not None and args.chunk_size < 1):
        p.error("--batch-size and --chunk-size must be >= 1")
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    if args.task != "math" and (args.answer_pattern or args.prompt_template):
        p.error("--answer-pattern and --prompt-template apply to --task math only")
    if args.prompt_template is not None and "{question}" not in args.prompt_template:
        p.error("--prompt-template must contain {question}")
    check_device(args.device)
    check_model_path(args.model)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark",
                                description="Benchmark a model with the fork/join runner (resumable).")
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


def validate_args(p: argparse.ArgumentParser, args) -> None:
    check_runner_args(p, args, args.samples, "--samples")


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = build_parser()
    args = p.parse_args(argv)
    validate_args(p, args)
    summary = run(args, argv)
    keys = ("n_problems", "accuracy", "pass_at_k", "total_tokens_mean", "critical_path_mean",
            "speedup_mean_of_ratios", "speedup_ratio_of_means", "wall_clock_per_problem_s",
            "format_valid_rate", "finish_reasons")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    print(f"wrote {Path(args.out) / RESULTS} and {Path(args.out) / SUMMARY}", file=sys.stderr)
    return 0


__all__ = ["ROW_FIELDS", "SAMPLE_FIELDS", "load_problems", "make_row", "pass_at_k", "problem_seed", "read_rows",
           "repair_results", "run", "samples_of", "scan_rows", "score_sample", "summarize", "main"]

if __name__ == "__main__":
    sys.exit(main())
