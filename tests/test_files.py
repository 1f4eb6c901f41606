"""parallel_reason.files: atomic writes leave the old file or the whole new one, never a temp file."""

from __future__ import annotations

import json

import pytest

from parallel_reason import files


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    files.atomic_write(p, "one\n")
    files.atomic_write(p, "two\n")
    assert p.read_text(encoding="utf-8") == "two\n"
    assert [q.name for q in p.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.jsonl"
    files.write_jsonl(p, [{"x": "é"}])

    def rows():
        yield {"x": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        files.write_jsonl(p, rows())
    assert p.read_text(encoding="utf-8") == '{"x": "é"}\n'
    assert [q.name for q in tmp_path.iterdir()] == ["a.jsonl"]


def test_write_json(tmp_path):
    p = tmp_path / "s.json"
    files.write_json(p, {"a": 1, "p": tmp_path})
    assert json.loads(p.read_text()) == {"a": 1, "p": str(tmp_path)}
