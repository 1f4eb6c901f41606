"""Packed-graph SFT benchmark (CPU by default); prints a markdown table for the README.

    python benchmarks/bench_sft.py                    # Countdown data, hidden 256 x 4 layers
    python benchmarks/bench_sft.py --reps 7 --batches 4 --json out.json

(a) Packing: tokens of the packed graphs vs the naive layout that runs every request
    (context + completion, ``PackedGraph.requests()``) as its own sequence.
(b) Throughput: trained tokens/s of one training step (forward + backward, no
    optimizer step: it costs the same in every variant) of packed-graph SFT
    (``packed_logprobs`` with the 4D mask built per batch, gather by predecessor)
    against plain causal SFT on the *same* batches (same B x L buffers, same number
    of trained tokens, same model):
      - HF causal LM loss with ``labels`` and a 2D padding mask (what TRL's SFTTrainer
        runs on padded batches; transformers builds a 4D mask from it);
      - HF causal LM loss with no mask (right padding: sdpa's ``is_causal`` kernel,
        the fastest possible causal step, exact since padding is only at the end).
    A fourth row times the packed step with its mask built beforehand (what a
    DataLoader worker would do), to show the share of mask construction.
    Variants run interleaved, ``--reps`` times; the median is reported. On a shared
    CPU use ``--threads 1``: oversubscribed OpenMP threads make timings erratic.
(c) Mask memory at ``L = 32768`` for a long packed Countdown trajectory: the
    segment-level form (``attention.mask_bytes``: seg ids + S x S visibility), the
    flex-attention BlockMask index tensors, and a dense bool L x L mask (computed as
    L*L bytes, never allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parallel_reason.attention import collate, flex_block_mask, mask_bytes  # noqa: E402
from parallel_reason.data import build_graphs, load_examples  # noqa: E402
from parallel_reason.logprobs import packed_logprobs  # noqa: E402
from parallel_reason.tiny import build_model, build_tokenizer  # noqa: E402
from parallel_reason.tokens import add_control_tokens  # noqa: E402


def countdown_rows(n: int, seed: int, split: str = "train") -> tuple[list[dict], str]:
    """Countdown parallel traces from data_gen.countdown, or random nested trajectories."""
    try:
        import data_gen.countdown  # noqa: F401

        have_gen = True
    except ImportError:
        have_gen = False
    if have_gen:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "cd.jsonl"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "data_gen.countdown",
                    "--n",
                    str(n),
                    "--seed",
                    str(seed),
                    "--split",
                    split,
                    "--mode",
                    "parallel",
                    "--out",
                    str(out),
                    "--no-progress",
                ],
                check=True,
                cwd=ROOT,
                capture_output=True,
            )
            return [json.loads(line) for line in out.read_text().splitlines()], "Countdown (data_gen.countdown)"
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import random_trajectory

    rng = random.Random(seed)
    return (
        [
            {"prompt": f"Numbers: {k}\nTarget: 5\n", "completion": random_trajectory(rng, depth=2, p_block=0.9)}
            for k in range(n)
        ],
        "random nested trajectories",
    )


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return str(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="Countdown records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4, help="graphs per batch")
    ap.add_argument("--batches", type=int, default=2, help="batches per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--long-length", type=int, default=32768, help="L of the mask-memory row")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    rows, source = countdown_rows(args.n, args.seed)
    corpus = [r["prompt"] + r["completion"] for r in rows]
    tok = build_tokenizer(corpus, vocab_size=args.vocab)
    add_control_tokens(tok)
    model = build_model(
        len(tok),
        hidden_size=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_positions=max(args.max_length, 4096),
        seed=args.seed,
        attn_implementation="sdpa",
    )
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rows.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        examples = load_examples(p)
    graphs, st = build_graphs(examples, tok, mode="parallel", max_length=args.max_length)

    # (a) packed vs naive per-request tokens
    packed_tokens = sum(len(g) for g in graphs)
    naive_tokens = sum(len(ctx) + len(comp) for g in graphs for ctx, comp in g.requests())
    trained_tokens = sum(int(g.loss_mask.sum()) for g in graphs)
    n_requests = sum(len(g.requests()) for g in graphs)

    # (b) throughput, same batches for every variant
    order = sorted(range(len(graphs)), key=lambda i: len(graphs[i]))  # similar lengths per batch
    need = args.batch * args.batches
    if len(order) < need:
        raise SystemExit(f"need {need} graphs, have {len(order)}; raise --n")
    mid = max(0, len(order) // 2 - need // 2)
    chosen = order[mid : mid + need]
    batches = [
        collate([graphs[i] for i in chosen[k * args.batch : (k + 1) * args.batch]], tok.pad_token_id)
        for k in range(args.batches)
    ]
    trained_per_rep = sum(int(b["loss_mask"].sum()) for b in batches)
    buffer_per_rep = sum(b["input_ids"].numel() for b in batches)

    def packed_step(b):
        logp = packed_logprobs(model, b)  # builds the 4D mask from the segment table
        (-(logp * b["loss_mask"]).sum() / b["loss_mask"].sum()).backward()

    from parallel_reason.attention import attention_mask

    masks = [attention_mask(b, "sdpa") for b in batches]  # for the prebuilt-mask variant

    def packed_prebuilt(k):
        b = batches[k]
        logp = packed_logprobs(model, b, mask=masks[k])
        (-(logp * b["loss_mask"]).sum() / b["loss_mask"].sum()).backward()

    def causal_step(b, with_mask: bool):
        labels = torch.where(b["loss_mask"], b["input_ids"], torch.full_like(b["input_ids"], -100))
        am = (b["seg_id"] >= 0).long() if with_mask else None
        out = model(input_ids=b["input_ids"], attention_mask=am, labels=labels, use_cache=False)
        out.loss.backward()

    variants: dict = {
        "packed graph (4D mask, gather by pred)": packed_step,
        "packed graph, mask prebuilt (as a DataLoader worker would)": None,
        "plain causal, HF labels + padding mask": lambda b: causal_step(b, True),
        "plain causal, HF labels, no mask (is_causal)": lambda b: causal_step(b, False),
    }
    prebuilt_name = list(variants)[1]
    times: dict[str, list[float]] = {k: [] for k in variants}

    def run(name):
        for k, b in enumerate(batches):
            packed_prebuilt(k) if name == prebuilt_name else variants[name](b)

    for name in variants:  # warm-up
        model.zero_grad(set_to_none=True)
        run(name)
    for rep in range(args.reps):
        names = list(variants)
        if rep % 2:
            names.reverse()  # alternate the order: no variant always runs first
        for name in names:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: trained_per_rep / v for k, v in med.items()}
    packed_name = next(iter(variants))

    # (c) mask memory of one long trajectory
    long_rows, _ = countdown_rows(max(64, args.long_length // 600), args.seed + 1)
    from parallel_reason.layout import build_graph, encode, tokenize_trajectory

    items, total, used = [], len(encode(tok, long_rows[0]["prompt"])), 0
    for r in long_rows:
        part = tokenize_trajectory(r["completion"] + "\n", tok, eos=False)
        g_len = len(build_graph([], part))
        if total + g_len > args.long_length:
            break
        items += part
        total += g_len
        used += 1
    long_g = build_graph(encode(tok, long_rows[0]["prompt"]), items)
    L_long = len(long_g)
    L_target = args.long_length
    long_b = collate([long_g], tok.pad_token_id, pad_to_multiple_of=L_target)  # padded to exactly L_target
    assert long_b["seg_id"].shape[1] == L_target
    seg_bytes_target = mask_bytes(long_b)
    S_target = long_g.num_segments
    dense_bytes = L_target * L_target  # bool L x L, never allocated
    bm = flex_block_mask(long_g.seg_id[None], long_g.seg_vis[None], block_size=128)
    bm_bytes = sum(
        t.numel() * t.element_size()
        for t in (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices)
    )

    res = {
        "data": source,
        "graphs": len(graphs),
        "dropped_over_max_length": st.dropped_too_long,
        "model": f"Qwen2 hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {len(tok)}, "
        f"{n_params / 1e6:.1f}M params",
        "threads": torch.get_num_threads(),
        "packed_tokens": packed_tokens,
        "naive_request_tokens": naive_tokens,
        "requests": n_requests,
        "trained_tokens": trained_tokens,
        "naive_over_packed": naive_tokens / packed_tokens,
        "batch": f"{args.batches} batches x {args.batch} graphs, {buffer_per_rep} buffer tokens, "
        f"{trained_per_rep} trained tokens per repetition, {args.reps} repetitions",
        "median_s": med,
        "trained_tokens_per_s": tps,
        "ratio_vs": {k: tps[packed_name] / v for k, v in tps.items() if k not in (packed_name, prebuilt_name)},
        "long_L_built": L_long,
        "long_segments_built": long_g.num_segments,
        "L": L_target,
        "segments_at_L": S_target,
        "segment_mask_bytes_at_L": seg_bytes_target,
        "dense_mask_bytes_at_L": dense_bytes,
        "blockmask_index_bytes_built": bm_bytes,
    }

    lines = [
        f"Data: {source}, {len(graphs)} packed graphs ({st.dropped_too_long} over max_length dropped); "
        f"model: {res['model']}; CPU, {res['threads']} threads.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| (a) packed-graph tokens | {packed_tokens:,} |",
        f"| (a) naive per-request tokens (sum of context + completion over {n_requests:,} requests) | "
        f"{naive_tokens:,} |",
        f"| (a) naive / packed | **{naive_tokens / packed_tokens:.2f}x** |",
    ]
    for k in variants:
        lines.append(f"| (b) {k}: trained tokens/s (median of {args.reps}) | {tps[k]:,.0f} |")
    for k, v in res["ratio_vs"].items():
        lines.append(f"| (b) packed / {k} | **{v:.2f}** |")
    lines += [
        f"| (c) segment-level mask at L = {L_target:,} (seg ids + {S_target:,}^2 visibility, batch form) | "
        f"**{fmt_bytes(seg_bytes_target)}** |",
        f"| (c) flex BlockMask indices (128-blocks) for the built graph (L = {L_long:,}) | {fmt_bytes(bm_bytes)} |",
        f"| (c) dense bool L x L mask at L = {L_target:,} | {fmt_bytes(dense_bytes)} |",
        f"| (c) dense / segment-level | {dense_bytes / seg_bytes_target:,.0f}x |",
    ]
    print("\n".join(lines))
    print(
        f"\n{res['batch']}. Long trajectory: {used} completions concatenated, "
        f"{L_long:,} real tokens + padding to L = {L_target:,}, {S_target:,} segments."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
