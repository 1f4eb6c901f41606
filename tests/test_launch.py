"""parallel_reason.launch: the main rank generates missing data files, the others wait for them."""

from __future__ import annotations

import pytest

from parallel_reason import launch


def test_launcher_rank(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert launch.launcher_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert launch.launcher_rank() == 2
    monkeypatch.setenv("RANK", "3")
    assert launch.launcher_rank() == 3


def test_ensure_data_main_generates_others_wait(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(launch, "generate_missing", lambda *a, **k: calls.append(("gen", a, k)))
    monkeypatch.setattr(launch, "wait_for_files", lambda paths: calls.append(("wait", paths)))
    jobs = [(str(tmp_path / "train.jsonl"), "train", 4, 0), (None, "val", 2, 0)]
    monkeypatch.setenv("RANK", "0")
    launch.ensure_data("countdown", jobs, mode="parallel")
    monkeypatch.setenv("RANK", "1")
    launch.ensure_data("countdown", jobs, mode="parallel")
    launch.ensure_data(None, jobs, mode="parallel")  # nothing generated: nothing to wait for
    assert calls == [("gen", ("countdown", jobs, "parallel"), {}), ("wait", [str(tmp_path / "train.jsonl"), None])]


def test_generate_missing_skips_existing_files(tmp_path):
    (tmp_path / "have.jsonl").write_text("{}\n")
    launch.generate_missing(
        "countdown", [(str(tmp_path / "have.jsonl"), "train", 1, 0), (None, "val", 1, 0)], "parallel"
    )
    launch.generate_missing(None, [(str(tmp_path / "missing.jsonl"), "train", 1, 0)], "parallel")
    assert not (tmp_path / "missing.jsonl").exists()


def test_wait_for_files_times_out(tmp_path):
    launch.wait_for_files([None, str(tmp_path)], timeout_s=0)
    with pytest.raises(TimeoutError, match="not written"):
        launch.wait_for_files([str(tmp_path / "never")], timeout_s=0)
