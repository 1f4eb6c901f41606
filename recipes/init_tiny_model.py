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
import sys

from parallel_reason.data import DataError, read_jsonl
from parallel_reason.inputs import reports_input_errors


def read_corpus(paths: list[str]) -> list[str]:
    """Prompt + completion of every record; :class:`DataError` names a bad line."""
    texts = []
    for path in paths:
        for origin, rec in read_jsonl(path):
            if not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("completion"), str):
                raise DataError(f"{origin}: record needs string 'prompt' and 'completion' fields")
            texts.append(rec["prompt"] + rec["completion"])
    if not texts:
        raise DataError(f"no records in {', '.join(paths)}")
    return texts


@reports_input_errors
def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument(
        "--whole-numbers",
        action="store_true",
        help="keep digit runs together, so frequent numbers are single tokens (default: one token per digit)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from parallel_reason.tiny import build_tiny

    corpus = read_corpus(args.data)
    tok, model = build_tiny(
        corpus,
        args.out,
        vocab_size=args.vocab_size,
        seed=args.seed,
        arch=args.arch,
        split_digits=not args.whole_numbers,
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {args.arch}, {n_params / 1e6:.2f}M parameters, vocab {len(tok)} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
