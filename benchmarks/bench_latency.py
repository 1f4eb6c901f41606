"""Latency and throughput of a parallel model against a sequential one, side by side.

Both models decode the same test problems (greedy, grammar-constrained as in
``eval.benchmark``) with the HF runner, on the CPU or GPU they are loaded on:

1. **Batch 1** (latency): each problem alone, the two models alternating problem by
   problem (both see the same background load), ``--repeats`` passes, the median
   seconds per problem. Reported: token-latency gain = mean sequential tokens / mean
   parallel critical path, wall-clock gain = mean sequential seconds / mean parallel
   seconds, and its decomposition: forwards (the runner's steps) and seconds per
   forward of each model. wall gain = forward gain x (sequential s/forward / parallel
   s/forward): when a parallel step carries several tokens and its cost grows with them,
   the wall gain falls below the token gain.
2. **Batch ``--batch-size``** (throughput): the same problems in chunks of that size, the
   models alternating chunk by chunk; sampled tokens per second of each and their ratio.

    python benchmarks/bench_latency.py --parallel runs/demo/models/sft_parallel/final \\
        --sequential runs/demo/models/sft_dfs/final --data runs/demo/data/test.jsonl --n 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parallel_reason.evaluate import load_model, load_problems  # noqa: E402
from parallel_reason.runner import Runner  # noqa: E402


def decode(runner: Runner, prompts: list[str]) -> tuple[float, list, dict]:
    """Seconds, rollouts and runner counters of one greedy call."""
    t = time.perf_counter()
    ros = runner.generate(prompts, temperature=0.0)
    return time.perf_counter() - t, ros, runner.stats.as_dict()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parallel", required=True, help="parallel model directory")
    ap.add_argument("--sequential", required=True, help="sequential (depth-first) model directory")
    ap.add_argument("--data", required=True, help="Countdown test problems (JSONL)")
    ap.add_argument("--task", default="countdown")
    ap.add_argument("--n", type=int, default=100, help="problems (the first n)")
    ap.add_argument("--repeats", type=int, default=3, help="batch-1 passes (median seconds per problem)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch of the throughput comparison (0 skips it)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    problems = load_problems(args.data, args.task, n=args.n)
    prompts = [p["prompt"] for p in problems]
    runners = {}
    for name, path, parallel in (("parallel", args.parallel, True), ("sequential", args.sequential, False)):
        tok, model = load_model(path)
        runners[name] = Runner(model, tok, max_new_tokens=args.max_new_tokens, parallel=parallel, constrained=True)
    for r in runners.values():  # warm-up
        decode(r, prompts[:2])

    # ---------------------------------------------------------------- batch 1
    secs: dict = {k: [[] for _ in prompts] for k in runners}
    counts: dict = {k: [None] * len(prompts) for k in runners}
    for _ in range(args.repeats):
        for i, p in enumerate(prompts):
            for k, r in runners.items():
                t, ros, st = decode(r, [p])
                secs[k][i].append(t)
                ro = ros[0]
                counts[k][i] = (ro.total_tokens, ro.critical_path, st["forward_calls"], st["tokens_fed"])
    one: dict = {}
    for k in runners:
        per = [statistics.median(s) for s in secs[k]]
        one[k] = {
            "seconds": sum(per) / len(per),
            "tokens": sum(c[0] for c in counts[k]) / len(prompts),
            "critical_path": sum(c[1] for c in counts[k]) / len(prompts),
            "forwards": sum(c[2] for c in counts[k]) / len(prompts),
            "tokens_fed": sum(c[3] for c in counts[k]) / len(prompts),
        }
        one[k]["ms_per_forward"] = 1e3 * one[k]["seconds"] / one[k]["forwards"]
    par, seq = one["parallel"], one["sequential"]
    res: dict = {
        "problems": len(prompts),
        "threads": args.threads,
        "batch1": one,
        "token_latency_gain": seq["tokens"] / par["critical_path"],
        "wall_clock_gain": seq["seconds"] / par["seconds"],
        "forward_gain": seq["forwards"] / par["forwards"],
        "step_cost_ratio": par["ms_per_forward"] / seq["ms_per_forward"],
    }

    # ---------------------------------------------------------------- batch B
    if args.batch_size > 0:
        B = args.batch_size
        for r in runners.values():
            r.batch_size = B
        tot = {k: [0.0, 0] for k in runners}
        for s in range(0, len(prompts), B):
            for k, r in runners.items():
                t, ros, _ = decode(r, prompts[s : s + B])
                tot[k][0] += t
                tot[k][1] += sum(ro.total_tokens for ro in ros)
        tps = {k: n / t for k, (t, n) in tot.items()}
        res["batch"] = {"size": B, "tokens_per_s": tps, "ratio": tps["parallel"] / tps["sequential"]}

    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{len(prompts)} problems of {args.data}, {args.threads} torch thread(s), greedy, constrained\n")
        print(
            "| batch 1 | mean tokens | mean critical path | forwards | tokens fed / forward | ms / forward | s / problem |"
        )
        print("|---|---|---|---|---|---|---|")
        for k, v in one.items():
            print(
                f"| {k} | {v['tokens']:.1f} | {v['critical_path']:.1f} | {v['forwards']:.1f} "
                f"| {v['tokens_fed'] / v['forwards']:.2f} | {v['ms_per_forward']:.3f} | {v['seconds']:.4f} |"
            )
        print(
            f"\ntoken-latency gain {res['token_latency_gain']:.2f}x, wall-clock gain {res['wall_clock_gain']:.2f}x "
            f"= forward gain {res['forward_gain']:.2f}x / step-cost ratio {res['step_cost_ratio']:.2f}"
        )
        if "batch" in res:
            b = res["batch"]
            print(
                f"batch {b['size']}: sampled tokens/s parallel {b['tokens_per_s']['parallel']:.0f}, "
                f"sequential {b['tokens_per_s']['sequential']:.0f}, ratio {b['ratio']:.2f}x"
            )
    return res


if __name__ == "__main__":
    main()
