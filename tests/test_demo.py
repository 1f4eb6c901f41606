"""The end-to-end CPU pipeline (eval.demo): its commands, its skip-when-done logic,
and (slow) one miniature run from data to report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval import demo

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--train-n",
    "120",
    "--val-n",
    "12",
    "--test-n",
    "12",
    "--full-test-n",
    "6",
    "--grpo-n",
    "24",
    "--sft-tokens",
    "0",
    "--sft-epochs",
    "1",
    "--grpo-steps",
    "2",
    "--grpo-g",
    "4",
    "--grpo-prompts",
    "2",
    "--hidden",
    "32",
    "--layers",
    "1",
    "--vocab-size",
    "400",
    "--self-train-n",
    "4",
    "--self-train-k",
    "2",
    "--max-new-tokens",
    "48",
    "--heartbeat",
    "0",
]


def _stages(tmp_path, *extra):
    args = demo.build_arg_parser().parse_args(["--out", str(tmp_path / "d"), *SMALL, *extra])
    return demo.build(args)


def test_dry_run_commands_parse_with_each_tool(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "d"), *SMALL, "--dry-run"]) == 0
    pipe, stages = _stages(tmp_path)
    names = [j.name for _, jobs in stages for j in jobs]
    assert names[:7] == [
        "data_train.parallel",
        "data_train.dfs",
        "data_val.parallel",
        "data_val.dfs",
        "data_test",
        "data_grpo.train",
        "data_test_full",
    ]
    assert {
        "base",
        "sft_parallel",
        "sft_dfs",
        "eval_sft_parallel",
        "eval_sft_dfs",
        "eval_full_sft_parallel",
        "eval_full_sft_dfs",
        "grpo_parallel",
        "self_train",
        "eval_grpo_parallel",
        "compare",
        "compare_full",
    } <= set(names)
    from data_gen import countdown as gen
    from eval.benchmark import build_parser
    from parallel_reason import grpo, sft

    for _, jobs in stages:
        for j in jobs:
            argv = j.argv[1:]
            if argv[:2] == ["-m", "eval.benchmark"]:
                ns = build_parser().parse_args(argv[2:])
                assert ns.mode == ("sequential" if "dfs" in j.name else "parallel")
            elif argv[:2] == ["-m", "data_gen.countdown"]:
                ns = gen.build_parser().parse_args(argv[2:])
                assert ns.num_range == ((1, 99) if "full" in j.name else (1, 20))
            elif argv[0] == "recipes/sft.py":
                cfg = sft.parse_args(argv[1:])
                assert cfg.mode == ("sequential" if "dfs" in j.name else "parallel")
                assert cfg.model_name_or_path.endswith("base")
            elif argv[0] == "recipes/grpo.py":
                cfg = grpo.parse_args(argv[1:])
                assert cfg.parallel == ("parallel" in j.name)
                # whole groups per forward, dividing the step's rollouts
                assert cfg.micro_batch_size % cfg.num_generations == 0
                assert (cfg.prompts_per_step * cfg.num_generations) % cfg.micro_batch_size == 0
    out = capsys.readouterr().out
    assert "python recipes/sft.py --config configs/sft/countdown_tiny.yaml" in out
    assert not (tmp_path / "d").exists(), "a dry run writes nothing"


def test_done_stages_are_skipped(tmp_path):
    pipe, stages = _stages(tmp_path)
    title, data_jobs = stages[0]
    for j in data_jobs:  # pretend the data exists: nothing may be started
        j.done.parent.mkdir(parents=True, exist_ok=True)
        j.done.write_text("")
    pipe.dry_run = False
    pipe.stage(title, data_jobs)
    assert pipe.times[-1][2] == "skipped (done)"
    assert not (tmp_path / "d" / "logs").exists()


def test_failing_stage_stops_with_its_log(tmp_path, capsys):
    pipe = demo.Pipeline(tmp_path / "d", jobs=2, heartbeat=0, dry_run=False)
    ok = demo.Job("ok", [sys.executable, "-c", "print('fine')"])
    bad = demo.Job("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(SystemExit):
        pipe.stage("two jobs", [ok, bad])
    err = capsys.readouterr().err
    assert "failed: bad" in err and "boom" in err
    assert (tmp_path / "d" / "logs" / "ok.log").read_text().strip().endswith("fine")


def test_overlapping_stages_follow_dependencies(tmp_path):
    """Across stages, a job starts once the jobs it reads from have ended (not when the
    whole previous stage has), ``first`` jobs start before the others that are ready, and
    each stage is timed from its first start to its last end."""
    log = tmp_path / "order.txt"

    def job(name: str, secs: float, **kw) -> demo.Job:
        code = f"import time; open({str(log)!r}, 'a').write('start {name}\\n'); time.sleep({secs})"
        code += f"; open({str(log)!r}, 'a').write('end {name}\\n')"
        return demo.Job(name, [sys.executable, "-c", code], **kw)

    pipe = demo.Pipeline(tmp_path / "d", jobs=2, heartbeat=0, dry_run=False)
    pipe.stages(
        [
            ("train", [job("fast", 0.2), job("slow", 2.0)]),
            ("eval", [job("eval_fast", 0.1, after=("fast",)), job("eval_slow", 0.1, after=("slow",))]),
            ("rl", [job("rl", 0.3, after=("fast",), first=True)]),
        ]
    )
    lines = log.read_text().split("\n")
    # the RL job (first) and then eval_fast run while "slow" still trains; eval_slow waits for it
    assert lines.index("start rl") < lines.index("end slow")
    assert lines.index("start rl") < lines.index("start eval_fast")
    assert lines.index("start eval_fast") < lines.index("end slow") < lines.index("start eval_slow")
    assert [t[0] for t in pipe.times] == ["train", "eval", "rl"] and {t[2] for t in pipe.times} == {"ok"}
    assert pipe.times[0][1] >= 2.0 and pipe.times[2][1] < 2.0


def test_a_failed_dependency_stops_what_needs_it(tmp_path, capsys):
    pipe = demo.Pipeline(tmp_path / "d", jobs=2, heartbeat=0, dry_run=False)
    bad = demo.Job("train", [sys.executable, "-c", "import sys; print('diverged'); sys.exit(2)"])
    after = demo.Job("eval", [sys.executable, "-c", "print('never')"], after=("train",))
    with pytest.raises(SystemExit):
        pipe.stages([("train", [bad]), ("eval", [after])])
    assert "failed: train" in capsys.readouterr().err
    assert not (tmp_path / "d" / "logs" / "eval.log").exists()
    assert [t[2] for t in pipe.times] == ["failed", "not run"]


@pytest.mark.slow
def test_miniature_pipeline_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "eval.demo", "--out", str(out), *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (out / "report" / "compare.md").read_text()
    for run in ("sft_dfs", "sft_parallel", "grpo_parallel"):
        assert f"| {run} |" in table
        summary = json.loads((out / "eval" / run / "summary.json").read_text())
        assert summary["n_problems"] == 12
        assert json.loads((out / "eval" / f"full_{run}" / "summary.json").read_text())["n_problems"] == 6
    report = (out / "report" / "README.md").read_text()
    assert "## Targets" in report and "self-training keeps" in report
    assert (out / "report" / "sft_curves.png").stat().st_size > 0
    assert (out / "report" / "grpo_curves.png").stat().st_size > 0
    assert (out / "report" / "accuracy_vs_budget.png").stat().st_size > 0
    assert (out / "report" / "speedup_hist.png").stat().st_size > 0
    stages = json.loads((out / "report" / "stages.json").read_text())["stages"]
    assert [s[2] for s in stages] == ["ok"] * 7
    # a rerun skips every finished stage
    r = subprocess.run(
        [sys.executable, "-m", "eval.demo", "--out", str(out), *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0
    stages = json.loads((out / "report" / "stages.json").read_text())["stages"]
    assert [s[2] for s in stages[:6]] == ["skipped (done)"] * 6


def test_join_and_outline_flags_reach_the_commands(tmp_path):
    """The defaults write bare outlines and train a tree-join model; ``--join summary``
    also marks the threads' results in the data, and the SFT run gets the join."""
    _, stages = _stages(tmp_path)
    jobs = {j.name: j.argv for _, js in stages for j in js}
    assert "--bare-outlines" in jobs["data_train.parallel"] and "--results" not in jobs["data_train.parallel"]
    sft_argv = jobs["sft_parallel"]
    assert sft_argv[sft_argv.index("--join") + 1] == "tree"
    _, stages = _stages(tmp_path, "--join", "summary", "--no-bare-outlines")
    jobs = {j.name: j.argv for _, js in stages for j in js}
    assert "--results" in jobs["data_train.parallel"] and "--bare-outlines" not in jobs["data_train.parallel"]
    sft_argv = jobs["sft_parallel"]
    assert sft_argv[sft_argv.index("--join") + 1] == "summary"
