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
    return ["--train_data", str(data), "--model_name_or_path", str(model), "--output_dir", str(tmp_path / "run"),
            "--report_to", "none", "--log_level", "error", *extra]


@pytest.mark.parametrize("bad, words", [
    ({"prompt": "p", "target": 6}, ["task 'countdown' needs", "['nums']", "the record has ['prompt', 'target']"]),
    ({"nums": [1, 2, 3]}, ["needs the field(s) ['target']", "the record has ['nums']"]),
    ({"prompt": "p", "nums": [2.5, 3, 4], "target": 6}, ["nums[0]", "2.5"]),
    ({"prompt": "p", "nums": [1, 2, 3], "target": 6, "task": "math"}, ["task is 'math'", "config's task is 'countdown'"]),
])
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


@pytest.mark.parametrize("model, words", [
    ("runs/sft/countdown_tiny/final", ["no such folder", "run recipes/sft.py first"]),
    ("/no/such/model", ["no such folder"]),
    ("nobody/no-such-model", ["HF_HUB_OFFLINE", "not in the local cache"]),
    ("not a repo id!", ["no such folder", "not a hub repo id"]),
])
def test_grpo_model_path_is_checked_without_the_hub(tmp_path, hub_offline, capsys, model, words):
    data = _write(tmp_path / "prompts.jsonl", [GOOD_PROMPT])
    assert grpo_recipe.main(_grpo(tmp_path, data, model)) == 2
    err = capsys.readouterr().err
    assert "Repo id must" not in err and "internet" not in err
    _one_error(err, f"model_name_or_path {model}", *words)


# ---------------------------------------------------------------------------
# SFT: flags, model paths and data files, before the model


@pytest.mark.parametrize("extra, words", [
    (["--learning_rate", "-1"], ["learning_rate must be a number >= 0, got -1"]),
    (["--learning_rate", "nan"], ["learning_rate"]),
    (["--torch_dtype", "foo"], ["torch_dtype", "'foo'"]),
    (["--lr_scheduler_type", "cosinus"], ["lr_scheduler_type 'cosinus' is unknown"]),
    (["--adam_beta2", "1.5"], ["adam_beta2 must be in [0, 1)"]),
    (["--model_name_or_path", "/no/such/model"], ["model_name_or_path /no/such/model: no such folder"]),
    (["--model_name_or_path", "runs/sft/x/final"], ["no such folder"]),
    (["--model_name_or_path", "nobody/no-such-model"], ["HF_HUB_OFFLINE"]),
    (["--tokenizer_name_or_path", "./tok"], ["tokenizer_name_or_path ./tok: no such folder"]),
])
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
    return "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1:" * depth + " x" + \
        "</Thread>\n</Parallel>" * depth


@pytest.mark.parametrize("content, words", [
    (None, ["train.jsonl: no such file"]),
    (b'{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "\xff\xfe"}\n', ["train.jsonl:2: not UTF-8"]),
    (b'{"prompt": "p", "completion": "c"}\n' + b"[" * 100_000 + b"\n", ["train.jsonl:2: JSON nested too deeply"]),
    (b'{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "c"\n', ["train.jsonl:2: invalid JSON"]),
    (json.dumps([{"prompt": "p", "completion": "c"}]).encode(), ["train.jsonl:1: expected a JSON object, got list"]),
    ((json.dumps({"prompt": "p", "completion": "ok"}) + "\n" + json.dumps({"prompt": "p", "completion": _deep()})
      + "\n").encode(), ["train.jsonl:2: completion is not a well-formed parallel trajectory",
                         "nest blocks deeper than 64"]),
])
def test_sft_data_file_errors_name_the_line(tmp_path, fresh_accelerate, capsys, content, words):
    data = tmp_path / "train.jsonl"
    if content is not None:
        data.write_bytes(content)
    argv = ["--train_data", str(data), "--output_dir", str(tmp_path / "run"), "--log_level", "error"]
    assert sft_recipe.main(argv) == 2
    _one_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "run" / "base_model").exists()


# ---------------------------------------------------------------------------
# eval.benchmark: flags, model and data before anything is written


def _bench(tmp_path, model, data, *extra) -> list[str]:
    return ["--model", str(model), "--task", "countdown", "--data", str(data), "--out", str(tmp_path / "out"),
            "--no-progress", *extra]


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


@pytest.mark.parametrize("rows, words", [
    ([GOOD_PROMPT, dict(GOOD_PROMPT, nums=[1, 2.5, 3])], ["test.jsonl:2:", "nums[1] must be an integer, got 2.5"]),
    ([GOOD_PROMPT, dict(GOOD_PROMPT, target="six")], ["test.jsonl:2:", "'target' must be an integer"]),
    ([{"prompt": "p", "target": 6}], ["test.jsonl:1:", "needs 'nums' and 'target'"]),
])
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


ROWS = [{"id": str(i), "prompt": f"p{i}", "correct": i % 2 == 0, "total_tokens": 10 + i, "critical_path": 5 + i}
        for i in range(3)]


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
