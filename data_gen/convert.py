"""Convert JSONL records from a published parallel-reasoning dialect into the
canonical grammar.

    python -m data_gen.convert --from multiverse --input mv.jsonl --out ours.jsonl
    python -m data_gen.convert --from parallel_r1 --input pr1.jsonl --out ours.jsonl --field response
    python -m data_gen.convert --from apr --input train_apr.jsonl --out ours.jsonl   # reads trace_dict
    python -m data_gen.convert --from threadweaver --input tw.jsonl --out ours.jsonl --max-depth 2

Each input line is a JSON object; ``--field`` names the one holding the dialect text
(default ``completion``; for ``apr`` the default is ``trace_dict``, APR's
multi-sequence trace, a JSON object or its text). The converted text is written to
``--out-field`` (default ``completion``) with ``stats`` (parallelism metrics) and
``dialect``; the other fields are copied (the source field is dropped when it
differs from the output field, unless ``--keep-source``). Records that fail go to
``<out>.rejected.jsonl`` with the line number, the id and the reason (dialect,
offset, problem). Both files are written atomically. Dialects: see
:mod:`parallel_reason.dialects` and ``docs/dialects.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from parallel_reason.dialects import CONVERTERS, DialectError, convert, dialect_name
from parallel_reason.format import Limits
from parallel_reason.metrics import stats


def _write_atomic(rows: Iterable[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def convert_records(lines: Iterable[str], dialect: str, field: str, out_field: str = "completion",
                    keep_source: bool = False, limits: Limits | None = None) -> tuple[list[dict], list[dict]]:
    """(converted records, rejected records) for the JSONL ``lines``."""
    good, bad = [], []
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append({"line": ln, "id": None, "reason": f"invalid JSON at column {e.colno}: {e.msg}"})
            continue
        if not isinstance(rec, dict):
            bad.append({"line": ln, "id": None, "reason": "the line is not a JSON object"})
            continue
        rid = rec.get("id")
        if field not in rec:
            bad.append({"line": ln, "id": rid, "reason": f"no field {field!r}"})
            continue
        try:
            text = convert(rec[field], dialect, limits)
        except DialectError as e:
            bad.append({"line": ln, "id": rid, "reason": str(e), "dialect": e.dialect, "offset": e.offset,
                        "where": e.where, "problem": e.problem})
            continue
        out = dict(rec)
        if not keep_source and field != out_field:
            out.pop(field, None)
        out[out_field] = text
        out["dialect"] = dialect
        out["stats"] = stats(text).as_dict()
        good.append(out)
    return good, bad


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m data_gen.convert", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="dialect", required=True,
                    help=f"source dialect: {', '.join(sorted(CONVERTERS))}")
    ap.add_argument("--input", required=True, help="input JSONL")
    ap.add_argument("--out", required=True, help="output JSONL (rejects: <out>.rejected.jsonl)")
    ap.add_argument("--field", default=None, help="field holding the dialect text (default completion; apr: trace_dict)")
    ap.add_argument("--out-field", default="completion", help="field for the converted text")
    ap.add_argument("--keep-source", action="store_true", help="keep the source field next to the output")
    ap.add_argument("--max-depth", type=int, default=None, help="reject conversions nested deeper")
    ap.add_argument("--max-width", type=int, default=None, help="reject conversions with wider blocks")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dialect = dialect_name(args.dialect)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    field = args.field or ("trace_dict" if dialect == "apr" else "completion")
    limits = Limits(max_depth=args.max_depth, max_width=args.max_width)
    with open(args.input, encoding="utf-8") as f:
        good, bad = convert_records(f, dialect, field, args.out_field, args.keep_source, limits)
    out = Path(args.out)
    rej = Path(str(out) + ".rejected.jsonl")
    _write_atomic(good, out)
    _write_atomic(bad, rej)
    print(f"converted {len(good)} record(s) from {dialect} to {out}; rejected {len(bad)} "
          f"(see {rej})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
