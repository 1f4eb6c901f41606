"""Format-valid rate with and without grammar-constrained decoding, side by side.

    python benchmarks/bench_constrained.py --model runs/demo/models/sft_parallel/final \\
        --data runs/demo/data/test.jsonl --temperature 1.0
    python benchmarks/bench_constrained.py --random --temperature 1.5   # a random tiny model

The same prompts and seeds are decoded twice (``Runner(constrained=False|True)``).
Reported per run: rollouts whose text is well-formed (``rewards.format_outcome``: the
parser finds no problem and the runner did not stop on a violation), rollouts that
ended on a grammar violation (``malformed``, ``eos_in_thread``, ``no_outlines``,
``max_threads``, ``max_depth``), truncated ones, forks per rollout, and the finish
reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parallel_reason.format import Limits  # noqa: E402
from parallel_reason.rewards import format_outcome  # noqa: E402
from parallel_reason.runner import Runner  # noqa: E402

VIOLATIONS = ("malformed", "eos_in_thread", "no_outlines", "max_threads", "max_depth")


def random_model():
    """A random tiny Qwen2 and a tokenizer built from random fork/join text."""
    import random

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import random_trajectory

    from parallel_reason.tiny import build_model, build_tokenizer
    from parallel_reason.tokens import add_control_tokens

    rng = random.Random(0)
    tok = build_tokenizer([random_trajectory(rng) for _ in range(200)], vocab_size=320)
    add_control_tokens(tok)
    return tok, build_model(len(tok), seed=0).eval()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained model folder")
    ap.add_argument("--random", action="store_true", help="a random tiny model instead")
    ap.add_argument("--data", help="JSONL with a prompt field (default: short made-up prompts)")
    ap.add_argument("--n", type=int, default=200, help="prompts")
    ap.add_argument("--samples", type=int, default=1, help="rollouts per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--max-width", type=int, default=8)
    ap.add_argument("--max-depth", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.random == bool(args.model):
        ap.error("give --model DIR or --random")
    if args.random:
        tok, model = random_model()
    else:
        from parallel_reason.evaluate import load_model

        tok, model = load_model(args.model, "float32", "cpu", "sdpa")
    if args.data:
        rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
        prompts = [r["prompt"] for r in rows[: args.n]]
    else:
        prompts = [f"Numbers: {k % 17 + 1} {k % 5 + 2} {k % 11 + 3}\nTarget: {k % 50 + 10}\n" for k in range(args.n)]
    limits = Limits(max_width=args.max_width, max_depth=args.max_depth)
    res: dict = {
        "model": args.model or "random tiny qwen2",
        "temperature": args.temperature,
        "prompts": len(prompts),
        "samples": args.samples,
        "runs": {},
    }
    for constrained in (False, True):
        runner = Runner(
            model,
            tok,
            max_new_tokens=args.max_new_tokens,
            max_width=args.max_width,
            max_depth=args.max_depth,
            batch_size=args.batch_size,
            constrained=constrained,
        )
        outs = runner.generate(prompts, n=args.samples, temperature=args.temperature, seed=args.seed)
        reasons = Counter(r.finish_reason for r in outs)
        fmt = [format_outcome(r.completion, r, limits) for r in outs]
        res["runs"]["constrained" if constrained else "free"] = {
            "rollouts": len(outs),
            "format_valid": sum(f.valid for f in fmt) / len(outs),
            "violations": sum(reasons[v] for v in VIOLATIONS),
            "truncated": sum(f.truncated for f in fmt),
            "forks_per_rollout": sum(r.forks for r in outs) / len(outs),
            "finish_reasons": dict(reasons),
        }
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"{res['model']}, T={args.temperature}, {len(prompts)} prompts x {args.samples}\n")
    print("| decoding | rollouts | format-valid | ended on a violation | truncated | forks/rollout | finish reasons |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res["runs"].items():
        listed = ", ".join(f"{k} {v}" for k, v in sorted(r["finish_reasons"].items()))
        print(
            f"| {name} | {r['rollouts']} | {r['format_valid']:.3f} | {r['violations']} | {r['truncated']} "
            f"| {r['forks_per_rollout']:.2f} | {listed} |"
        )
    return res


if __name__ == "__main__":
    main()
