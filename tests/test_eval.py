"""eval.benchmark and eval.compare end to end on a tiny model built here.

The tiny model is random, so its greedy output is noise: these tests check the
pipeline (files, fields, resume, summaries, table, plots). Scoring of real fork/join
rollouts (blocks, critical path < total, correct answers) is checked on rollouts
that the runner replays from generated traces.
"""

from __future__ import annotations

import json
import math
import shutil
from itertools import combinations
from pathlib import Path

import pytest

from eval import benchmark as bm
from eval import compare as cmp
from parallel_reason import evaluate as ev
from parallel_reason.eval_runs import read_rows

TINY = dict(vocab_size=300, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def countdown_records():
    from data_gen import countdown as dg

    return dg.generate(dg.GenConfig(n_numbers=3, split="test", seed=0), 6, progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, countdown_records):
    """A countdown test file (6 problems, 3 numbers) and a tiny model saved to disk."""
    from data_gen import countdown as dg
    from parallel_reason.tiny import build_tiny

    d = tmp_path_factory.mktemp("eval")
    data = d / "countdown3.jsonl"
    dg.write_jsonl(countdown_records, str(data))
    corpus = [r["prompt"] + r["completion"] for r in countdown_records] * 2 + [
        "Solve the problem \\boxed{42} #### 1,234"
    ]
    build_tiny(corpus, d / "model", **TINY)
    return d


def _bench(workdir: Path, out: str, mode: str, *extra: str) -> dict:
    argv = [
        "--model",
        str(workdir / "model"),
        "--task",
        "countdown",
        "--data",
        str(workdir / "countdown3.jsonl"),
        "--mode",
        mode,
        "--out",
        str(workdir / out),
        "--max-new-tokens",
        "12",
        "--batch-size",
        "3",
        "--chunk-size",
        "3",
        "--no-progress",
        *extra,
    ]
    assert bm.main(argv) == 0
    return json.loads((workdir / out / "summary.json").read_text())


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_runs(workdir):
    par = _bench(workdir, "par", "parallel")
    seq = _bench(workdir, "seq", "sequential")
    return par, seq


def test_benchmark_both_modes(workdir, two_runs, countdown_records):
    par, seq = two_runs
    ids = [r["id"] for r in countdown_records]
    for name, summary, mode in (("par", par, "parallel"), ("seq", seq, "sequential")):
        rows = _lines(workdir / name / "results.jsonl")
        assert [r["id"] for r in rows] == ids
        for r in rows:
            assert set(bm.ROW_FIELDS) - {"samples", "pass_at_k"} <= set(r), set(bm.ROW_FIELDS) - set(r)
            assert r["mode"] == mode and r["task"] == "countdown" and r["n_samples"] == 1
            assert r["reference"] == {
                "nums": next(x["nums"] for x in countdown_records if x["id"] == r["id"]),
                "target": next(x["target"] for x in countdown_records if x["id"] == r["id"]),
            }
            assert r["prompt"].startswith("Numbers: ")
            assert 1 <= r["total_tokens"] <= 12 and 1 <= r["critical_path"] <= r["total_tokens"]
            assert r["speedup"] == pytest.approx(r["total_tokens"] / r["critical_path"])
            assert isinstance(r["correct"], bool) and isinstance(r["format_valid"], bool)
            assert isinstance(r["completion"], str) and r["wall_clock_s"] >= 0
            assert r["finish_reason"] in (
                "eos",
                "max_new_tokens",
                "unclosed_thread",
                "malformed",
                "max_depth",
                "max_threads",
                "no_outlines",
                "eos_in_thread",
                "max_thread_tokens",
            )
            if mode == "sequential":
                assert r["critical_path"] == r["total_tokens"] and r["blocks"] == 0
        for key in (
            "accuracy",
            "total_tokens_mean",
            "critical_path_mean",
            "speedup_mean_of_ratios",
            "speedup_ratio_of_means",
            "wall_clock_total_s",
            "wall_clock_per_problem_s",
            "format_valid_rate",
            "finish_reasons",
            "command",
            "model",
        ):
            assert key in summary, key
        assert summary["n_problems"] == 6 and summary["mode"] == mode
        assert summary["accuracy"] == sum(r["correct"] for r in rows) / 6
        assert summary["total_tokens_mean"] == pytest.approx(sum(r["total_tokens"] for r in rows) / 6)
        assert sum(summary["finish_reasons"].values()) == 6
        assert summary["model"] == str((workdir / "model").resolve())
        assert "eval.benchmark" in summary["command"] and "--mode " + mode in summary["command"]
        assert "pass_at_k" not in summary
    assert seq["speedup_mean_of_ratios"] == 1.0 and seq["speedup_ratio_of_means"] == 1.0


def test_resume_decodes_only_missing(workdir, two_runs, monkeypatch):
    from parallel_reason.runner import Runner

    src, dst = workdir / "par", workdir / "par_resume"
    shutil.copytree(src, dst)
    res = dst / "results.jsonl"
    lines = res.read_text().splitlines(keepends=True)
    # drop the last two rows and cut the one before in half (a run killed mid-write)
    res.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    calls = []
    orig = Runner.generate

    def counting(self, prompts, *a, **kw):
        calls.append(len(prompts))
        return orig(self, prompts, *a, **kw)

    monkeypatch.setattr(Runner, "generate", counting)
    summary = _bench(workdir, "par_resume", "parallel")
    assert sum(calls) == 3 and summary["decoded_this_run"] == 3
    rows = _lines(res)
    assert [r["id"] for r in rows] == [r["id"] for r in _lines(src / "results.jsonl")]
    # greedy decoding: the redone problems give the same rows (wall-clock aside)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("wall_clock")}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in _lines(src / "results.jsonl")]
    assert summary["n_problems"] == 6

    # a complete run: nothing to decode
    calls.clear()
    summary = _bench(workdir, "par_resume", "parallel")
    assert calls == [] and summary["decoded_this_run"] == 0 and summary["n_problems"] == 6

    # a different configuration is refused
    with pytest.raises(SystemExit):
        _bench(workdir, "par_resume", "sequential")


def test_samples_and_pass_at_k(workdir):
    s = _bench(
        workdir, "sampled", "parallel", "--samples", "3", "--temperature", "1.0", "--n", "2", "--max-new-tokens", "6"
    )
    rows = _lines(workdir / "sampled" / "results.jsonl")
    assert len(rows) == 2 and s["n_samples"] == 6 and s["samples_per_problem"] == 3
    for r in rows:
        assert len(r["samples"]) == 3 and [x["sample_index"] for x in r["samples"]] == [0, 1, 2]
        assert set(r["pass_at_k"]) == {"1", "2", "3"}
        assert r["pass_at_k"]["1"] == pytest.approx(r["n_correct"] / 3)
        assert r["seed"] is not None
    assert set(s["pass_at_k"]) == {"1", "2", "3"}
    assert s["accuracy"] == pytest.approx(s["pass_at_k"]["1"])


def test_pass_at_k_estimator():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # exact: share of k-subsets of the n samples holding a correct one
                subsets = list(combinations([1] * c + [0] * (n - c), k))
                exact = sum(any(s) for s in subsets) / len(subsets)
                assert bm.pass_at_k(n, c, k) == pytest.approx(exact)
    assert bm.ks_for(1) == [1] and bm.ks_for(8) == [1, 2, 4, 8] and bm.ks_for(5) == [1, 2, 4, 5]


def test_scoring_real_forks(workdir, countdown_records):
    """Replayed fork/join trajectories: correct, format-valid, critical path < total."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parallel_reason.format import Limits
    from parallel_reason.runner import Runner
    from parallel_reason.tasks import get_task

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model").eval()
    recs = countdown_records[:2]
    runner = Runner(model, tok, max_new_tokens=512, batch_size=2)
    ros = runner.replay([r["prompt"] for r in recs], [r["completion"] for r in recs])
    problems = ev.load_problems(str(workdir / "countdown3.jsonl"), "countdown", n=2)
    task = get_task("countdown")
    rows = []
    for p, ro, rec in zip(problems, ros, recs):
        s = ev.score_sample(task, p, ro, Limits(max_depth=2, max_width=8), tokenizer=tok)
        assert s["completion"] == rec["completion"]  # EOS dropped, tags kept
        assert s["correct"] and s["verdict"] == "correct" and s["answer"] == rec["answer"]
        assert s["format_valid"] and s["finish_reason"] == "eos"
        assert s["blocks"] >= 1 and s["threads"] >= 2
        assert s["critical_path"] < s["total_tokens"] and s["speedup"] > 1
        assert s["total_tokens"] == ro.total_tokens and s["critical_path"] == ro.critical_path
        rows.append(bm.make_row("countdown", "parallel", p, [s], None, 0.5))
    summ = bm.summarize(rows)
    assert summ["accuracy"] == 1.0 and summ["format_valid_rate"] == 1.0
    assert summ["speedup_mean_of_ratios"] == pytest.approx(sum(r["speedup"] for r in rows) / 2)
    assert summ["speedup_ratio_of_means"] == pytest.approx(
        sum(r["total_tokens"] for r in rows) / sum(r["critical_path"] for r in rows)
    )
    assert summ["wall_clock_total_s"] == pytest.approx(1.0) and summ["wall_clock_per_problem_s"] == pytest.approx(0.5)


def test_read_rows_tolerates_garbage(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('{"id": "a", "x": 1}\nnot json\n{"id": "b"}\n{"no_id": 1}\n{"id": "a", "x": 2}\n{"id": "c", "x"')
    rows, bad = read_rows(p)
    assert [r["id"] for r in rows] == ["a", "b"] and rows[0]["x"] == 1 and bad == 3
    rows = bm.repair_results(p)
    assert p.read_text() == '{"id": "a", "x": 1}\n{"id": "b"}\n'


def test_math_benchmark_pipeline(workdir, tmp_path):
    """GSM8K-style JSONL through the math task: prompt template, #### reference, math-verify."""
    pytest.importorskip("math_verify")
    data = tmp_path / "gsm.jsonl"
    with open(data, "w") as f:
        for q, a in [
            ("What is 2+2?", "2+2=4\n#### 4"),
            ("Half of 3?", "#### 1.5"),
            ("Cost?", "10*123.4=1234\n#### 1,234"),
        ]:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    problems = ev.load_problems(str(data), "math")
    assert [p["reference"] for p in problems] == ["4", "1.5", "1,234"]
    assert [p["id"] for p in problems] == ["0", "1", "2"]
    assert "What is 2+2?" in problems[0]["prompt"] and "\\boxed{" in problems[0]["prompt"]
    out = tmp_path / "run"
    argv = [
        "--model",
        str(workdir / "model"),
        "--task",
        "math",
        "--data",
        str(data),
        "--mode",
        "parallel",
        "--out",
        str(out),
        "--max-new-tokens",
        "5",
        "--no-progress",
    ]
    assert bm.main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    rows = _lines(out / "results.jsonl")
    assert s["task"] == "math" and s["n_problems"] == 3 and len(rows) == 3
    assert rows[2]["reference"] == "1,234"
    # the scoring path of a correct boxed answer (fake rollout, as the runner returns it)

    from conftest import make_rollout

    def FakeRollout():
        return make_rollout(
            completion="so 10 * 123.4 = \\boxed{\\$1,234}", total_tokens=10, critical_path=10, wall_s=0.1
        )

    from parallel_reason.format import Limits
    from parallel_reason.tasks import get_task

    sc = ev.score_sample(get_task("math"), problems[2], FakeRollout(), Limits())
    assert sc["correct"] and sc["answer"] == "\\$1,234"
    # a parquet source through datasets
    pytest.importorskip("pyarrow")
    import datasets

    pq = tmp_path / "math.parquet"
    datasets.Dataset.from_list([{"problem": "1/2+1/4?", "solution": "It is $\\boxed{\\frac{3}{4}}$."}]).to_parquet(
        str(pq)
    )
    probs = ev.load_problems(str(pq), "math")
    assert probs[0]["reference"] == "\\frac{3}{4}" and "1/2+1/4?" in probs[0]["prompt"]


def _png_ok(path: Path) -> bool:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return False
    img = mpimg.imread(str(path))
    return img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_compare(workdir, two_runs, capsys):
    par, seq = two_runs
    out = workdir / "cmp"
    assert cmp.main([str(workdir / "seq"), str(workdir / "par"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "compare.md").read_text()
    assert md.strip() in printed
    assert _png_ok(out / "accuracy_vs_budget.png") and _png_ok(out / "speedup_hist.png")
    table = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    body = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        body[cells[0]] = dict(zip(header, cells))
    assert set(body) == {"seq", "par"}
    for name, summary in (("seq", seq), ("par", par)):
        row = body[name]
        assert row["mode"] == summary["mode"]
        assert row["problems"] == str(summary["n_problems"])
        assert row["accuracy"] == f"{summary['accuracy']:.3f}"
        assert row["total tokens"] == f"{summary['total_tokens_mean']:.1f}"
        assert row["critical path"] == f"{summary['critical_path_mean']:.1f}"
        assert row["speedup (mean of ratios)"] == f"{summary['speedup_mean_of_ratios']:.3f}"
        assert row["speedup (ratio of means)"] == f"{summary['speedup_ratio_of_means']:.3f}"
        assert row["wall-clock / problem (s)"] == f"{summary['wall_clock_per_problem_s']:.3f}"
        assert row["format valid"] == f"{summary['format_valid_rate']:.3f}"
        assert row["pass@k"] == "-"
    assert body["seq"]["vs seq (mean of ratios)"] == "baseline"
    # vs the sequential baseline: baseline total / parallel critical path, per problem and of means
    seq_rows = {r["id"]: r for r in _lines(workdir / "seq" / "results.jsonl")}
    par_rows = _lines(workdir / "par" / "results.jsonl")
    mor = sum(seq_rows[r["id"]]["total_tokens"] / r["critical_path"] for r in par_rows) / len(par_rows)
    rom = sum(seq_rows[r["id"]]["total_tokens"] for r in par_rows) / sum(r["critical_path"] for r in par_rows)
    assert body["par"]["vs seq (mean of ratios)"] == f"{mor:.3f}"
    assert body["par"]["vs seq (ratio of means)"] == f"{rom:.3f}"
    assert body["par"]["critical path / seq tokens"] == f"{1 / rom:.3f}"
    assert body["seq"]["critical path / seq tokens"] == "baseline"
    # rates with 95% Wilson intervals, and the share of samples that forked
    from parallel_reason.metrics import wilson_interval

    for name in ("seq", "par"):
        rows = _lines(workdir / name / "results.jsonl")
        k = sum(bool(r["correct"]) for r in rows)
        lo, hi = wilson_interval(k, len(rows))
        assert body[name]["accuracy 95% CI"] == f"[{lo:.3f}, {hi:.3f}]"
        assert body[name]["forks"] == f"{sum(r['blocks'] > 0 for r in rows) / len(rows):.3f}"
    assert body["seq"]["forks"] == "0.000"


def test_wilson_interval_known_values():
    from parallel_reason.metrics import wilson_interval

    lo, hi = wilson_interval(60, 100)  # textbook: 0.502 .. 0.691
    assert abs(lo - 0.5020) < 1e-3 and abs(hi - 0.6906) < 1e-3
    assert wilson_interval(0, 500)[0] < 1e-12 and wilson_interval(500, 500)[1] > 1 - 1e-12
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(300, 500)
    assert lo < 0.6 < hi and hi - lo < 0.09  # 500 problems: about +-4 points


def test_compare_without_baseline_and_budget_curve(workdir, two_runs, tmp_path):
    res = cmp.compare([str(workdir / "par"), str(workdir / "par")], tmp_path / "c2")
    assert "n/a" in res["markdown"] and "par#1" in res["markdown"]
    from eval.plots import budget_curve

    samples = [
        {"correct": True, "critical_path": 5},
        {"correct": False, "critical_path": 1},
        {"correct": True, "critical_path": 10},
        {"correct": True, "critical_path": 10},
    ]
    assert budget_curve(samples, [0, 4, 5, 9, 10, 100]) == [0, 0, 0.25, 0.25, 0.75, 0.75]
    assert not math.isnan(sum(budget_curve([], [1, 2])))


def test_decode_and_score_is_the_library_piece(workdir):
    """parallel_reason.evaluate: problems decoded chunk by chunk, every rollout scored,
    seeds per problem (None when greedy), prompts rendered into problem["text"]."""
    p = bm.build_parser()
    args = p.parse_args(
        [
            "--model",
            str(workdir / "model"),
            "--task",
            "countdown",
            "--data",
            str(workdir / "countdown3.jsonl"),
            "--out",
            "unused",
            "--max-new-tokens",
            "6",
            "--batch-size",
            "2",
            "--chunk-size",
            "2",
            "--samples",
            "2",
            "--temperature",
            "1",
            "--no-progress",
        ]
    )
    problems = ev.load_problems(args.data, args.task, n=3)
    runner = ev.load_runner(args, parallel=True)
    chunks = list(ev.decode_and_score(runner, problems, args, 2))
    assert [len(c) for c, _ in chunks] == [2, 1] and all(s >= 0 for _, s in chunks)
    decoded = [d for c, _ in chunks for d in c]
    assert [d.problem["id"] for d in decoded] == [q["id"] for q in problems]
    for d in decoded:
        assert d.seed == ev.problem_seed(args.seed, d.problem["id"])
        assert d.problem["text"] and len(d.rollouts) == len(d.scores) == 2
        assert [s["sample_index"] for s in d.scores] == [0, 1]
        assert set(ev.SAMPLE_FIELDS) == set(d.scores[0])
