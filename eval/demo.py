"""The tiny end-to-end CPU pipeline (``make demo``): data -> model -> SFT -> eval -> P-GRPO and
self-training -> eval -> report.

    python -m eval.demo --out runs/demo            # what `make demo` runs
    python -m eval.demo --out runs/demo --dry-run  # print the stage commands only

Every stage is one toolkit command, printed before it runs. Independent commands run
side by side (``--jobs 2``), each logging to ``OUT/logs/<stage>.log``; from SFT to the
last evaluation a command starts as soon as the models it reads are written (P-GRPO
while the baseline still trains), not when the whole previous stage has ended. A rerun
skips finished stages and resumes the others. What each stage does and measured, and the
choices behind its defaults: README ("What `make demo` does", "Learning on 2 cores").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from parallel_reason.inputs import parse_range
from parallel_reason.layout import JOIN_MODES
from parallel_reason.metrics import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
#: the full Countdown distribution (``parallel_reason.tasks.countdown``)
FULL_NUM_RANGE = (1, 99)
FULL_TARGET_RANGE = (10, 100)


@dataclass
class Job:
    """One command of a stage; ``done`` is a path whose existence means it already ran;
    ``after``: names of the jobs whose outputs it reads (it starts when they have ended)."""

    name: str
    argv: list[str]
    done: Path | None = None
    env: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()
    first: bool = False  # among the jobs that can start, start this one before the others

    def is_done(self) -> bool:
        return self.done is not None and self.done.exists()

    def shell(self) -> str:
        return (
            " ".join(shlex.quote(a) for a in ["python", *self.argv[1:]])
            if self.argv[0] == sys.executable
            else " ".join(shlex.quote(a) for a in self.argv)
        )


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [
            line
            for line in path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()
            if line.strip()
        ]
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n:])


class Pipeline:
    def __init__(self, out: Path, jobs: int, heartbeat: float, dry_run: bool):
        self.out, self.jobs, self.heartbeat, self.dry_run = out, max(1, jobs), heartbeat, dry_run
        self.logs = out / "logs"
        self.times: list[tuple[str, float, str]] = []  # (stage, seconds, status)
        self.commands: list[tuple[str, str]] = []

    def env(self, threads: int) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false",
                "WANDB_MODE": env.get("WANDB_MODE", "offline"),
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            }
        )
        return env

    def stage(self, title: str, jobs: list[Job]) -> None:
        """Run ``jobs`` (at most ``self.jobs`` at once); exit with the failing log on error."""
        self.stages([(title, jobs)])

    def stages(self, groups: list[tuple[str, list[Job]]]) -> None:
        """Run the jobs of consecutive stages as one queue: a job starts as soon as a slot
        is free and the jobs named in its ``after`` have ended, in queue order (so a stage
        may start before the previous one has ended; each stage's time runs from its
        first job's start to its last job's end). Every job gets the same torch threads
        (cores / jobs side by side), whatever else runs. Exits with the failing log on error."""
        todo_of = {title: [j for j in jobs if not j.is_done()] for title, jobs in groups}
        for title, jobs in groups:
            for j in jobs:
                self.commands.append((j.name, j.shell()))
            print(f"\n== {title}", flush=True)
            for j in jobs:
                print(f"   {'(done) ' if j.is_done() else ''}$ {j.shell()}", flush=True)
        queue = [j for title, _ in groups for j in todo_of[title]]
        queue = [j for j in queue if j.first] + [j for j in queue if not j.first]  # long chains first
        if self.dry_run or not queue:
            for title, _ in groups:
                self.times.append((title, 0.0, "skipped (done)" if not todo_of[title] else "dry run"))
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        stage_of = {j.name: title for title, _ in groups for j in todo_of[title]}
        pending = {j.name for j in queue}
        threads = max(1, (os.cpu_count() or 2) // min(self.jobs, len(queue)))
        span: dict[str, list[float]] = {}  # stage title -> [first start, last end]
        running: list[tuple[Job, subprocess.Popen, Path, IO[str]]] = []
        t0 = last_beat = time.perf_counter()
        failed: tuple[Job, Path] | None = None
        while queue or running:
            while len(running) < self.jobs and failed is None:
                ready = next((j for j in queue if not pending.intersection(j.after)), None)
                if ready is None:
                    break
                queue.remove(ready)
                log = self.logs / f"{ready.name}.log"
                fh: IO[str] = open(log, "a", encoding="utf-8")
                fh.write(f"$ {ready.shell()}\n")
                fh.flush()
                p = subprocess.Popen(
                    ready.argv, cwd=ROOT, env={**self.env(threads), **ready.env}, stdout=fh, stderr=subprocess.STDOUT
                )
                running.append((ready, p, log, fh))
                span.setdefault(stage_of[ready.name], [time.perf_counter(), 0.0])
            if not running:  # nothing can start: a dependency failed or never runs
                break
            time.sleep(0.5)
            for item in list(running):
                j, p, log, fh = item
                if p.poll() is None:
                    continue
                fh.close()
                running.remove(item)
                pending.discard(j.name)
                span[stage_of[j.name]][1] = time.perf_counter()
                if p.returncode != 0 and failed is None:
                    failed = (j, log)
            if failed is not None and not running:
                break
            if self.heartbeat and time.perf_counter() - last_beat > self.heartbeat and running:
                last_beat = time.perf_counter()
                el = time.perf_counter() - t0
                for j, _, log, _ in running:
                    print(f"   [{el:5.0f}s] {j.name}: {_tail(log)[:150]}", flush=True)
        for title, _ in groups:
            if not todo_of[title]:
                self.times.append((title, 0.0, "skipped (done)"))
            elif failed is not None and stage_of[failed[0].name] == title:
                self.times.append((title, time.perf_counter() - span[title][0], "failed"))
            elif title in span and not any(stage_of[j.name] == title for j in queue + [r[0] for r in running]):
                self.times.append((title, span[title][1] - span[title][0], "ok"))
            else:
                self.times.append((title, 0.0, "not run"))
        if failed is not None:
            j, log = failed
            print(
                f"\nstage '{stage_of[j.name]}' failed: {j.name} (log {log}); its last lines:\n{_tail(log, 30)}",
                file=sys.stderr,
            )
            raise SystemExit(1)
        if queue:
            raise SystemExit(f"jobs that could not start (a job they need did not run): {[j.name for j in queue]}")
        print(f"   done in {time.perf_counter() - t0:.0f}s", flush=True)


def build(args) -> tuple[Pipeline, list[tuple[str, list[Job]]]]:
    """The pipeline's stages (see the module docstring and docs/demo.md)."""
    out = Path(args.out).resolve()
    py = sys.executable
    d, m, ev = out / "data", out / "models", out / "eval"
    pipe = Pipeline(out, args.jobs, args.heartbeat, args.dry_run)
    fmt = (
        ["--moves", args.moves]
        + (["--show-target"] if args.show_target else [])
        + (["--leaf-answers"] if args.leaf_answers else [])
        + (["--bare-outlines"] if args.bare_outlines else [])
        + (["--results"] if args.join == "summary" else [])  # the summary join shows the threads' results
    )
    reduced = tuple(args.num_range) != FULL_NUM_RANGE or tuple(args.target_range) != FULL_TARGET_RANGE

    def gen(split: str, mode: str, n: int, seed: int, path: Path, ranges: tuple | None = None) -> Job:
        num_range, target_range = ranges or (args.num_range, args.target_range)
        argv = [
            py,
            "-m",
            "data_gen.countdown",
            "--n",
            str(n),
            "--numbers",
            str(args.numbers),
            "--seed",
            str(seed),
            "--split",
            split,
            "--split-fractions",
            args.split_fractions,
            "--mode",
            mode,
            "--num-range",
            _pair(num_range),
            "--target-range",
            _pair(target_range),
            "--widths",
            args.widths,
            "--out",
            str(path),
            "--no-progress",
            *fmt,
        ]
        if mode in ("parallel", "mixed") and args.thread_header == "outline":
            argv.append("--restate")
        if mode == "mixed":
            argv += ["--parallel-fraction", str(args.parallel_fraction)]
        return Job(f"data_{path.stem}", argv, done=path)

    par_mode = "mixed" if args.parallel_fraction < 1 else "parallel"
    data = [
        gen("train", par_mode, args.train_n, 0, d / "train.parallel.jsonl"),
        gen("train", "dfs", args.train_n, 0, d / "train.dfs.jsonl"),
        gen("val", par_mode, args.val_n, 0, d / "val.parallel.jsonl"),
        gen("val", "dfs", args.val_n, 0, d / "val.dfs.jsonl"),
        gen("test", "parallel", args.test_n, 0, d / "test.jsonl"),
        gen("train", "parallel", args.grpo_n, 1, d / "grpo.train.jsonl"),
    ]
    if reduced and args.full_test_n > 0:
        data.append(
            gen("test", "parallel", args.full_test_n, 0, d / "test_full.jsonl", (FULL_NUM_RANGE, FULL_TARGET_RANGE))
        )
    base = m / "base"
    base_job = Job(
        "base",
        [
            py,
            "recipes/init_tiny_model.py",
            "--data",
            str(d / "train.parallel.jsonl"),
            str(d / "train.dfs.jsonl"),
            "--out",
            str(base),
            "--hidden-size",
            str(args.hidden),
            "--layers",
            str(args.layers),
            "--intermediate-size",
            str(2 * args.hidden),
            "--vocab-size",
            str(args.vocab_size),
            "--seed",
            str(args.seed),
        ]
        + (["--whole-numbers"] if args.whole_numbers else []),
        done=base / "tokenizer_config.json",
    )  # written last

    def sft(name: str, mode: str, data_name: str, batch: int) -> Job:
        o = m / f"sft_{name}"
        argv = [
            py,
            "recipes/sft.py",
            "--config",
            "configs/sft/countdown_tiny.yaml",
            "--model_name_or_path",
            str(base),
            "--mode",
            mode,
            "--generate_data",
            "none",
            "--train_data",
            str(d / f"train.{data_name}.jsonl"),
            "--eval_data",
            str(d / f"val.{data_name}.jsonl"),
            "--output_dir",
            str(o),
            "--learning_rate",
            str(args.sft_lr),
            "--per_device_train_batch_size",
            str(batch),
            "--eval_steps",
            str(args.sft_eval_steps),
            "--save_steps",
            "200",
            "--logging_steps",
            "25",
            "--seed",
            str(args.seed),
            "--disable_tqdm",
            "true",
            "--warmup_ratio",
            "0.03",
        ]
        argv += (
            ["--max_train_tokens", str(args.sft_tokens)]
            if args.sft_tokens > 0
            else ["--num_train_epochs", str(args.sft_epochs)]
        )
        if mode == "parallel":
            argv += ["--thread_header", args.thread_header, "--join", args.join]
        return Job(f"sft_{name}", argv, done=o / "final" / "README.md")  # the model card is written last

    def bench(model: Path, mode: str, name: str, data: Path, n: int) -> Job:
        o = ev / name
        return Job(
            f"eval_{name}",
            after=(model.parent.name,),  # the job that writes the model (sft_*, grpo_*)
            argv=[
                py,
                "-m",
                "eval.benchmark",
                "--model",
                str(model),
                "--task",
                "countdown",
                "--data",
                str(data),
                "--mode",
                mode,
                "--n",
                str(n),
                "--out",
                str(o),
                "--batch-size",
                "32",
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--no-progress",
            ],
            done=o / "summary.json",
        )

    # rollouts per forward: whole groups, at most 16 rollouts, dividing the step's rollouts
    k = max(
        d for d in range(1, args.grpo_prompts + 1) if args.grpo_prompts % d == 0 and (d == 1 or d * args.grpo_g <= 16)
    )

    def grpo(name: str, parallel: bool) -> Job:
        o = m / f"grpo_{name}"
        return Job(
            f"grpo_{name}",
            after=(f"sft_{name}",),
            first=True,  # P-GRPO and its evaluation are the longest chain after SFT
            argv=[
                py,
                "recipes/grpo.py",
                "--config",
                "configs/grpo/countdown_tiny.yaml",
                "--model_name_or_path",
                str(m / f"sft_{name}" / "final"),
                "--parallel",
                "true" if parallel else "false",
                "--train_data",
                str(d / "grpo.train.jsonl"),
                "--eval_data",
                "none",
                "--generate_data",
                "none",
                "--output_dir",
                str(o),
                "--max_steps",
                str(args.grpo_steps),
                "--num_generations",
                str(args.grpo_g),
                "--prompts_per_step",
                str(args.grpo_prompts),
                "--generation_batch_size",
                str(args.grpo_prompts),
                "--max_new_tokens",
                str(args.max_new_tokens),
                "--micro_batch_size",
                str(k * args.grpo_g),
                "--temperature",
                str(args.grpo_temperature),
                "--learning_rate",
                str(args.grpo_lr),
                "--acceleration_factor",
                str(args.acceleration_factor),
                "--save_steps",
                "10",
                "--num_samples_to_log",
                "1",
                "--seed",
                str(args.seed),
            ],
            done=o / "final" / "README.md",
        )  # the model card is written last

    kept = out / "self_train" / "kept.jsonl"
    self_train = Job(
        "self_train",
        after=("sft_parallel",),
        first=True,
        argv=[
            py,
            "-m",
            "data_gen.self_train",
            "--model",
            str(m / "sft_parallel" / "final"),
            "--input",
            str(d / "grpo.train.jsonl"),
            "--n",
            str(args.self_train_n),
            "--k",
            str(args.self_train_k),
            "--temperature",
            str(args.self_train_temperature),
            "--keep",
            "all",
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--batch-size",
            "32",
            "--out",
            str(kept),
            "--no-progress",
        ],
        done=kept.with_name(kept.name + ".stats.json"),
    )

    runs = ["sft_dfs", "sft_parallel"] + (["grpo_parallel"] if args.grpo_steps > 0 else [])
    evals = [
        bench(m / "sft_parallel" / "final", "parallel", "sft_parallel", d / "test.jsonl", args.test_n),
        bench(m / "sft_dfs" / "final", "sequential", "sft_dfs", d / "test.jsonl", args.test_n),
    ]
    full = reduced and args.full_test_n > 0
    if full:
        evals += [
            bench(
                m / "sft_parallel" / "final", "parallel", "full_sft_parallel", d / "test_full.jsonl", args.full_test_n
            ),
            bench(m / "sft_dfs" / "final", "sequential", "full_sft_dfs", d / "test_full.jsonl", args.full_test_n),
        ]
    stages = [
        ("1. data: Countdown search traces (fork/join and depth-first renderings of the same search)", data),
        ("2. base: one tokenizer + random tiny Qwen2 for both runs", [base_job]),
        (
            "3. sft: packed-graph SFT (parallel) and plain causal SFT (dfs baseline), same compute",
            [
                sft("parallel", "parallel", "parallel", args.sft_batch_parallel),
                sft("dfs", "sequential", "dfs", args.sft_batch_dfs),
            ],
        ),
        ("4. eval_sft: greedy decoding of the test problems with the runner", evals),
    ]
    if args.grpo_steps > 0:
        rl = [grpo("parallel", True)]
        if args.self_train_n > 0:
            rl.append(self_train)
        stages.append(
            (
                "5. grpo: P-GRPO from the parallel SFT model (correctness + acceleration); "
                "self-training samples from the SFT model",
                rl,
            )
        )
        post = [bench(m / "grpo_parallel" / "final", "parallel", "grpo_parallel", d / "test.jsonl", args.test_n)]
        if full:
            post.append(
                bench(
                    m / "grpo_parallel" / "final",
                    "parallel",
                    "full_grpo_parallel",
                    d / "test_full.jsonl",
                    args.full_test_n,
                )
            )
        stages.append(("6. eval_grpo: the same benchmark on the GRPO model", post))
    elif args.self_train_n > 0:
        stages.append(("5. self_train: samples from the parallel SFT model", [self_train]))
    report = out / "report"
    cmp_jobs = [Job("compare", [py, "-m", "eval.compare", *[str(ev / r) for r in runs], "--out", str(report)])]
    if full:
        cmp_jobs.append(
            Job(
                "compare_full",
                [py, "-m", "eval.compare", *[str(ev / f"full_{r}") for r in runs], "--out", str(report / "full_range")],
            )
        )
    stages.append(("7. report: tables and plots", cmp_jobs))
    return pipe, stages


def _pair(rng) -> str:
    return f"{int(rng[0])},{int(rng[1])}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    except OSError:
        pass
    return out


def _acc(summary: dict | None) -> tuple[int, int]:
    """(correct samples, samples) of a benchmark summary."""
    if not summary:
        return 0, 0
    n = int(summary.get("n_samples", summary.get("n_problems", 0)))
    return round(float(summary.get("accuracy", 0.0)) * n), n


def targets(out: Path, args) -> list[tuple[str, str, str]]:
    """The issue's targets, each as (target, measured, met / missed / n/a)."""
    ev = out / "eval"
    s = {r: _read_json(ev / r / "summary.json") for r in ("sft_parallel", "sft_dfs", "grpo_parallel")}
    rows: list[tuple[str, str, str]] = []

    def ci(k: int, n: int) -> str:
        lo, hi = wilson_interval(k, n)
        return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]" if n else "n/a"

    def verdict(ok) -> str:
        return "n/a" if ok is None else ("met" if ok else "missed")

    par, dfs, rl = s["sft_parallel"], s["sft_dfs"], s["grpo_parallel"]
    if par:
        k, n = _acc(par)
        rows.append(("parallel SFT accuracy >= 0.60", ci(k, n), verdict(k / n >= 0.60 if n else None)))
        fv = float(par.get("format_valid_rate", 0.0))
        rows.append(("parallel SFT format-valid >= 0.99", f"{fv:.3f}", verdict(fv >= 0.99)))
    if par and dfs:
        gap = float(dfs["accuracy"]) - float(par["accuracy"])
        rows.append(
            (
                "parallel accuracy >= dfs baseline - 0.03",
                f"{float(par['accuracy']):.3f} vs {float(dfs['accuracy']):.3f} (gap {gap:+.3f})",
                verdict(gap <= 0.03),
            )
        )
        ratio = float(par["critical_path_mean"]) / max(float(dfs["total_tokens_mean"]), 1e-9)
        rows.append(("parallel mean critical path <= 0.75 x dfs mean tokens", f"{ratio:.3f}", verdict(ratio <= 0.75)))
    if par and rl:
        da = float(rl["accuracy"]) - float(par["accuracy"])
        ds = float(rl["speedup_mean_of_ratios"]) - float(par["speedup_mean_of_ratios"])
        ok = da >= 0.05 or (ds >= 0.15 and da >= -0.02)
        rows.append(
            (
                "P-GRPO: accuracy +0.05, or speedup +0.15 with accuracy within 0.02",
                f"accuracy {da:+.3f}, speedup {ds:+.3f}",
                verdict(ok),
            )
        )
    st = _read_json(out / "self_train" / "kept.jsonl.stats.json")
    if st:
        rate = float(st.get("kept_rate", 0.0))
        rows.append(
            (
                "self-training keeps >= 20% of samples",
                f"{rate:.3f} (kept {st.get('kept')} of {st.get('samples')}; kept mean speedup "
                f"{_fmt(st.get('speedup_kept_mean'))})",
                verdict(rate >= 0.20),
            )
        )
    return rows


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


def plots(out: Path) -> list[str]:
    """SFT loss curves and per-step GRPO rollout metrics (reward, accuracy, speedup, forks)."""
    from eval.plots import curves

    report, m = out / "report", out / "models"
    files = []
    sft = {}
    for name in ("sft_parallel", "sft_dfs"):
        st = _read_json(m / name / "trainer_state.json")
        if st:
            sft[name] = st.get("log_history", [])
    if sft:
        files.append(
            curves(
                sft,
                ["loss", "eval_loss"],
                report / "sft_curves.png",
                "SFT (same tokens: the dfs traces are shorter, so more steps)",
                logy=True,
            ).name
        )
    rl = _read_jsonl(m / "grpo_parallel" / "metrics.jsonl")
    if rl:
        files.append(
            curves(
                {"grpo_parallel": rl},
                ["reward", "accuracy", "speedup", "fork_rate"],
                report / "grpo_curves.png",
                "P-GRPO, per step (training rollouts)",
            ).name
        )
    return files


def write_report(pipe: Pipeline, args, wall: float) -> Path:
    report = pipe.out / "report"
    report.mkdir(parents=True, exist_ok=True)
    table = (report / "compare.md").read_text(encoding="utf-8") if (report / "compare.md").exists() else ""
    full = report / "full_range" / "compare.md"
    figs = plots(pipe.out)
    variant = f"Countdown with {args.numbers} numbers in {_pair(args.num_range)}, targets in {_pair(args.target_range)}"
    lines = [
        "# parallel_reason demo report",
        "",
        f"{variant}; {args.train_n} training problems; {args.test_n} held-out test problems, greedy decoding. "
        f"Tiny Qwen2 ({args.layers} layers, hidden {args.hidden}) built from the data. Parallel model: "
        f"{'a mix of fork/join (' + format(args.parallel_fraction, '.0%') + ') and depth-first' if args.parallel_fraction < 1 else 'fork/join'} "
        f"traces ({'outlines are only the thread number, each thread writes its own move' if args.bare_outlines else 'outlines carry the moves'}), "
        f"thread header `{args.thread_header}`, join `{args.join}`; baseline: depth-first traces that stop at the first "
        f"solution; both SFT runs process the same number of tokens.",
        "",
        f"Total wall time of this invocation: {wall / 60:.1f} min ({os.cpu_count()} CPU cores).",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(pipe.out, args)]
    lines += ["", "## Results", "", table.strip(), ""]
    if full.exists():
        lines += [
            f"## The same models on the full range (numbers {_pair(FULL_NUM_RANGE)}, targets "
            f"{_pair(FULL_TARGET_RANGE)})",
            "",
            full.read_text(encoding="utf-8").strip(),
            "",
        ]
    lines += [
        "![accuracy vs critical-path budget](accuracy_vs_budget.png)",
        "",
        "![speedup histogram](speedup_hist.png)",
        "",
    ]
    lines += [f"![{f}]({f})" for f in figs] + [""]
    lines += ["## Stages", "", "| stage | seconds | status |", "|---|---|---|"]
    lines += [f"| {t} | {s:.0f} | {st} |" for t, s, st in pipe.times]
    lines += ["", "## Commands", "", "Run from the repository root; logs in `logs/`.", "", "```bash"]
    lines += [c for _, c in pipe.commands]
    lines += ["```", ""]
    path = report / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (report / "stages.json").write_text(
        json.dumps({"wall_s": wall, "stages": pipe.times, "targets": targets(pipe.out, args)}, indent=2),
        encoding="utf-8",
    )
    return path


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo", help="output folder (data, models, eval, logs, report)")
    g = ap.add_argument_group("problems and traces")
    g.add_argument("--numbers", type=int, default=3, help="Countdown input numbers (default 3)")
    g.add_argument("--num-range", type=parse_range, default=(1, 20), help="input numbers LO,HI (default 1,20: reduced)")
    g.add_argument("--target-range", type=parse_range, default=FULL_TARGET_RANGE, help="targets LO,HI (default 10,100)")
    g.add_argument(
        "--moves",
        choices=("best", "per-pair"),
        default="per-pair",
        help="moves a search state tries (data_gen.countdown --moves; default per-pair)",
    )
    g.add_argument("--widths", default="1", help="moves kept per level (data_gen.countdown --widths; default 1)")
    g.add_argument(
        "--no-leaf-answers",
        dest="leaf_answers",
        action="store_false",
        help="restate the solution after each join and end with an Answer line (default: the "
        "solving move writes the answer)",
    )
    g.add_argument(
        "--parallel-fraction",
        type=float,
        default=0.6,
        help="share of fork/join traces in the parallel model's data, the rest depth-first (default 0.6: "
        "the SFT model forks on most problems, and P-GRPO has the rest to move; README, pilot P3)",
    )
    g.add_argument(
        "--thread-header",
        choices=("index", "outline"),
        default="outline",
        help="what the runner writes after <Thread>: its index, or its outline (default)",
    )
    g.add_argument(
        "--join",
        choices=JOIN_MODES,
        default="tree",
        help="join mode of the parallel model (SFT writes it into the model; evaluation, P-GRPO and "
        "self-training follow it): concat re-reads threads 2..n, tree reads nothing twice, summary "
        "shows the text after a block only each thread's <Result> (the data marks them)",
    )
    g.add_argument(
        "--no-bare-outlines",
        dest="bare_outlines",
        action="store_false",
        help="outlines carry the thread's move ('1: 6/3=2 [2 17|34]'), sampled before the fork (default: "
        "an outline is only the thread's number and the thread writes its own move, "
        "data_gen.countdown --bare-outlines: a shorter critical path)",
    )
    g.add_argument(
        "--no-show-target",
        dest="show_target",
        action="store_false",
        help="states without the target ([3 21] instead of [3 21|24])",
    )
    g.add_argument(
        "--split-fractions",
        default="0.85,0.05,0.1",
        help="train,val,test shares of the problem space (default 0.85,0.05,0.1: numbers 1..20 hold "
        "about 9,500 problems this search solves, and the test split needs 500)",
    )
    g.add_argument("--train-n", type=int, default=8000, help="SFT training problems (each rendering)")
    g.add_argument("--val-n", type=int, default=200, help="held-out traces for the SFT eval loss")
    g.add_argument("--test-n", type=int, default=500, help="test problems benchmarked")
    g.add_argument(
        "--full-test-n",
        type=int,
        default=500,
        help="test problems of the full range (1..99, 10..100), when the demo's range is reduced",
    )
    g.add_argument("--grpo-n", type=int, default=1000, help="GRPO training prompts")
    g = ap.add_argument_group("model and SFT")
    g.add_argument("--hidden", type=int, default=128, help="tiny model hidden size (MLP: 2x)")
    g.add_argument("--layers", type=int, default=4, help="tiny model layers")
    g.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary")
    g.add_argument(
        "--digits",
        dest="whole_numbers",
        action="store_false",
        help="one token per digit (default: frequent numbers are single tokens)",
    )
    g.add_argument(
        "--sft-tokens",
        type=int,
        default=4_000_000,
        help="SFT compute budget per model, in buffer tokens (0: use --sft-epochs; default 4M: about "
        "13-15 min for the two runs side by side on 2 cores)",
    )
    g.add_argument("--sft-epochs", type=float, default=1.0)
    g.add_argument("--sft-lr", type=float, default=1.5e-3)
    g.add_argument(
        "--sft-batch-parallel",
        type=int,
        default=4,
        help="fork/join traces per optimizer step (default 4: about 1,000 buffer tokens)",
    )
    g.add_argument(
        "--sft-batch-dfs",
        type=int,
        default=16,
        help="depth-first traces per optimizer step (default 16: about 1,200 buffer tokens)",
    )
    g.add_argument(
        "--sft-eval-steps",
        type=int,
        default=500,
        help="held-out loss every N optimizer steps (default 500; one evaluation takes about 2 s on "
        "the 2-core box, and every 100 steps took 15%% of the parallel run's SFT time; the trained "
        "weights do not depend on it)",
    )
    g = ap.add_argument_group("P-GRPO and self-training")
    g.add_argument("--grpo-steps", type=int, default=20, help="0 skips GRPO")
    g.add_argument("--grpo-g", type=int, default=8, help="rollouts per prompt")
    g.add_argument("--grpo-prompts", type=int, default=8, help="prompts per GRPO step")
    g.add_argument("--grpo-lr", type=float, default=1e-4)
    g.add_argument("--grpo-temperature", type=float, default=0.7)
    g.add_argument("--acceleration-factor", type=float, default=1.0)
    g.add_argument("--self-train-n", type=int, default=100, help="problems sampled by self-training (0: skip)")
    g.add_argument("--self-train-k", type=int, default=4)
    g.add_argument("--self-train-temperature", type=float, default=0.5)
    g = ap.add_argument_group("running")
    g.add_argument("--max-new-tokens", type=int, default=256, help="sampled-token budget per rollout")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--jobs", type=int, default=2, help="commands run side by side")
    g.add_argument("--heartbeat", type=float, default=60.0, help="seconds between progress lines (0: off)")
    g.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)

    t0 = time.perf_counter()
    pipe, stages = build(args)
    print(f"parallel_reason demo -> {pipe.out}", flush=True)
    for title, jobs in stages[:2]:  # data, then the base model
        pipe.stage(title, jobs)
    pipe.stages(stages[2:-1])  # SFT to the last evaluation: a job starts when its inputs exist
    pipe.stage(*stages[-1])  # the report
    if args.dry_run:
        return 0
    wall = time.perf_counter() - t0
    path = write_report(pipe, args, wall)
    print("\n" + path.read_text(encoding="utf-8").split("## Stages")[0].strip(), flush=True)
    print(f"\nreport: {path}\ntotal wall time: {wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
