"""SFT recipe: parse a config, make sure its data exists, train.

    accelerate launch recipes/sft.py --config configs/sft/countdown_tiny.yaml [--field value ...]
    accelerate launch --config_file configs/accelerate/zero2.yaml recipes/sft.py --config configs/sft/countdown_qwen.yaml
    python recipes/sft.py --config configs/sft/countdown_tiny.yaml --max_steps 20   # one process
    python recipes/sft.py --help                                                   # every field

When ``generate_data`` names a generator (``countdown``) and ``train_data`` /
``eval_data`` are missing, they are written first with
``python -m data_gen.<generator> --split train|val --mode <mode> --seed <seed>``
(main process only; the others wait). Everything else lives in
:mod:`parallel_reason.sft`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from parallel_reason.sft import SFTConfig, parse_args, train


def ensure_data(cfg: SFTConfig) -> None:
    """Generate missing data files with ``data_gen.<cfg.generate_data>``."""
    if not cfg.generate_data:
        return
    jobs = [(cfg.train_data, "train", cfg.generate_train_n, cfg.seed)]
    if cfg.eval_data:
        jobs.append((cfg.eval_data, "val", cfg.generate_eval_n, cfg.seed))
    for path, split, n, seed in jobs:
        if path is None or Path(path).exists():
            continue
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", f"data_gen.{cfg.generate_data}", "--n", str(n), "--seed", str(seed),
               "--split", split, "--mode", cfg.mode, "--out", str(path), "--no-progress"]
        print("generating data:", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if rank == 0:
        ensure_data(cfg)
    else:  # wait for rank 0 to write the files (no process group exists yet)
        import time

        paths = [p for p in (cfg.train_data, cfg.eval_data) if p and cfg.generate_data]
        for _ in range(3600):
            if all(Path(p).exists() for p in paths):
                break
            time.sleep(1)
    result = train(cfg)
    if result.final_dir and rank == 0:
        print(f"final model: {result.final_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
