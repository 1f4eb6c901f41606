"""The tiny end-to-end CPU pipeline (``make demo``): data -> model -> SFT -> eval -> GRPO -> eval -> report.

    python -m eval.demo --out runs/demo            # what `make demo` runs
    python -m eval.demo --out runs/demo --dry-run  # print the stage commands only

Every stage is one command of the toolkit's own CLIs (printed before it runs, so any
stage can be rerun or scaled up by hand, e.g. with a real model id for GPU users):

1. ``data``: Countdown search traces from ``python -m data_gen.countdown`` (the
   3-number variant by default: short traces a sub-1M-parameter model can learn in
   minutes), the same problems written twice, as fork/join traces (``--mode
   parallel``) and as one linear chain of the same search (``--mode sequential``);
   held-out val/test splits; GRPO prompts from another seed.
2. ``base``: ``recipes/init_tiny_model.py`` builds one BPE tokenizer (control tags as
   single tokens) and one random Qwen2 from both training files: both SFT runs start
   from the same weights and vocabulary.
3. ``sft``: ``recipes/sft.py`` trains the parallel model (packed fork/join graphs) and
   the sequential baseline (plain causal SFT) on the same search data.
4. ``eval_sft``: ``eval.benchmark`` decodes the test split greedily with the runner
   (``--mode parallel`` forks threads; ``--mode sequential`` for the baseline).
5. ``grpo``: ``recipes/grpo.py`` runs a short P-GRPO from each SFT model
   (correctness + acceleration rewards; ``--parallel false`` for the baseline, whose
   acceleration reward is then always 0).
6. ``eval_grpo``: the same benchmark on the GRPO models.
7. ``report``: ``eval.compare`` writes ``report/compare.md`` and the plots; this
   script adds ``report/README.md`` with the stage times and commands.

Two independent commands run side by side (``--jobs 2``), each with its share of
the cores as torch threads (one each on a 2-core machine: tiny models gain little
from a second intra-op thread, and two processes with two threads each on two cores
oversubscribe). Each command's output goes to
``OUT/logs/<stage>.log``; a heartbeat prints the last line of each running log.

Interrupting loses little: a finished stage is skipped on rerun (its output
exists), SFT and GRPO resume from their last checkpoint, and the benchmark skips
problems already written.
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

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """One command of a stage; ``done`` is a path whose existence means it already ran."""

    name: str
    argv: list[str]
    done: Path | None = None
    env: dict = field(default_factory=dict)

    def is_done(self) -> bool:
        return self.done is not None and self.done.exists()

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in ["python", *self.argv[1:]]) if self.argv[0] == sys.executable \
            else " ".join(shlex.quote(a) for a in self.argv)


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()
                 if l.strip()]
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
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": env.get("WANDB_MODE", "offline"),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
        return env

    def stage(self, title: str, jobs: list[Job]) -> None:
        """Run ``jobs`` (at most ``self.jobs`` at once); exit with the failing log on error."""
        t0 = time.perf_counter()
        todo = [j for j in jobs if not j.is_done()]
        for j in jobs:
            self.commands.append((j.name, j.shell()))
        print(f"\n== {title}", flush=True)
        for j in jobs:
            print(f"   {'(done) ' if j.is_done() else ''}$ {j.shell()}", flush=True)
        if self.dry_run or not todo:
            self.times.append((title, 0.0, "skipped (done)" if not todo else "dry run"))
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 2) // min(self.jobs, len(todo)))
        running: list[tuple[Job, subprocess.Popen, Path, object]] = []
        queue = list(todo)
        last_beat = time.perf_counter()
        failed: tuple[Job, Path] | None = None
        while queue or running:
            while queue and len(running) < self.jobs and failed is None:
                j = queue.pop(0)
                log = self.logs / f"{j.name}.log"
                fh = open(log, "a", encoding="utf-8")
                fh.write(f"$ {j.shell()}\n")
                fh.flush()
                p = subprocess.Popen(j.argv, cwd=ROOT, env={**self.env(threads), **j.env}, stdout=fh,
                                     stderr=subprocess.STDOUT)
                running.append((j, p, log, fh))
            time.sleep(0.5)
            for item in list(running):
                j, p, log, fh = item
                if p.poll() is None:
                    continue
                fh.close()
                running.remove(item)
                if p.returncode != 0 and failed is None:
                    failed = (j, log)
            if failed is not None and not running:
                break
            if self.heartbeat and time.perf_counter() - last_beat > self.heartbeat and running:
                last_beat = time.perf_counter()
                el = time.perf_counter() - t0
                for j, _, log, _ in running:
                    print(f"   [{el:5.0f}s] {j.name}: {_tail(log)[:150]}", flush=True)
        dt = time.perf_counter() - t0
        if failed is not None:
            j, log = failed
            self.times.append((title, dt, "failed"))
            print(f"\nstage '{title}' failed: {j.name} (log {log}); its last lines:\n{_tail(log, 30)}",
                  file=sys.stderr)
            raise SystemExit(1)
        self.times.append((title, dt, "ok"))
        print(f"   done in {dt:.0f}s", flush=True)


def build(args) -> tuple[Pipeline, list[tuple[str, list[Job]]]]:
    out = Path(args.out).resolve()
    py = sys.executable
    d, m = out / "data", out / "models"
    pipe = Pipeline(out, args.jobs, args.heartbeat, args.dry_run)

    def gen(split: str, mode: str, n: int, seed: int, path: Path) -> Job:
        return Job(f"data_{path.stem}", [py, "-m", "data_gen.countdown", "--n", str(n), "--numbers", str(args.numbers),
                                         "--seed", str(seed), "--split", split, "--mode", mode, "--out", str(path),
                                         "--no-progress"], done=path)

    data = [gen("train", "parallel", args.train_n, 0, d / "train.parallel.jsonl"),
            gen("train", "sequential", args.train_n, 0, d / "train.sequential.jsonl"),
            gen("val", "parallel", args.val_n, 0, d / "val.parallel.jsonl"),
            gen("val", "sequential", args.val_n, 0, d / "val.sequential.jsonl"),
            gen("test", "parallel", args.test_n, 0, d / "test.jsonl"),
            gen("train", "parallel", args.grpo_n, 1, d / "grpo.train.jsonl")]
    base = m / "base"
    base_job = Job("base", [py, "recipes/init_tiny_model.py", "--data", str(d / "train.parallel.jsonl"),
                            str(d / "train.sequential.jsonl"), "--out", str(base), "--hidden-size", str(args.hidden),
                            "--layers", str(args.layers), "--intermediate-size", str(2 * args.hidden),
                            "--seed", str(args.seed)], done=base / "tokenizer_config.json")  # written last

    def sft(mode: str) -> Job:
        o = m / f"sft_{mode}"
        return Job(f"sft_{mode}", [py, "recipes/sft.py", "--config", "configs/sft/countdown_tiny.yaml",
                                   "--model_name_or_path", str(base), "--mode", mode, "--generate_data", "none",
                                   "--train_data", str(d / f"train.{mode}.jsonl"), "--eval_data",
                                   str(d / f"val.{mode}.jsonl"), "--output_dir", str(o),
                                   "--num_train_epochs", str(args.sft_epochs), "--learning_rate", str(args.sft_lr),
                                   "--per_device_train_batch_size", "16", "--eval_steps", "0",
                                   "--save_steps", "100", "--logging_steps", "25", "--seed", str(args.seed),
                                   "--disable_tqdm", "true"], done=o / "final" / "README.md")  # the model card is written last

    def bench(model: Path, mode: str, name: str) -> Job:
        o = out / "eval" / name
        return Job(f"eval_{name}", [py, "-m", "eval.benchmark", "--model", str(model), "--task", "countdown",
                                    "--data", str(d / "test.jsonl"), "--mode", mode, "--n", str(args.test_n),
                                    "--out", str(o), "--batch-size", "32", "--max-new-tokens",
                                    str(args.max_new_tokens), "--no-progress"], done=o / "summary.json")

    # rollouts per forward: whole groups, at most 16 rollouts, dividing the step's rollouts
    k = max(d for d in range(1, args.grpo_prompts + 1)
            if args.grpo_prompts % d == 0 and (d == 1 or d * args.grpo_g <= 16))

    def grpo(mode: str) -> Job:
        o = m / f"grpo_{mode}"
        return Job(f"grpo_{mode}", [py, "recipes/grpo.py", "--config", "configs/grpo/countdown_tiny.yaml",
                                    "--model_name_or_path", str(m / f"sft_{mode}" / "final"),
                                    "--parallel", "true" if mode == "parallel" else "false",
                                    "--train_data", str(d / "grpo.train.jsonl"), "--eval_data", "none",
                                    "--generate_data", "none", "--output_dir", str(o),
                                    "--max_steps", str(args.grpo_steps), "--num_generations", str(args.grpo_g),
                                    "--prompts_per_step", str(args.grpo_prompts), "--generation_batch_size",
                                    str(args.grpo_prompts), "--max_new_tokens", str(args.max_new_tokens),
                                    "--micro_batch_size", str(k * args.grpo_g),
                                    "--learning_rate", str(args.grpo_lr), "--save_steps", "10",
                                    "--num_samples_to_log", "1", "--seed", str(args.seed)],
                   done=o / "final" / "README.md")  # the model card is written last

    runs = ["sft_sequential", "sft_parallel"] + (["grpo_sequential", "grpo_parallel"] if args.grpo_steps > 0 else [])
    report = out / "report"
    stages = [
        ("1. data: Countdown search traces (parallel + sequential renderings of the same search)", data),
        ("2. base: one tokenizer + random tiny Qwen2 for both runs", [base_job]),
        ("3. sft: packed-graph SFT (parallel) and plain causal SFT (sequential baseline)",
         [sft("parallel"), sft("sequential")]),
        ("4. eval_sft: greedy decoding of the test split with the runner",
         [bench(m / "sft_parallel" / "final", "parallel", "sft_parallel"),
          bench(m / "sft_sequential" / "final", "sequential", "sft_sequential")]),
    ]
    if args.grpo_steps > 0:
        stages += [
            ("5. grpo: short P-GRPO from each SFT model (correctness + acceleration)",
             [grpo("parallel"), grpo("sequential")]),
            ("6. eval_grpo: the same benchmark on the GRPO models",
             [bench(m / "grpo_parallel" / "final", "parallel", "grpo_parallel"),
              bench(m / "grpo_sequential" / "final", "sequential", "grpo_sequential")]),
        ]
    stages.append(("7. report: table and plots", [
        Job("compare", [py, "-m", "eval.compare", *[str(out / "eval" / r) for r in runs], "--out", str(report)])]))
    return pipe, stages


def write_report(pipe: Pipeline, args, wall: float) -> Path:
    report = pipe.out / "report"
    table = (report / "compare.md").read_text(encoding="utf-8") if (report / "compare.md").exists() else ""
    lines = ["# parallel_reason demo report", "",
             f"Countdown, {args.numbers} numbers; {args.train_n} training traces; test split of {args.test_n} problems, "
             f"greedy decoding. Tiny Qwen2 ({args.layers} layers, hidden {args.hidden}) built from the data.", "",
             f"Total wall time of this invocation: {wall / 60:.1f} min ({os.cpu_count()} CPU cores).", "",
             "## Results", "", table.strip(), "",
             "![accuracy vs critical-path budget](accuracy_vs_budget.png)", "",
             "![speedup histogram](speedup_hist.png)", "",
             "## Stages", "", "| stage | seconds | status |", "|---|---|---|"]
    lines += [f"| {t} | {s:.0f} | {st} |" for t, s, st in pipe.times]
    lines += ["", "## Commands", "", "Run from the repository root; logs in `logs/`.", "", "```bash"]
    lines += [c for _, c in pipe.commands]
    lines += ["```", ""]
    report.mkdir(parents=True, exist_ok=True)
    path = report / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (report / "stages.json").write_text(json.dumps({"wall_s": wall, "stages": pipe.times}, indent=2),
                                         encoding="utf-8")
    return path


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo", help="output folder (data, models, eval, logs, report)")
    ap.add_argument("--numbers", type=int, default=3, help="Countdown input numbers (3: the short variant)")
    ap.add_argument("--train-n", type=int, default=4000, help="SFT training traces (per mode)")
    ap.add_argument("--val-n", type=int, default=200, help="held-out traces for the SFT eval loss")
    ap.add_argument("--test-n", type=int, default=200, help="test problems benchmarked")
    ap.add_argument("--grpo-n", type=int, default=1000, help="GRPO training prompts")
    ap.add_argument("--hidden", type=int, default=128, help="tiny model hidden size (MLP: 2x)")
    ap.add_argument("--layers", type=int, default=4, help="tiny model layers")
    ap.add_argument("--sft-epochs", type=float, default=2.0)
    ap.add_argument("--sft-lr", type=float, default=3e-3)
    ap.add_argument("--grpo-steps", type=int, default=20, help="0 skips GRPO")
    ap.add_argument("--grpo-g", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--grpo-prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--grpo-lr", type=float, default=5e-5)
    ap.add_argument("--max-new-tokens", type=int, default=384, help="sampled-token budget per rollout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="commands run side by side")
    ap.add_argument("--heartbeat", type=float, default=60.0, help="seconds between progress lines (0: off)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)

    t0 = time.perf_counter()
    pipe, stages = build(args)
    print(f"parallel_reason demo -> {pipe.out}", flush=True)
    for title, jobs in stages:
        pipe.stage(title, jobs)
    if args.dry_run:
        return 0
    wall = time.perf_counter() - t0
    path = write_report(pipe, args, wall)
    table = pipe.out / "report" / "compare.md"
    if table.exists():
        print("\n" + table.read_text(encoding="utf-8").strip(), flush=True)
    print(f"\nreport: {path}\ntotal wall time: {wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
