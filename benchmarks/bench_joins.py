"""Join modes side by side on the same Countdown traces (CPU, tiny model).

    python benchmarks/bench_joins.py [--numbers 4] [--n 64] [--reps 5] [--threads 1]

For every join mode, on the same records:

* **tokens**: packed-graph tokens (the SFT buffer), trained tokens, tokens re-read at
  joins (graph tokens beyond prompt + each trajectory token once);
* **context**: the largest number of tokens any token attends to, and the mean over
  trained tokens (what a decoder keeps in view);
* **SFT step**: one forward + backward of the packed loss over the same batches,
  interleaved across joins, median of ``--reps``: trained tokens/s, computed (buffer)
  tokens/s, and their ratio (1.0 = nothing computed that is not trained or context).

The runner side (re-read tokens while decoding, achieved/ideal speedup) is in
``benchmarks/bench_runner.py --joins concat,tree,summary``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parallel_reason.attention import collate  # noqa: E402
from parallel_reason.data import build_graphs, load_examples  # noqa: E402
from parallel_reason.layout import JOIN_MODES  # noqa: E402
from parallel_reason.logprobs import packed_logprobs  # noqa: E402
from parallel_reason.tiny import build_model, build_tokenizer  # noqa: E402
from parallel_reason.tokens import add_control_tokens  # noqa: E402


def countdown_records(n: int, numbers: int, seed: int) -> Path:
    """``n`` fork/join Countdown traces of ``numbers`` numbers (data_gen.countdown)."""
    out = Path(tempfile.mkdtemp()) / f"countdown{numbers}.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_gen.countdown",
            "--n",
            str(n),
            "--numbers",
            str(numbers),
            "--seed",
            str(seed),
            "--split",
            "train",
            "--mode",
            "parallel",
            "--results",  # marks each thread's result: what the summary join shows
            "--out",
            str(out),
            "--no-progress",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out


def context_sizes(g) -> tuple[int, float]:
    """(largest number of tokens a token attends to, mean over trained tokens)."""
    seen = g.dense_mask().sum(1)
    return int(seen.max()), float(seen[g.loss_mask].double().mean())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numbers", type=int, default=4, help="Countdown numbers per problem")
    ap.add_argument("--n", type=int, default=64, help="records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--joins", default=",".join(JOIN_MODES))
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4, help="graphs per batch")
    ap.add_argument("--batches", type=int, default=4, help="batches per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    joins = args.joins.split(",")

    examples = load_examples(countdown_records(args.n, args.numbers, args.seed))
    tok = build_tokenizer([str(e.prompt) + e.completion for e in examples], vocab_size=512)
    add_control_tokens(tok)
    model = build_model(
        len(tok),
        hidden_size=args.hidden,
        layers=args.layers,
        heads=4,
        kv_heads=2,
        intermediate_size=2 * args.hidden,
        max_positions=8192,
        seed=args.seed,
    ).train()
    graphs = {j: build_graphs(examples, tok, mode="parallel", join=j, max_length=8192)[0] for j in joins}
    if len({len(g) for g in graphs.values()}) != 1:
        raise SystemExit("a join mode dropped records: raise the max length")
    base = graphs[joins[0]]
    # every token once: the tree layout (prompt, trajectory, openers and join texts, nothing re-read)
    once = sum(len(g) for g in build_graphs(examples, tok, mode="parallel", join="tree", max_length=8192)[0])
    res: dict = {
        "records": len(base),
        "numbers": args.numbers,
        "model": f"qwen2 h{args.hidden} L{args.layers}",
        "threads": args.threads,
        "joins": {},
    }
    need = args.batch * args.batches
    pick = sorted(range(len(base)), key=lambda i: len(base[i]))[:need]  # the same records for every join
    batches = {
        j: [
            collate([graphs[j][i] for i in pick[k * args.batch : (k + 1) * args.batch]], tok.pad_token_id)
            for k in range(args.batches)
        ]
        for j in joins
    }
    times: dict[str, list[float]] = {j: [] for j in joins}

    def step(j: str) -> float:
        t = time.perf_counter()
        for b in batches[j]:
            logp = packed_logprobs(model, b)
            (-(logp * b["loss_mask"]).sum() / b["loss_mask"].sum()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for j in joins:
        step(j)  # warm-up
    for _ in range(args.reps):
        for j in joins:  # interleaved: every join sees the same background load
            times[j].append(step(j))
    sizes = {j: sum(len(g) for g in graphs[j]) for j in joins}
    for j in joins:
        gs = graphs[j]
        ctx = [context_sizes(g) for g in gs]
        t = statistics.median(times[j])
        trained = sum(int(b["loss_mask"].sum()) for b in batches[j])
        computed = sum(int((b["seg_id"] >= 0).sum()) for b in batches[j])
        res["joins"][j] = {
            "graph_tokens": sizes[j],
            "trained_tokens": sum(int(g.loss_mask.sum()) for g in gs),
            "reread_tokens": sizes[j] - once,
            "max_context": max(c[0] for c in ctx),
            "mean_trained_context": statistics.mean(c[1] for c in ctx),
            "step_s": t,
            "trained_tok_s": trained / t,
            "computed_tok_s": computed / t,
            "trained_over_computed": trained / computed,
        }
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(
        f"Join modes on {res['records']} Countdown-{args.numbers} traces; SFT step on {need} of them, "
        f"{res['model']}, CPU, {args.threads} thread(s), median of {args.reps}\n"
    )
    print(
        "| join | graph tokens | trained | re-read at joins | largest context | mean context (trained) "
        "| trained tok/s | computed tok/s | trained / computed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for j, r in res["joins"].items():
        print(
            f"| {j} | {r['graph_tokens']} | {r['trained_tokens']} | {r['reread_tokens']} | {r['max_context']} "
            f"| {r['mean_trained_context']:.0f} | {r['trained_tok_s']:.0f} | {r['computed_tok_s']:.0f} "
            f"| {r['trained_over_computed']:.2f} |"
        )
    return res


if __name__ == "__main__":
    main()
