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

from parallel_reason.inputs import reports_input_errors
from parallel_reason.launch import ensure_data
from parallel_reason.sft import SFTConfig, parse_args, train
from parallel_reason.training import exit_process, run_main


def data_jobs(cfg: SFTConfig) -> list[tuple]:
    """The data files ``data_gen.<cfg.generate_data>`` writes when missing, in the config's mode."""
    return [
        (cfg.train_data, "train", cfg.generate_train_n, cfg.seed),
        (cfg.eval_data, "val", cfg.generate_eval_n, cfg.seed),
    ]


def prepare(cfg: SFTConfig) -> None:
    ensure_data(cfg.generate_data, data_jobs(cfg), mode=cfg.mode)


@reports_input_errors
def main(argv=None) -> int:
    return run_main(parse_args, train, argv, prepare)


if __name__ == "__main__":
    exit_process(main())  # skips interpreter teardown after a multi-process run
