"""Critical path of the fork/join traces over the depth-first traces' length, measured on
the generator's own output (a perfect model): the ceiling of issue 10's target 2.

    python docs/pilots/oracle.py [--tokenizer runs/demo/models/base]

Tokens are counted with the given tokenizer (the demo's), or else approximately as it
splits numbers (a whole number is one token; words, punctuation and whitespace runs
one each), tags one each.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_gen.countdown import GenConfig, generate  # noqa: E402
from parallel_reason import metrics  # noqa: E402

_PIECE = re.compile(r"\d+|\w+|[^\w\s]|\s+")


def count(piece) -> int:
    return len(piece) if isinstance(piece, tuple) else len(_PIECE.findall(piece))


def ratio(
    numbers: int,
    moves: str,
    widths: tuple,
    bare: bool,
    n: int = 400,
    count=count,
    num_range: tuple = (1, 20),
    target_range: tuple = (10, 100),
) -> tuple[float, float]:
    """(mean critical path of the fork/join traces, mean length of the dfs traces)."""
    kw = dict(
        n_numbers=numbers,
        num_range=num_range,
        target_range=target_range,
        moves=moves,
        widths=widths,
        show_target=True,
        leaf_answers=True,
        split="test",
        split_fractions=(0.0, 0.0, 1.0),
    )
    par = generate(GenConfig(mode="parallel", bare_outlines=bare, **kw), n, progress=False)
    dfs = generate(GenConfig(mode="dfs", **kw), n, progress=False)
    cp = statistics.mean(metrics.critical_path(r["completion"], count) for r in par)
    return cp, statistics.mean(metrics.total_tokens(r["completion"], count) for r in dfs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="count with this tokenizer (a model folder)")
    args = ap.parse_args()
    counter = count
    if args.tokenizer:
        from parallel_reason.tokens import load_tokenizer

        counter = metrics.tokenizer_counter(load_tokenizer(args.tokenizer))
    print("| numbers | moves | widths | outlines | critical path | dfs tokens | ratio |")
    print("|---|---|---|---|---|---|---|")
    for numbers, moves, widths in [
        (3, "per-pair", (1,)),
        (3, "per-pair", (2,)),
        (3, "best", (3,)),
        (4, "per-pair", (1, 1)),
    ]:
        for bare in (False, True):
            cp, d = ratio(numbers, moves, widths, bare, count=counter)
            print(
                f"| {numbers} | {moves} | {widths} | {'bare' if bare else 'moves'} | {cp:.1f} | {d:.1f} | {cp / d:.2f} |"
            )
    print("\nThe demo's traces (3 numbers, per pair, bare outlines) on other ranges:\n")
    print("| numbers | targets | critical path | dfs tokens | ratio |")
    print("|---|---|---|---|---|")
    ranges = [((1, 20), (10, 100)), ((1, 20), (10, 200)), ((1, 20), (30, 100))]
    ranges += [((1, hi), (10, 100)) for hi in (30, 50, 99)]
    for nr, tr in ranges:
        cp, d = ratio(3, "per-pair", (1,), True, count=counter, num_range=nr, target_range=tr)
        print(f"| {nr[0]}..{nr[1]} | {tr[0]}..{tr[1]} | {cp:.1f} | {d:.1f} | {cp / d:.2f} |")


if __name__ == "__main__":
    main()
