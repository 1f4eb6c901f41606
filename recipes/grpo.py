"""GRPO recipe: parse a config, make sure its prompts exist, train.

    accelerate launch recipes/grpo.py --config configs/grpo/countdown_tiny.yaml [--field value ...]
    accelerate launch --config_file configs/accelerate/ddp.yaml recipes/grpo.py --config configs/grpo/countdown_qwen.yaml
    python recipes/grpo.py --config configs/grpo/countdown_tiny.yaml --max_steps 20   # one process
    python recipes/grpo.py --config configs/grpo/countdown_tiny.yaml --parallel false  # sequential baseline
    python recipes/grpo.py --help                                                     # every field

When ``generate_data`` names a generator (``countdown``) and ``train_data`` /
``eval_data`` are missing, they are written first with
``python -m data_gen.<generator> --split train|test --seed <generate_seed>`` (main
process only; the others wait). Everything else lives in :mod:`parallel_reason.grpo`.
"""

from __future__ import annotations

from parallel_reason.grpo import GRPOConfig, parse_args, train
from parallel_reason.inputs import InputError, check_model_path, reports_input_errors
from parallel_reason.launch import ensure_data
from parallel_reason.training import exit_process, run_main


def data_jobs(cfg: GRPOConfig) -> list[tuple]:
    """The prompt files ``data_gen.<cfg.generate_data>`` writes when missing (the
    prompts do not depend on the mode)."""
    return [
        (cfg.train_data, "train", cfg.generate_train_n, cfg.generate_seed),
        (cfg.eval_data, "test", cfg.generate_eval_n, cfg.generate_seed),
    ]


def prepare(cfg: GRPOConfig) -> None:
    """The policy must exist (GRPO starts from an SFT model); missing prompt files are generated."""
    try:
        check_model_path(cfg.model_name_or_path, "model_name_or_path", cfg.revision)
    except InputError as e:
        raise InputError(
            f"{e}; GRPO starts from an SFT model: run recipes/sft.py first (see the config's header)"
        ) from None
    ensure_data(cfg.generate_data, data_jobs(cfg), mode="parallel" if cfg.parallel else "sequential")


@reports_input_errors
def main(argv=None) -> int:
    return run_main(parse_args, train, argv, prepare)


if __name__ == "__main__":
    exit_process(main())  # skips interpreter teardown after a multi-process run
