"""Convert JSONL records from a published parallel-reasoning dialect into the
canonical grammar.

    python -m data_gen.convert --from multiverse --input mv.jsonl --out ours.jsonl
    python -m data_gen.convert --from parallel_r1 --input pr1.jsonl --out ours.jsonl --field response
    python -m data_gen.convert --from apr --input train_apr.jsonl --out ours.jsonl   # reads trace_dict
    python -m data_gen.convert --from threadweaver --input tw.jsonl --out ours.jsonl --max-depth 2

The converted text goes to ``--out-field`` with ``stats`` and ``dialect``; records
that fail go to ``<out>.rejected.jsonl`` with line, id and reason, and one bad
record never stops the others. Exit status 1 when none converts. See
docs/design.md#data and ``docs/dialects.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from parallel_reason.data import read_bytes
from parallel_reason.dialects import CONVERTERS, DialectError, convert, dialect_name
from parallel_reason.files import write_jsonl
from parallel_reason.format import Limits
from parallel_reason.inputs import InputError, reports_input_errors
from parallel_reason.metrics import stats

log = logging.getLogger("data_gen.convert")


def _json_list(data: bytes) -> list | None:
    """The records of a file that is one JSON list (or ``{"name": [...]}``), else None."""
    if data.lstrip()[:1] not in (b"[", b"{"):
        return None
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))
    return obj if isinstance(obj, list) else None


def read_input(path: str | os.PathLike) -> list:
    """The items of the input: ``(line number, text of the line)`` for JSON lines, or
    ``(index, record)`` when the file is one JSON list."""
    data = read_bytes(path, f"--input {path}")
    records = _json_list(data)
    if records is not None:
        return list(enumerate(records))
    return [(ln, line) for ln, line in enumerate(data.split(b"\n"), 1)]


def _load(line) -> tuple[dict | None, str | None]:
    """(record, None) or (None, why the line is not a record)."""
    if not isinstance(line, (str, bytes)):
        return (line, None) if isinstance(line, dict) else (None, "the record is not a JSON object")
    try:
        rec = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        return None, f"invalid JSON at column {e.colno}: {e.msg}"
    except RecursionError:
        return None, "JSON nested too deeply"
    if not isinstance(rec, dict):
        return None, "the line is not a JSON object"
    return rec, None


def convert_records(
    lines: Iterable,
    dialect: str,
    field: str,
    out_field: str = "completion",
    keep_source: bool = False,
    limits: Limits | None = None,
    results: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(converted records, rejected records) for the JSONL ``lines`` (text or bytes;
    or ``(number, line or record)`` pairs as :func:`read_input` gives them)."""
    good, bad = [], []
    for ln, line in enumerate(lines, 1):
        if isinstance(line, tuple):
            ln, line = line
        if isinstance(line, (str, bytes)) and not line.strip():
            continue
        rec, why = _load(line)
        if rec is None:
            bad.append({"line": ln, "id": None, "reason": why})
            continue
        rid = rec.get("id")
        if field not in rec:
            bad.append({"line": ln, "id": rid, "reason": f"no field {field!r}"})
            continue
        try:
            text = convert(rec[field], dialect, limits, results)
            st = stats(text).as_dict()
        except DialectError as e:
            bad.append(
                {
                    "line": ln,
                    "id": rid,
                    "reason": str(e),
                    "dialect": e.dialect,
                    "offset": e.offset,
                    "where": e.where,
                    "problem": e.problem,
                }
            )
            continue
        except Exception as e:  # noqa: BLE001 - one odd record must not lose the others
            log.warning("line %s (id %r): %s: %s", ln, rid, type(e).__name__, e)
            bad.append({"line": ln, "id": rid, "reason": f"{type(e).__name__}: {e}"})
            continue
        out = dict(rec)
        if not keep_source and field != out_field:
            out.pop(field, None)
        out[out_field] = text
        out["dialect"] = dialect
        out["stats"] = st
        good.append(out)
    return good, bad


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m data_gen.convert",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--from", dest="dialect", required=True, help=f"source dialect: {', '.join(sorted(CONVERTERS))}")
    ap.add_argument("--input", required=True, help="input JSONL")
    ap.add_argument("--out", required=True, help="output JSONL (rejects: <out>.rejected.jsonl)")
    ap.add_argument(
        "--field", default=None, help="field holding the dialect text (default completion; apr: trace_dict)"
    )
    ap.add_argument("--out-field", default="completion", help="field for the converted text")
    ap.add_argument("--keep-source", action="store_true", help="keep the source field next to the output")
    ap.add_argument("--max-depth", type=int, default=None, help="reject conversions nested deeper")
    ap.add_argument("--max-width", type=int, default=None, help="reject conversions with wider blocks")
    ap.add_argument(
        "--results",
        action="store_true",
        help="mark the last line of every thread as its <Result> (what a summary join shows; "
        "APR sub-searches end with their outcome)",
    )
    return ap


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dialect = dialect_name(args.dialect)
    except ValueError as e:
        raise InputError(f"--from: {e}") from None
    field = args.field or ("trace_dict" if dialect == "apr" else "completion")
    limits = Limits(max_depth=args.max_depth, max_width=args.max_width)
    good, bad = convert_records(
        read_input(args.input), dialect, field, args.out_field, args.keep_source, limits, args.results
    )
    out = Path(args.out)
    rej = Path(str(out) + ".rejected.jsonl")
    write_jsonl(rej, bad)
    if not good:
        first = f"; first reason (line {bad[0]['line']}): {bad[0]['reason']}" if bad else ""
        print(
            f"error: no record of {args.input} converted from {dialect} ({len(bad)} rejected, see {rej}"
            f"{first}); {out} not written",
            file=sys.stderr,
        )
        return 1
    write_jsonl(out, good)
    print(f"converted {len(good)} record(s) from {dialect} to {out}; rejected {len(bad)} (see {rej})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
