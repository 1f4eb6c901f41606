"""Atomic file writes: the one home of temp-file-then-rename for the library and
the applications (results, summaries, generated data, trainer state).

A file written here is either its old content or its whole new content, never a
part: the text goes to a temporary file next to the target (``.NAME.XXXX.tmp``,
same folder, so the rename stays on one file system), is flushed to disk and
renamed over the target with ``os.replace``; on any error the temporary file is
removed and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text file (UTF-8, ``\\n`` newlines) that replaces ``path`` when the block
    ends without an error; the parent folder is made when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON lines (UTF-8 kept as is) atomically."""
    with atomic_open(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON atomically (values JSON cannot hold are written as ``str``)."""
    atomic_write(path, json.dumps(obj, indent=2, default=str))


__all__ = ["atomic_open", "atomic_write", "write_json", "write_jsonl"]
