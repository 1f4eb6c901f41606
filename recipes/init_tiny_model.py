"""Build the tiny tokenizer + model of the CPU pipeline from JSONL training data.

    python recipes/init_tiny_model.py --data runs/demo/data/train_parallel.jsonl \
        runs/demo/data/train_sequential.jsonl --out runs/demo/tiny-base

The tokenizer is a byte-level BPE trained on the records' prompts and completions
(control tags added as single tokens); the model is a small Qwen2 (or Llama). Both
are saved with ``save_pretrained``, so later stages load the directory exactly like
a hub model id.
"""

from __future__ import annotations

import argparse
import json
import sys


def read_corpus(paths: list[str]) -> list[str]:
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{lineno}: not valid JSON ({e.msg})")
                if "prompt" not in rec or "completion" not in rec:
                    raise SystemExit(f"{path}:{lineno}: record needs 'prompt' and 'completion' fields")
                texts.append(rec["prompt"] + rec["completion"])
    if not texts:
        raise SystemExit(f"no records in {paths}")
    return texts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="JSONL files with prompt/completion records")
    ap.add_argument("--out", required=True, help="output directory (save_pretrained)")
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate-size", type=int, default=512)
    ap.add_argument("--whole-numbers", action="store_true",
                    help="keep digit runs together, so frequent numbers are single tokens (default: one token per digit)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from parallel_reason.tiny import build_tiny

    corpus = read_corpus(args.data)
    tok, model = build_tiny(corpus, args.out, vocab_size=args.vocab_size, seed=args.seed, arch=args.arch,
                            split_digits=not args.whole_numbers,
                            hidden_size=args.hidden_size, layers=args.layers, heads=args.heads,
                            kv_heads=args.kv_heads, intermediate_size=args.intermediate_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {args.arch}, {n_params / 1e6:.2f}M parameters, vocab {len(tok)} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
