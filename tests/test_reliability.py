"""Bad input to the command-line tools: every case ends in one ``error:`` line naming
the file, record or flag, a non-zero exit, no traceback, and (where a model is
involved) before any model is loaded: the model folders given here are empty, so
a tool that got as far as loading one would fail differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import benchmark as bm
from eval import compare as cmp
from parallel_reason.eval_runs import Run
from recipes import grpo as grpo_recipe
from recipes import sft as sft_recipe


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_error(err: str, *words: str) -> str:
    """The ``error:`` line of ``err`` (after any log lines), checked for ``words``."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    for w in words:
        assert w in line, (w, line)
    return line


@pytest.fixture
def empty_model(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    return d


@pytest.fixture
def hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------
# GRPO: prompt records are checked at load


GOOD_PROMPT = {"prompt": "Numbers: 1 2 3\nTarget: 6\n", "nums": [1, 2, 3], "target": 6, "task": "countdown"}


def _grpo(tmp_path, data, model, *extra) -> list[str]:
    return [
        "--train_data",
        str(data),
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(tmp_path / "run"),
        "--report_to",
        "none",
        "--log_level",
        "error",
        *extra,
    ]


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"prompt": "p", "target": 6}, ["task 'countdown' needs", "['nums']", "the record has ['prompt', 'target']"]),
        ({"nums": [1, 2, 3]}, ["needs the field(s) ['target']", "the record has ['nums']"]),
        ({"prompt": "p", "nums": [2.5, 3, 4], "target": 6}, ["nums[0]", "2.5"]),
        (
            {"prompt": "p", "nums": [1, 2, 3], "target": 6, "task": "math"},
            ["task is 'math'", "config's task is 'countdown'"],
        ),
    ],
)
def test_grpo_refuses_a_bad_record_at_load(tmp_path, empty_model, fresh_accelerate, capsys, bad, words):
    """Drawn at step 11, such a record used to crash training with a message listing
    'nums' as present and naming no file."""
    data = _write(tmp_path / "prompts.jsonl", [GOOD_PROMPT] * 40 + [bad] + [GOOD_PROMPT] * 3)
    assert grpo_recipe.main(_grpo(tmp_path, data, empty_model)) == 2
    _one_error(capsys.readouterr().err, "prompts.jsonl:41:", *words)


def test_grpo_task_flag_is_checked(tmp_path, empty_model, fresh_accelerate, capsys):
    data = _write(tmp_path / "prompts.jsonl", [GOOD_PROMPT] * 3)
    assert grpo_recipe.main(_grpo(tmp_path, data, empty_model, "--task", "foo")) == 2
    _one_error(capsys.readouterr().err, "task 'foo' is unknown", "countdown, math")
    assert grpo_recipe.main(_grpo(tmp_path, data, empty_model, "--task", "math")) == 2  # records say countdown
    _one_error(capsys.readouterr().err, "prompts.jsonl:1:", "task is 'countdown'", "config's task is 'math'")


@pytest.mark.parametrize(
    "model, words",
    [
        ("runs/sft/countdown_tiny/final", ["no such folder", "run recipes/sft.py first"]),
        ("/no/such/model", ["no such folder"]),
        ("nobody/no-such-model", ["HF_HUB_OFFLINE", "not in the local cache"]),
        ("not a repo id!", ["no such folder", "not a hub repo id"]),
    ],
)
def test_grpo_model_path_is_checked_without_the_hub(tmp_path, hub_offline, capsys, model, words):
    data = _write(tmp_path / "prompts.jsonl", [GOOD_PROMPT])
    assert grpo_recipe.main(_grpo(tmp_path, data, model)) == 2
    err = capsys.readouterr().err
    assert "Repo id must" not in err and "internet" not in err
    _one_error(err, f"model_name_or_path {model}", *words)


# ---------------------------------------------------------------------------
# SFT: flags, model paths and data files, before the model


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--learning_rate", "-1"], ["learning_rate must be a number >= 0, got -1"]),
        (["--learning_rate", "nan"], ["learning_rate"]),
        (["--torch_dtype", "foo"], ["torch_dtype", "'foo'"]),
        (["--lr_scheduler_type", "cosinus"], ["lr_scheduler_type 'cosinus' is unknown"]),
        (["--adam_beta2", "1.5"], ["adam_beta2 must be in [0, 1)"]),
        (["--model_name_or_path", "/no/such/model"], ["model_name_or_path /no/such/model: no such folder"]),
        (["--model_name_or_path", "runs/sft/x/final"], ["no such folder"]),
        (["--model_name_or_path", "nobody/no-such-model"], ["HF_HUB_OFFLINE"]),
        (["--tokenizer_name_or_path", "./tok"], ["tokenizer_name_or_path ./tok: no such folder"]),
    ],
)
def test_sft_flags_and_model_paths(tmp_path, hub_offline, fresh_accelerate, capsys, extra, words):
    data = _write(tmp_path / "train.jsonl", [{"prompt": "p", "completion": "c"}])
    argv = ["--train_data", str(data), "--output_dir", str(tmp_path / "run"), "--log_level", "error", *extra]
    assert sft_recipe.main(argv) == 2
    err = capsys.readouterr().err
    assert "Repo id must" not in err
    _one_error(err, *words)
    assert not (tmp_path / "run" / "base_model").exists()  # the tiny model was not built either


def _deep(depth: int = 70) -> str:
    """Well-formed but for its depth: blocks nested ``depth`` levels."""
    return (
        "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1:" * depth
        + " x"
        + "</Thread>\n</Parallel>" * depth
    )


@pytest.mark.parametrize(
    "content, words",
    [
        (None, ["train.jsonl: no such file"]),
        (
            b'{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "\xff\xfe"}\n',
            ["train.jsonl:2: not UTF-8"],
        ),
        (b'{"prompt": "p", "completion": "c"}\n' + b"[" * 100_000 + b"\n", ["train.jsonl:2: JSON nested too deeply"]),
        (b'{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "c"\n', ["train.jsonl:2: invalid JSON"]),
        (
            json.dumps([{"prompt": "p", "completion": "c"}]).encode(),
            ["train.jsonl:1: expected a JSON object, got list"],
        ),
        (
            (
                json.dumps({"prompt": "p", "completion": "ok"})
                + "\n"
                + json.dumps({"prompt": "p", "completion": _deep()})
                + "\n"
            ).encode(),
            ["train.jsonl:2: completion is not a well-formed parallel trajectory", "nest blocks deeper than 64"],
        ),
    ],
)
def test_sft_data_file_errors_name_the_line(tmp_path, fresh_accelerate, capsys, content, words):
    data = tmp_path / "train.jsonl"
    if content is not None:
        data.write_bytes(content)
    argv = ["--train_data", str(data), "--output_dir", str(tmp_path / "run"), "--log_level", "error"]
    assert sft_recipe.main(argv) == 2
    _one_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "run" / "base_model").exists()


def test_init_tiny_model_data_errors(tmp_path, capsys):
    from recipes import init_tiny_model

    ok = json.dumps({"prompt": "p", "completion": "c"})
    cases = [
        (None, "d.jsonl: no such file"),
        (
            f'{ok}\n{{"prompt": 3, "completion": "c"}}\n'.encode(),
            "d.jsonl:2: record needs string 'prompt' and 'completion'",
        ),
        (b"\n\xff\n", "d.jsonl:2: not UTF-8"),
        (b"\n\n", "no records in"),
    ]
    for content, words in cases:
        data = tmp_path / "d.jsonl"
        data.unlink(missing_ok=True)
        if content is not None:
            data.write_bytes(content)
        assert init_tiny_model.main(["--data", str(data), "--out", str(tmp_path / "tiny")]) == 2
        _one_error(capsys.readouterr().err, words)
    assert not (tmp_path / "tiny").exists()


# ---------------------------------------------------------------------------
# eval.benchmark: flags, model and data before anything is written


def _bench(tmp_path, model, data, *extra) -> list[str]:
    return [
        "--model",
        str(model),
        "--task",
        "countdown",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        *extra,
    ]


def test_benchmark_flags(tmp_path, empty_model, capsys, monkeypatch):
    import torch

    data = _write(tmp_path / "test.jsonl", [GOOD_PROMPT])
    with pytest.raises(SystemExit) as ei:  # argparse: usage and one error line
        bm.main(_bench(tmp_path, empty_model, data, "--dtype", "foo"))
    assert ei.value.code == 2 and "--dtype: invalid choice: 'foo'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bm.main(_bench(tmp_path, empty_model, data, "--device", "cuda")) == 2
    _one_error(capsys.readouterr().err, "--device cuda: no CUDA GPU")
    assert bm.main(_bench(tmp_path, empty_model, data, "--device", "gpu0")) == 2
    _one_error(capsys.readouterr().err, "--device 'gpu0' is not a device")
    assert bm.main(_bench(tmp_path, tmp_path / "nope", data)) == 2
    _one_error(capsys.readouterr().err, "--model", "nope: no such folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "rows, words",
    [
        ([GOOD_PROMPT, dict(GOOD_PROMPT, nums=[1, 2.5, 3])], ["test.jsonl:2:", "nums[1] must be an integer, got 2.5"]),
        ([GOOD_PROMPT, dict(GOOD_PROMPT, target="six")], ["test.jsonl:2:", "'target' must be an integer"]),
        ([{"prompt": "p", "target": 6}], ["test.jsonl:1:", "needs 'nums' and 'target'"]),
    ],
)
def test_benchmark_bad_records(tmp_path, empty_model, capsys, rows, words):
    data = _write(tmp_path / "test.jsonl", rows)
    assert bm.main(_bench(tmp_path, empty_model, data)) == 2
    _one_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "out").exists()


def test_benchmark_failed_model_load_does_not_block_the_rerun(tmp_path, empty_model, capsys):
    """An unloadable model: one line; its config.json must not refuse the next run."""
    data = _write(tmp_path / "test.jsonl", [GOOD_PROMPT])
    assert bm.main(_bench(tmp_path, empty_model, data)) == 2
    _one_error(capsys.readouterr().err, f"--model {empty_model}: cannot be loaded")
    other = tmp_path / "other_model"
    other.mkdir()
    assert bm.main(_bench(tmp_path, other, data, "--temperature", "0.5")) == 2
    _one_error(capsys.readouterr().err, "cannot be loaded")  # not "holds results of a different configuration"


# ---------------------------------------------------------------------------
# eval.compare


def _run_dir(root: Path, name: str, mode: str, rows: list[dict]) -> Path:
    d = root / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"mode": mode, "n_problems": len(rows), "accuracy": 0.5}))
    _write(d / "results.jsonl", rows)
    return d


ROWS = [
    {"id": str(i), "prompt": f"p{i}", "correct": i % 2 == 0, "total_tokens": 10 + i, "critical_path": 5 + i}
    for i in range(3)
]


def test_compare_reports_a_corrupt_summary(tmp_path, capsys):
    a = _run_dir(tmp_path, "seq", "sequential", ROWS)
    b = _run_dir(tmp_path, "par", "parallel", ROWS)
    (b / "summary.json").write_text('{"mode": "parallel", "n_prob')
    assert cmp.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    _one_error(capsys.readouterr().err, f"{b / 'summary.json'}: not valid JSON")
    (b / "summary.json").write_text("[1, 2]")
    assert cmp.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    _one_error(capsys.readouterr().err, "expected a JSON object")
    assert cmp.main([str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "cmp")]) == 2
    _one_error(capsys.readouterr().err, "no summary.json")


def test_compare_warns_about_skipped_result_lines(tmp_path, capsys):
    a = _run_dir(tmp_path, "seq", "sequential", ROWS)
    b = _run_dir(tmp_path, "par", "parallel", ROWS)
    with open(b / "results.jsonl", "a") as f:
        f.write('{"id": "bad-fields"}\n{"id": "3", "prompt": "p3", "corr')  # a run killed mid-write
    assert cmp.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {b / 'results.jsonl'}:5: unreadable line skipped" in err
    assert "row id 'bad-fields' lacks result fields" in err


# ---------------------------------------------------------------------------
# Fuzz: the data loaders of every CLI on random, truncated, mixed-up and mistyped
# files (the parser's own fuzz is in test_format.py). Each call either succeeds, and
# what it returns is usable downstream, or raises the project's InputError.

MULTIVERSE = (
    "Plan.\n<Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>"
    "<Path>1: x</Path><Path>2: y</Path><Conclusion>z</Conclusion></Parallel>\nAnswer: 3"
)
ODD_VALUES = [
    None,
    True,
    0,
    -3,
    2.5,
    1e308,
    float("nan"),
    10**30,
    "",
    "x",
    "12",
    "<Parallel><Thread>" * 40,
    [],
    [1, "a"],
    [2, 3.0, 4],
    {},
    {"role": 1},
    [{"role": "user", "content": 3}],
    [[[[]]]],
]


def _good_records(rng) -> list[dict]:
    from conftest import random_trajectory

    traj = random_trajectory(rng, depth=2)
    return [
        {"prompt": "Numbers: 1 2 3\nTarget: 6\n", "completion": traj},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": traj}]},
        dict(GOOD_PROMPT, id=f"cd{rng.randint(0, 9)}"),
        {"id": rng.randint(0, 5), "question": "What is 2+2?", "answer": "#### 4", "reasoning": "2+2=4. \\boxed{4}"},
        {"id": "r", "prompt": "p", "correct": True, "total_tokens": 12, "critical_path": 7, "completion": MULTIVERSE},
    ]


def _fuzz_file(rng, k: int) -> bytes:
    goods = _good_records(rng)
    kind = k % 5
    if kind == 0:  # random bytes
        alphabet = b'{}[]":,\n \\\x00\xff\xfe0123abc<>/e.-'
        return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
    lines = [json.dumps(rng.choice(goods)) for _ in range(rng.randint(1, 6))]
    if kind == 1:  # truncated
        text = "\n".join(lines)
        return text[: rng.randint(0, len(text))].encode()
    if kind == 2:  # mixed up: schemas, merged or split lines, a list wrapper, BOM, CRLF, blank lines
        lines += [json.dumps(g) for g in goods]
        rng.shuffle(lines)
        i = rng.randrange(len(lines))
        trick = rng.randrange(5)
        if trick == 0:
            lines[i] = lines[i] + lines[(i + 1) % len(lines)]
        elif trick == 1:
            lines[i : i + 1] = [lines[i][: len(lines[i]) // 2], lines[i][len(lines[i]) // 2 :]]
        elif trick == 2:
            return json.dumps([json.loads(x) for x in lines], indent=rng.choice([None, 2])).encode()
        elif trick == 3:
            return b"\xef\xbb\xbf" + "\r\n".join(lines).encode()
        else:
            lines.insert(i, " ")
        return "\n".join(lines).encode()
    if kind == 3:  # wrong types and missing fields
        out = []
        for _ in range(rng.randint(1, 5)):
            rec = dict(rng.choice(goods))
            for _ in range(rng.randint(1, 3)):
                key = rng.choice(list(rec) + ["nums", "target", "prompt", "completion", "id", "task", "samples"])
                if rng.random() < 0.3:
                    rec.pop(key, None)
                else:
                    rec[key] = rng.choice(ODD_VALUES)
            out.append(json.dumps(rec))
        return "\n".join(out).encode()
    return rng.choice(
        [
            b"",
            b"\n\n",
            b"[]",
            b"{}",
            b"42",
            b'"text"',
            b"null",
            b'{"data": [1, 2]}',
            b"[" * 5000,
            b'{"a":' * 5000,
            json.dumps({"rows": goods}).encode(),
        ]
    )


def _try(fn, *args):
    """``fn(*args)``, or None on the project's InputError (any other exception fails the test)."""
    from parallel_reason.inputs import InputError

    try:
        return fn(*args)
    except InputError:
        return None


def test_fuzz_cli_data_loading(tmp_path, empty_model, capsys):
    import random

    from data_gen import convert as cv
    from data_gen import rewrite as rw
    from data_gen import self_train as st
    from eval.plots import budget_curve
    from parallel_reason.data import check_trajectories, corpus, load_examples
    from parallel_reason.format import parse
    from parallel_reason.grpo import check_prompts, load_prompts
    from parallel_reason.tasks import countdown
    from parallel_reason.tasks import math as math_task

    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for k in range(300):
        content = _fuzz_file(rng, k)
        d = tmp_path / f"case{k}"
        d.mkdir()
        path = d / ("data.json" if k % 7 == 0 else "data.jsonl")
        path.write_bytes(content)

        # SFT (recipes/sft.py): examples, their trajectories, the tiny model's corpus
        exs = _try(load_examples, path)
        if exs is not None:
            _try(check_trajectories, exs)
            assert all(isinstance(t, str) for t in corpus(exs))
        # GRPO (recipes/grpo.py): prompts checked for the Countdown verifier; what
        # training does with the records that pass must work
        rows = _try(load_prompts, path)
        if rows is not None and _try(lambda rows=rows: check_prompts(rows, "countdown") or True):
            for r in rows:
                countdown.verify("1+2", r["nums"], r["target"])
                if r.get("prompt") is None:
                    countdown.prompt(r["nums"], r["target"])
        # eval.benchmark and data_gen.self_train: problems of both tasks
        for task in ("countdown", "math"):
            probs = _try(bm.load_problems, path, task)
            for p in probs or []:
                assert isinstance(p["prompt"], (str, list))
                verdict = (countdown if task == "countdown" else math_task).verify("4", **p["args"])
                assert not verdict.ok or task == "math"
        # data_gen.convert: never raises, what it keeps parses strictly
        good, bad = cv.convert_records(cv.read_input(path), "multiverse", "completion")
        for g in good:
            parse(g["completion"])
        # data_gen.rewrite: rows, then each turned into a record or rejected
        for row in _try(rw.load_rows, str(path)) or []:
            try:
                rw.to_record(row, {})
            except rw.Reject:
                pass
        # eval.compare: the file as results.jsonl, then as summary.json
        for name in ("results.jsonl", "summary.json"):
            run_dir = d / f"run_{name.split('.')[0]}"
            run_dir.mkdir()
            (run_dir / "summary.json").write_text(json.dumps({"mode": "parallel", "n_problems": 1}))
            (run_dir / name).write_bytes(content)
            run = _try(Run, run_dir)
            if run is not None:
                cmp.markdown(cmp.table_records([run, run], run), run)
                budget_curve(run.samples(), [0, 5, 10])
                assert all(s["total_tokens"] / max(s["critical_path"], 1) >= 0 for s in run.samples())
        # data_gen.self_train's progress file
        st.read_progress(path)
        # and two real CLIs end to end: a clear error (the model folder is empty) or a result
        if k % 5 == 0:
            assert (
                bm.main(
                    [
                        "--model",
                        str(empty_model),
                        "--task",
                        "countdown",
                        "--data",
                        str(path),
                        "--out",
                        str(d / "bench"),
                        "--no-progress",
                    ]
                )
                == 2
            )
            _one_error(capsys.readouterr().err)
        rc = cv.main(["--from", "multiverse", "--input", str(path), "--out", str(d / "conv.jsonl")])
        assert rc in (0, 1) and (rc == 0) == (d / "conv.jsonl").exists()
        outcomes["ok" if exs or rows else "error"] += 1
    capsys.readouterr()
    assert outcomes["ok"] > 20 and outcomes["error"] > 20  # both kinds of outcome were exercised
