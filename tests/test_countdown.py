"""Countdown task (solver, verifier) and the search-trace generator (data_gen.countdown)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from data_gen import countdown as gen
from parallel_reason import metrics
from parallel_reason.format import Limits, parse, strip_tags, validate
from parallel_reason.tasks import countdown as cd
from parallel_reason.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
NUMS = [4, 7, 25, 60]


def _naive_reachable(nums: list[int]) -> set[int]:
    """Independent enumeration: repeatedly combine two numbers (generation rules)."""
    if len(nums) == 1:
        return {nums[0]}
    out: set[int] = set()
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            hi, lo = max(nums[i], nums[j]), min(nums[i], nums[j])
            rest = [x for k, x in enumerate(nums) if k not in (i, j)]
            results = [hi + lo, hi - lo, hi * lo] + ([hi // lo] if lo and hi % lo == 0 else [])
            for r in results:
                out |= _naive_reachable(rest + [r])
    return out


@pytest.fixture(scope="module")
def par_records():
    return gen.generate(gen.GenConfig(seed=3, mode="parallel"), 300, progress=False)


@pytest.fixture(scope="module")
def seq_records():
    return gen.generate(gen.GenConfig(seed=3, mode="sequential"), 300, progress=False)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_gen.countdown", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------------------
# task: registry, solver, problems, prompt, extraction


def test_registry():
    assert get_task("countdown") is cd
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nope")


def test_reachable_matches_independent_enumeration():
    rng = random.Random(11)
    for _ in range(40):
        nums = [rng.randint(1, 30) for _ in range(rng.choice([2, 3, 4]))]
        assert set(cd.reachable(nums)) == _naive_reachable(nums), nums


def test_solver_solutions_verify_and_unreachable_is_none():
    rng = random.Random(5)
    for _ in range(300):
        nums, target = cd.make_problem(rng)
        expr = cd.solve(nums, target)
        assert expr is not None
        v = cd.verify(expr, nums, target)
        assert v.ok, (nums, target, expr, v.reason)
        assert v.value == target
    # 1 1 1 1 reaches at most 4
    assert cd.solve([1, 1, 1, 1], 50) is None
    assert 50 not in cd.reachable([1, 1, 1, 1])
    assert cd.solve([3, 4], 12) == "4*3"


def test_make_problem_ranges_and_solvable():
    rng = random.Random(0)
    for n_numbers in (3, 4):
        for _ in range(100):
            nums, target = cd.make_problem(rng, n_numbers)
            assert len(nums) == n_numbers and all(1 <= x <= 99 for x in nums)
            assert 10 <= target <= 100
            assert target in cd.reachable(nums)


def test_prompt_exact():
    assert cd.prompt([4, 7, 25, 60], 13) == "Numbers: 4 7 25 60\nTarget: 13\n"


def test_extract_answer():
    assert cd.extract_answer("x\nAnswer: 1+2\nmore\nAnswer:  60-4*7 \nbye") == "60-4*7"
    # tags are kept (never stripped into an expression): verify rejects such an answer
    assert cd.extract_answer("<Parallel><Thread>1: Answer: 4*</Thread>3\n</Parallel>") == "4*</Thread>3"
    assert cd.extract_answer("no answer here") is None
    assert cd.extract_answer("Answer:   \n") is None
    assert cd.extract_answer(None) is None


# ---------------------------------------------------------------------------
# verifier


def test_verify_accepts_correct_expressions():
    assert cd.verify("60/4-(25-7)+16", [4, 7, 25, 60, 16], 13).ok
    assert cd.verify("(60 - 25) - 7 * 4 + 6", [4, 7, 25, 60, 6], 13).ok
    # intermediate values may be fractional or negative
    v = cd.verify("6/(1-3/4)", [1, 3, 4, 6], 24)
    assert v.ok and v.value == Fraction(24)
    assert cd.verify("2-3+10", [2, 3, 10], 9).ok
    # a whole completion: the last Answer: line is read
    assert cd.verify("try\nAnswer: 1+1\nAnswer: 60-25-7-4*4", [4, 4, 7, 25, 60], 12).ok
    assert cd.reward("blah\nAnswer: 60/(7-4)-(25-18)", [4, 7, 25, 60, 18], 13) == 1.0


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("60-25-7-5", "uses 5 which is not available"),
        ("25+25-60+4", "uses 25 twice but it is given once"),
        ("60-25-7-4+1", "uses 1 which is not available"),
        ("60-25-7", "does not use 4"),
        ("60/4-7+25", "evaluates to 33, target is 13"),
        ("60/(7-4)+25", "evaluates to 45, target is 13"),
        ("(60+25)/4-7", "evaluates to 57/4, target is 13"),
        ("60/(25-25)+4+7", "division by zero"),
        ("-4+7+25-60", "unary minus"),
        ("60--25+7+4", "unary minus"),
        ("2**10", "unexpected '*' at position 2"),
        ("4 7 25 60", "unexpected 7 at position 2"),
        ("(60-25", "expected ')'"),
        ("60-25)", "unmatched ')'"),
        ("60-", "ends unexpectedly"),
        ("07+4+25+60", "leading zero"),
        ("", "empty answer"),
    ],
)
def test_verify_rejects(expr, reason):
    v = cd.verify(expr, NUMS, 13)
    assert not v.ok
    assert reason in v.reason, v.reason


@pytest.mark.parametrize(
    "text",
    [
        "(21-1)</Thread>*(14-13)",
        "Answer: (21-1)</Thread>*(14-13)",
        "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1: Answer: (21-1)</Thread>*(14-13)",
        "Answer: <Outline>(21-1)*(14-13)",
        "Answer: (21-1)*(14-13)</Parallel>",
    ],
)
def test_verify_rejects_control_tags_inside_the_answer(text):
    """Stripping the tags would read (21-1)*(14-13) = 20: correct, but not what was written."""
    assert cd.verify("(21-1)*(14-13)", [21, 1, 14, 13], 20).ok
    v = cd.verify(text, [21, 1, 14, 13], 20)
    assert not v.ok and "control tag" in v.reason, v.reason
    assert cd.reward(text if "Answer:" in text else "Answer: " + text, [21, 1, 14, 13], 20) == 0.0


@pytest.mark.parametrize(
    "nums, target, what",
    [
        ([2.5, 4, 7], 13, "nums[0]"),
        ([4, 7, 25, 60], 13.5, "'target'"),
        ([4, "x", 25], 13, "nums[1]"),
        ([4, None], 13, "nums[1]"),
        ([True, 4], 13, "nums[0]"),
        ("4 7 25 60", 13, "'nums' must be a list"),
        (7, 13, "'nums' must be a list"),
        ([], 13, "'nums' is empty"),
    ],
)
def test_non_integer_problems_are_refused_not_truncated(nums, target, what):
    """2.5 used to become 2: '2+4+7' was counted correct for [2.5, 4, 7] -> 13."""
    for call in (
        lambda: cd.verify("2+4+7", nums, target),
        lambda: cd.prompt(nums, target),
        lambda: cd.check_problem(nums, target),
    ):
        with pytest.raises(ValueError, match=re.escape(what)):
            call()
    assert cd.reward("Answer: 2+4+7", [2.0, 4, 7], 13) == 1.0  # integral floats (and "4") are integers
    assert cd.check_problem(["4", 7.0], "13") == ([4, 7], 13)


def test_verify_reports_every_number_problem():
    v = cd.verify("25+25+5", NUMS, 13)
    assert not v.ok
    for part in (
        "uses 5 which is not available",
        "uses 25 twice but it is given once",
        "does not use 4",
        "does not use 7",
        "does not use 60",
    ):
        assert part in v.reason
    v = cd.verify("4+4", [4, 4, 4], 8)
    assert "uses 4 twice but it is given 3 times" in v.reason
    assert cd.reward("Answer: 60-25-7-4", NUMS, 13) == 0.0  # 24
    assert cd.reward("60/(7-4)-(25-18)", NUMS, 13) == 0.0  # no Answer: line


@pytest.mark.parametrize(
    "attack, char",
    [
        ("__import__('os').system('ls')", "'_' at position 0"),
        ("1+1;import os", "';' at position 3"),
        ("lambda: 13", "'l' at position 0"),
        ("13 if True else 0", "'i' at position 3"),
        ("60-25-7-4.0", "'.' at position 9"),
        ("0x0d", "'x' at position 1"),
        ("1_3", "'_' at position 1"),
        ("１３", "'１' at position 0"),  # fullwidth digits are not ASCII digits
        ("60-25-7-4\x00", "'\\x00' at position 9"),
        ("60-25-7-4\n+0", "no 'Answer:' line"),
    ],
)
def test_verify_rejects_injection(attack, char):
    v = cd.verify(attack, NUMS, 13)
    assert not v.ok and v.value is None
    assert char in v.reason, v.reason


def test_verify_bounded_inputs_never_raise():
    deep = "(" * 5000 + "4" + ")" * 5000
    v = cd.verify(deep, NUMS, 13)
    assert not v.ok and "over the limit" in v.reason
    v = cd.verify("(" * 17 + "4" + ")" * 17, NUMS, 13)
    assert not v.ok and "nested deeper than 16" in v.reason
    assert cd.verify("(" * 16 + "60-25-7-4+12-12" + ")" * 16, NUMS + [12, 12], 24).ok
    v = cd.verify("1+" * 150 + "1", NUMS, 13)
    assert not v.ok and "301 characters long" in v.reason
    assert not cd.verify("9" * 10_000_000, NUMS, 13).ok
    assert not cd.verify(None, NUMS, 13).ok
    assert not cd.verify(123, NUMS, 13).ok  # type: ignore[arg-type]
    rng = random.Random(0)
    alphabet = "0123456789+-*/() ()xa_;.=\n"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        v = cd.verify(s, NUMS, 13)  # must not raise
        assert isinstance(v.ok, bool) and isinstance(v.reason, str)


# ---------------------------------------------------------------------------
# generator


def test_records_shape(par_records):
    assert len(par_records) == 300
    for i, r in enumerate(par_records):
        assert r["id"] == f"countdown-train-{i:06d}"
        assert r["task"] == "countdown" and r["mode"] == "parallel"
        assert r["prompt"] == cd.prompt(r["nums"], r["target"])
        assert gen.split_of(r["nums"], r["target"]) == "train"
    keys = [gen.problem_key(r["nums"], r["target"]) for r in par_records]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("which", ["par", "seq"])
def test_every_completion_parses_and_verifies(which, par_records, seq_records):
    records = par_records if which == "par" else seq_records
    for r in records:
        parse(r["completion"], Limits(max_depth=2))
        assert validate(r["completion"], Limits(max_depth=2)) == []
        assert cd.extract_answer(r["completion"]) == r["answer"]
        assert cd.verify(r["answer"], r["nums"], r["target"]).ok
        assert cd.reward(r["completion"], r["nums"], r["target"]) == 1.0
        assert r["completion"].endswith("\nAnswer: " + r["answer"])


def test_parallel_has_blocks_and_sequential_is_the_same_search(par_records, seq_records):
    assert [(r["nums"], r["target"], r["answer"]) for r in par_records] == [
        (r["nums"], r["target"], r["answer"]) for r in seq_records
    ]
    for p, s in zip(par_records, seq_records):
        st = metrics.stats(p["completion"])
        assert st.blocks >= 2 and st.max_depth == 2  # 4 numbers, depth 2: nested blocks
        assert st.critical_path < st.total_tokens
        assert strip_tags(s["completion"]) == s["completion"]  # no tags
        assert metrics.stats(s["completion"]).blocks == 0
        traj = parse(p["completion"])
        for block, _depth in traj.blocks():
            assert len(block.outlines) == len(block.threads) >= 2
            for outline, thread in zip(block.outlines, block.threads):
                move = outline.split(": ", 1)[1]  # "60-25=35 [4 7 35]"
                assert move in s["completion"]  # the same node in the sequential chain
                body = thread.parts[0]
                assert isinstance(body, str) and body.startswith(" ")
                last = thread.parts[-1]
                assert isinstance(last, str) and ("=> none" in last or f"= {p['target']}" in last)


def test_max_depth_and_widths_bound_the_trace():
    recs = gen.generate(gen.GenConfig(seed=1, max_depth=1, widths=(4, 2)), 30, progress=False)
    for r in recs:
        traj = parse(r["completion"], Limits(max_depth=1))
        assert traj.depth == 1 and traj.blocks()[0][0].width == 4
    recs = gen.generate(gen.GenConfig(seed=1, max_depth=0), 30, progress=False)
    assert all(strip_tags(r["completion"]) == r["completion"] for r in recs)
    recs = gen.generate(gen.GenConfig(seed=1, n_numbers=3), 30, progress=False)
    assert all(len(r["nums"]) == 3 and cd.verify(r["answer"], r["nums"], r["target"]).ok for r in recs)


def test_splits_disjoint(par_records):
    keys = {"train": {gen.problem_key(r["nums"], r["target"]) for r in par_records}}
    for split in ("val", "test"):
        recs = gen.generate(gen.GenConfig(seed=3, split=split), 40, progress=False)
        assert all(r["id"].startswith(f"countdown-{split}-") for r in recs)
        keys[split] = {gen.problem_key(r["nums"], r["target"]) for r in recs}
        assert len(keys[split]) == 40
        assert all(gen.split_of(r["nums"], r["target"]) == split for r in recs)
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    # the split depends on the sorted numbers and the target only
    assert gen.split_of([60, 4, 25, 7], 13) == gen.split_of([4, 7, 25, 60], 13)


def test_summarize(par_records, seq_records):
    s = gen.summarize(par_records)
    q = gen.summarize(seq_records, [metrics.total_tokens(r["completion"]) for r in seq_records])
    assert s["n"] == 300 and s["speedup_ratio_of_means"] > 1.5 and s["threads_per_block"] >= 2
    assert s["total_tokens_mean"] > s["critical_path_mean"]
    assert q["speedup_mean_of_ratios"] == 1.0 and q["blocks_mean"] == 0
    assert q["speedup_vs_baseline_ratio_of_means"] == 1.0


def test_cli_deterministic_across_runs_and_workers(tmp_path):
    a, b, c, d = (tmp_path / f"{x}.jsonl" for x in "abcd")
    r1 = _run_cli("--n", "60", "--seed", "7", "--out", str(a), "--stats")
    assert r1.returncode == 0, r1.stderr
    assert "mean critical path" in r1.stdout and "speedup, ratio of means" in r1.stdout
    assert _run_cli("--n", "60", "--seed", "7", "--out", str(b)).returncode == 0
    r3 = _run_cli("--n", "60", "--seed", "7", "--workers", "2", "--chunk-size", "5", "--out", str(c))
    assert r3.returncode == 0, r3.stderr
    assert _run_cli("--n", "60", "--seed", "8", "--out", str(d)).returncode == 0
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert a.read_bytes() != d.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 60
    rec = json.loads(lines[0])
    assert list(rec) == ["id", "task", "prompt", "completion", "nums", "target", "answer", "mode"]
    # the in-process generator gives the same records as the CLI
    same = gen.generate(gen.GenConfig(seed=7), 60, progress=False)
    assert [json.loads(x)["completion"] for x in lines] == [r["completion"] for r in same]
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"]  # no tmp files left


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "tree"], "invalid choice"),
        (["--n", "0"], "must be in 1..inf"),
        (["--widths", "3,x"], "comma-separated positive integers"),
        (["--numbers", "9"], "must be in 2..6"),
        (["--split", "dev"], "invalid choice"),
    ],
)
def test_cli_bad_options(tmp_path, args, message):
    r = _run_cli("--out", str(tmp_path / "x.jsonl"), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------------------
# generator options: depth-first baseline, mixed data, restated threads, goals, ranges


def test_dfs_stops_at_the_first_solution_of_the_same_search(seq_records):
    """``dfs`` renders the same explored tree as ``sequential`` but stops at the first
    child whose subtree reaches the target; it is never longer."""
    dfs = gen.generate(gen.GenConfig(seed=3, mode="dfs"), 300, progress=False)
    assert [(r["nums"], r["target"], r["answer"]) for r in dfs] == [
        (r["nums"], r["target"], r["answer"]) for r in seq_records
    ]
    shorter = 0
    for d, s in zip(dfs, seq_records):
        assert strip_tags(d["completion"]) == d["completion"]
        assert cd.verify(cd.extract_answer(d["completion"]), d["nums"], d["target"]).ok
        top = [line for line in d["completion"].split("\n") if line and not line.startswith((" ", "=>", "Answer"))]
        assert top == [line for line in s["completion"].split("\n") if line in top][: len(top)]
        # the last top-level move is the one that reaches the target: its subtree ends with it
        assert d["completion"].split("\n=> ")[-1].startswith(d["answer"])
        assert metrics.total_tokens(d["completion"]) <= metrics.total_tokens(s["completion"])
        shorter += metrics.total_tokens(d["completion"]) < metrics.total_tokens(s["completion"])
    assert shorter > 100  # the same-content rendering goes on after the solution


def test_mixed_mode_is_deterministic_and_mixes():
    cfg = gen.GenConfig(seed=5, n_numbers=3, mode="mixed", parallel_fraction=0.5)
    a = gen.generate(cfg, 200, progress=False)
    assert a == gen.generate(cfg, 200, workers=2, chunk_size=7, progress=False)
    modes = [r["mode"] for r in a]
    assert set(modes) == {"parallel", "dfs"} and 60 <= modes.count("parallel") <= 140
    for r in a:
        assert (metrics.stats(r["completion"]).blocks > 0) == (r["mode"] == "parallel")
    only = gen.generate(gen.GenConfig(seed=5, n_numbers=3, mode="mixed", parallel_fraction=1.0), 50, progress=False)
    assert all(r["mode"] == "parallel" for r in only)


def test_restated_threads_goals_and_ranges():
    cfg = gen.GenConfig(
        seed=2, n_numbers=3, restate=True, show_target=True, num_range=(1, 20), target_range=(10, 60), widths=(3,)
    )
    recs = gen.generate(cfg, 80, progress=False)
    for r in recs:
        assert all(1 <= x <= 20 for x in r["nums"]) and 10 <= r["target"] <= 60
        traj = parse(r["completion"])
        for block, _ in traj.blocks():
            for outline, thread in zip(block.outlines, block.threads):
                plan = outline.split(": ", 1)[1]
                assert plan.endswith(f"|{r['target']}]")  # the state carries the goal
                assert thread.parts[0].startswith(" " + plan + " ")  # the thread restates its outline
    # the dfs rendering carries the goal too; the default renders neither
    d = gen.generate(gen.GenConfig(seed=2, n_numbers=3, mode="dfs", show_target=True), 5, progress=False)
    assert all(f"|{r['target']}]" in r["completion"] for r in d)
    plain = gen.generate(gen.GenConfig(seed=2, n_numbers=3), 5, progress=False)
    assert all("|" not in r["completion"] for r in plain)


def test_per_pair_moves_follow_the_order_of_the_numbers():
    recs = gen.generate(gen.GenConfig(seed=4, n_numbers=3, moves="per-pair", widths=(1,)), 60, progress=False)
    for r in recs:
        a, b, c = r["nums"]
        pairs = [sorted(p) for p in ((a, b), (a, c), (b, c))]
        block = parse(r["completion"]).blocks()[0][0]
        used = []
        for outline in block.outlines:
            move = outline.split(": ", 1)[1].split("=")[0]
            x, y = (
                int(v) for v in move.replace("+", " ").replace("-", " ").replace("*", " ").replace("/", " ").split()
            )
            used.append(pairs.index(sorted((x, y))))
        assert used == sorted(used)  # pairs in order; a pair whose state repeats is dropped
    with pytest.raises(ValueError, match="moves"):
        gen.search([1, 2, 3], 6, random.Random(0), moves="random")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-range", "5"], "LO,HI"),
        (["--target-range", "9,3"], "1 <= LO <= HI"),
        (["--mode", "mixed", "--parallel-fraction", "1.5"], "parallel_fraction"),
    ],
)
def test_cli_bad_ranges(tmp_path, args, message, capsys):
    with pytest.raises((SystemExit, ValueError)) as e:
        gen.main(["--n", "3", "--out", str(tmp_path / "x.jsonl"), *args])
    assert message in (str(e.value) + capsys.readouterr().err)


def test_leaf_answers_need_no_copy_after_a_join():
    cfg = gen.GenConfig(
        seed=6, n_numbers=3, restate=True, show_target=True, moves="per-pair", widths=(1,), leaf_answers=True
    )
    par = gen.generate(cfg, 60, progress=False)
    dfs = gen.generate(gen.GenConfig(**{**cfg.__dict__, "mode": "dfs"}), 60, progress=False)
    for p, d in zip(par, dfs):
        assert p["completion"].endswith("</Parallel>")  # nothing is written after the join
        assert d["completion"].endswith("=> Answer: " + d["answer"])  # the solving move ends the chain
        for r in (p, d):
            assert "Answer: " in r["completion"] and " = " not in r["completion"]  # no restated solution
            assert cd.verify(cd.extract_answer(r["completion"]), r["nums"], r["target"]).ok
        for block, _ in parse(p["completion"]).blocks():
            for t in block.threads:
                last = t.parts[-1]
                assert last.endswith("=> none") or ("=> Answer: " in last and last.endswith("\n"))
    # 4 numbers: nested blocks, nothing after the inner joins either
    four = gen.generate(gen.GenConfig(seed=6, leaf_answers=True), 20, progress=False)
    for r in four:
        assert "</Parallel></Thread>" in r["completion"] and r["completion"].endswith("</Parallel>")
        assert cd.verify(cd.extract_answer(r["completion"]), r["nums"], r["target"]).ok


def test_results_and_bare_outlines():
    """--results marks each thread's last verdict; the summary join then shows the text
    after a block each thread's opener and result, never its checks. --bare-outlines
    leaves only the number in the outline and the move in the thread."""

    cfg = gen.GenConfig(seed=6, n_numbers=3, show_target=True, moves="per-pair", widths=(1,), results=True)
    recs = gen.generate(cfg, 30, progress=False)
    bare = gen.generate(gen.GenConfig(**{**cfg.__dict__, "bare_outlines": True}), 30, progress=False)
    for r, b in zip(recs, bare):
        for block, _ in parse(r["completion"]).blocks():
            for t in block.threads:
                assert t.result == "none" or t.result.endswith(f" = {r['target']}")
        blk = parse(b["completion"]).blocks()[0][0]
        plain = parse(r["completion"]).blocks()[0][0]
        assert blk.outlines == [f"{i}:" for i in range(1, len(blk.outlines) + 1)]
        for o, t in zip(plain.outlines, blk.threads):  # the move moved from the outline into the thread
            assert t.parts[0].startswith(" " + o.split(": ", 1)[1] + " ")
        assert cd.verify(cd.extract_answer(b["completion"]), b["nums"], b["target"]).ok
    # four numbers: a thread holding a nested block ends with its conclusion as its result
    four = gen.generate(gen.GenConfig(seed=6, results=True), 5, progress=False)
    outer = [t for r in four for blk, d in parse(r["completion"]).blocks() if d == 1 for t in blk.threads]
    assert outer and all(t.result is not None for t in outer)


def test_combine_is_the_legal_operations():
    from parallel_reason.tasks.countdown import combine

    assert combine(3, 6) == [(9, "+", 6, 3), (3, "-", 6, 3), (18, "*", 6, 3), (2, "/", 6, 3)]
    assert combine(4, 6) == [(10, "+", 6, 4), (2, "-", 6, 4), (24, "*", 6, 4)]  # 6/4 is not an integer
    assert [v for v, *_ in combine(0, 5)] == [5, 5, 0]  # no division by zero


def test_parse_range_is_an_argparse_type():
    import argparse

    from parallel_reason.inputs import parse_range

    assert parse_range("1,20") == (1, 20) and parse_range("5,5") == (5, 5)
    for bad in ("3", "a,b", "0,4", "9,2", "1,2,3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_range(bad)
