"""Benchmark of the fork/join runner (HF backend) on CPU with a tiny model.

1. Parallel vs sequential decoding of the same trajectories (replay mode: the
   tokens are forced, so both decode exactly the same tokens). Trajectories have
   ``--blocks`` blocks of 4 threads of ``--thread-tokens`` tokens; their ideal
   speedup is ``S = total / critical`` (sampled tokens, exact, from the token
   tree). The sequential run forces the trajectory's linear ids as one chain
   (``Runner(parallel=False)``). Reported: wall-clock of both, achieved speedup
   ``t_seq / t_par`` and ``achieved / ideal``.
2. Recomputation: tokens fed to the model vs the graph nodes that must be fed (every
   node some other token attends to); the difference is prefix tokens recomputed
   (target 0). The concat join re-reads threads 2..n by design; those re-read tokens
   are graph nodes of their own and are listed separately; the tree and summary joins
   re-read nothing. Every join (``--joins``) runs on the same trajectories, whose
   threads end with a short ``<Result>`` (what the summary join shows).
3. Sequential throughput vs ``model.generate``: greedy, tags and EOS suppressed (both
   decode exactly ``--gen-tokens`` tokens per prompt), same batch size.
4. Step cost against the tokens a step carries: one forward of the model with N new
   tokens on a ``--step-context``-slot cache (N = 1 without a mask, as a sequential step;
   N >= 1 with a 4D mask, as a parallel step), relative to the sequential step. A
   parallel run feeds several tokens per step; where a step's cost grows with its
   tokens (a CPU), achieved / ideal stays below 1 by about that factor.

Timings are medians of ``--repeats`` interleaved runs (parallel and sequential,
runner and generate alternate, so both see the same background load). Prints a
markdown table (``--json`` for the raw numbers).

    python benchmarks/bench_runner.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from functools import partial

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parallel_reason.format import RESULT, Trajectory, make_block, render  # noqa: E402
from parallel_reason.layout import JOIN_MODES, critical_path_count, sampled_count, tokenize_trajectory  # noqa: E402
from parallel_reason.runner import Runner  # noqa: E402
from parallel_reason.tiny import build_model, build_tokenizer  # noqa: E402
from parallel_reason.tokens import add_control_tokens, tag_token_ids  # noqa: E402

WORDS = ("alpha beta gamma delta check try plan found none left right sum take Numbers Target Answer Search").split()


def text(rng: random.Random, n: int) -> str:
    return " " + " ".join(rng.choice(WORDS + [str(rng.randint(0, 99))]) for _ in range(n))


def trajectory(rng: random.Random, blocks: int, width: int, thread_words: int, seq_words: int) -> str:
    parts: list = [text(rng, seq_words)]
    for _ in range(blocks):
        parts.append(
            make_block(
                [(f"step {i}", text(rng, thread_words - 2) + " =>" + RESULT + text(rng, 2)) for i in range(width)]
            )
        )
        parts.append("\n" + text(rng, seq_words).lstrip())
    return render(Trajectory(parts))


def nodes_to_feed(g) -> int:
    """Graph nodes whose keys/values some other token attends to (under the graph's join)."""
    m = g.dense_mask()
    m.fill_diagonal_(False)
    return int(m.any(0).sum())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def step_costs(model, tokens: list[int], context: int, repeats: int) -> list[dict]:
    """Median ms of one forward with N new tokens on a ``context``-slot cache: first a
    1-token step without a mask (sequential decoding), then each N with the bool 4D mask
    and grouped-query attention the runner uses for parallel steps. Interleaved."""
    from parallel_reason.runner.hf import _FORCE_GQA, _cache_kwarg, _slab_classes

    V = model.config.vocab_size
    cache = _slab_classes()(model.config.num_hidden_layers)
    kw = _cache_kwarg(model)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model(
            input_ids=torch.randint(0, V, (1, context), generator=g),
            position_ids=torch.arange(context)[None],
            **{kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )

    def step(n: int, masked: bool) -> None:
        mask = None
        if masked:
            mask = torch.ones(1, 1, n, context + n, dtype=torch.bool)
            mask[0, 0, :, context:] = torch.ones(n, n, dtype=torch.bool).tril()
        if masked and n > 1:
            os.environ[_FORCE_GQA] = "1"
        try:
            with torch.inference_mode():
                model(
                    input_ids=torch.randint(0, V, (1, n), generator=g),
                    position_ids=torch.arange(context, context + n)[None],
                    attention_mask=mask,
                    **{kw: cache},
                    use_cache=True,
                    logits_to_keep=n,
                )
        finally:
            os.environ.pop(_FORCE_GQA, None)
        for layer in cache.layers:  # back to `context` slots
            layer.n = context
            layer.keys, layer.values = layer._k[:, :, :context], layer._v[:, :, :context]

    cases = [(1, False)] + [(n, True) for n in tokens]
    times: dict = {c: [] for c in cases}
    for _ in range(max(repeats, 5)):
        for c in cases:
            for _ in range(10):
                step(*c)
            t = time.perf_counter()
            for _ in range(50):
                step(*c)
            times[c].append((time.perf_counter() - t) / 50 * 1e3)
    return [{"tokens": n, "mask": m, "ms": statistics.median(times[(n, m)])} for n, m in cases]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--thread-words", type=int, default=40)
    ap.add_argument("--seq-words", type=int, default=8)
    ap.add_argument("--batches", default="1,4", help="batch sizes of the replay comparison")
    ap.add_argument("--joins", default=",".join(JOIN_MODES), help="join modes compared on the same trajectories")
    ap.add_argument("--gen-batches", default="1,8", help="batch sizes of the generate comparison")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--step-tokens", default="1,2,3,4,8", help="tokens per step of the step-cost section ('' skips it)")
    ap.add_argument("--step-context", type=int, default=256, help="cached slots in the step-cost section")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rng = random.Random(0)
    corpus = [trajectory(rng, 1, 3, 6, 4) for _ in range(100)] + [" ".join(WORDS)] * 5 + ["0 1 2 3 4 5 6 7 8 9 :"] * 5
    tok = build_tokenizer(corpus, vocab_size=320)
    add_control_tokens(tok)
    model = build_model(
        len(tok),
        hidden_size=args.hidden,
        layers=args.layers,
        heads=4,
        kv_heads=2,
        intermediate_size=4 * args.hidden,
        seed=0,
    ).eval()
    res: dict = {
        "device": "cpu",
        "threads": args.threads,
        "model": f"qwen2 h{args.hidden} L{args.layers}",
        "replay": [],
        "generate": [],
        "step_cost": [],
    }

    # ------------------------------------------------------------ 1 + 2: replay
    cases = [(B, join) for B in [int(x) for x in args.batches.split(",")] for join in args.joins.split(",")]
    trajs_of: dict[int, list[str]] = {}
    for B, join in cases:
        if B not in trajs_of:  # the same trajectories for every join mode
            trajs_of[B] = [
                trajectory(rng, args.blocks, args.width, args.thread_words, args.seq_words) for _ in range(B)
            ]
        trajs = trajs_of[B]
        prompts = [f"Numbers: {k} 3 7\nTarget: 21\n" for k in range(B)]
        trees = [tokenize_trajectory(t, tok) for t in trajs]
        total = sum(sampled_count(t) for t in trees)
        crit = sum(critical_path_count(t) for t in trees)
        par = Runner(model, tok, max_new_tokens=100_000, max_width=args.width, batch_size=B, join=join)
        seq = Runner(model, tok, max_new_tokens=100_000, batch_size=B, parallel=False)
        par.replay(prompts, trajs)  # warm-up
        tp, ts = [], []
        for _ in range(args.repeats):  # interleaved: both see the same load
            t, outs = timed(partial(par.replay, prompts, trajs))
            tp.append(t)
            st = par.stats
            t, souts = timed(partial(seq.replay, prompts, trajs))
            ts.append(t)
        t_par, t_seq = statistics.median(tp), statistics.median(ts)
        assert all(o.finish_reason == "eos" for o in outs + souts)
        assert [o.completion_ids for o in outs] == [o.completion_ids for o in souts]
        need = sum(nodes_to_feed(o.graph) for o in outs)
        # graph = prompt + every linear token once + the re-read copies of threads 2..n
        reread = sum(len(o.graph) - o.graph.prompt_len - len(o.completion_ids) for o in outs)
        ideal = total / crit
        achieved = t_seq / t_par
        res["replay"].append(
            {
                "batch": B,
                "join": join,
                "total_tokens": total,
                "critical_path": crit,
                "ideal_speedup": ideal,
                "t_seq_s": t_seq,
                "t_par_s": t_par,
                "achieved_speedup": achieved,
                "achieved_over_ideal": achieved / ideal,
                "tokens_fed": st.tokens_fed,
                "nodes_to_feed": need,
                "recomputed": st.tokens_fed - need,
                "reread_at_joins": reread,
                "forward_calls_par": st.forward_calls,
                "forward_calls_seq": seq.stats.forward_calls,
                "pad_fed": st.pad_fed,
            }
        )

    # ------------------------------------------------------------ 3: generate
    bias = torch.zeros(model.lm_head.out_features)
    bias[list(tag_token_ids(tok).values()) + [tok.eos_token_id]] = -1e4
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        for B in [int(x) for x in args.gen_batches.split(",")]:
            prompts = [f"Numbers: {k} 3 7{' 5' * k}\nTarget: 21\n" for k in range(B)]
            runner = Runner(model, tok, max_new_tokens=args.gen_tokens, batch_size=B)
            tok.padding_side = "left"
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

            def hf(enc=enc):  # bound now: the loop rebinds enc
                with torch.inference_mode():
                    return model.generate(**enc, max_new_tokens=args.gen_tokens, do_sample=False)

            runner.generate(prompts)
            hf()
            tr, th = [], []
            for _ in range(args.repeats):
                t, outs = timed(partial(runner.generate, prompts))
                tr.append(t)
                t, gen = timed(hf)
                th.append(t)
            t_run, t_hf = statistics.median(tr), statistics.median(th)
            n = B * args.gen_tokens
            assert all(len(o.completion_ids) == args.gen_tokens for o in outs)
            same = all(o.completion_ids == gen[k, enc["input_ids"].shape[1] :].tolist() for k, o in enumerate(outs))
            res["generate"].append(
                {
                    "batch": B,
                    "tokens": n,
                    "runner_tok_s": n / t_run,
                    "hf_generate_tok_s": n / t_hf,
                    "ratio": t_hf / t_run,
                    "identical_tokens": same,
                }
            )
    finally:
        hook.remove()

    # ------------------------------------------------------------ 4: step cost
    if args.step_tokens:
        res["step_cost"] = step_costs(
            model, [int(x) for x in args.step_tokens.split(",")], args.step_context, args.repeats
        )

    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"Runner benchmark: {res['model']}, CPU, {args.threads} thread(s), median of {args.repeats}\n")
        print(
            "| batch | join | threads/block | total | critical | ideal S | t_seq (s) | t_par (s) | achieved "
            "| achieved/ideal | tokens fed | nodes to feed | recomputed | re-read at joins |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["replay"]:
            print(
                f"| {r['batch']} | {r['join']} | {args.width} | {r['total_tokens']} | {r['critical_path']} | {r['ideal_speedup']:.2f} "
                f"| {r['t_seq_s']:.3f} | {r['t_par_s']:.3f} | {r['achieved_speedup']:.2f} | "
                f"{r['achieved_over_ideal']:.2f} | {r['tokens_fed']} | {r['nodes_to_feed']} | {r['recomputed']} "
                f"| {r['reread_at_joins']} |"
            )
        print("\n| batch | new tokens | runner tok/s | model.generate tok/s | runner / generate | same tokens |")
        print("|---|---|---|---|---|---|")
        for r in res["generate"]:
            print(
                f"| {r['batch']} | {r['tokens']} | {r['runner_tok_s']:.0f} | {r['hf_generate_tok_s']:.0f} "
                f"| {r['ratio']:.2f} | {r['identical_tokens']} |"
            )
        if res["step_cost"]:
            print(f"\n| tokens per step | mask | ms per step ({args.step_context} cached slots) | / sequential step |")
            print("|---|---|---|---|")
            base = res["step_cost"][0]["ms"]
            for r in res["step_cost"]:
                print(f"| {r['tokens']} | {'yes' if r['mask'] else 'no'} | {r['ms']:.3f} | {r['ms'] / base:.2f} |")
    return res


if __name__ == "__main__":
    main()
