"""P-GRPO: GRPO with fork/join rollouts from the runner and parallelization-aware
rewards, as a small accelerate loop (:class:`GRPOTrainer`, :class:`GRPOConfig`).

    accelerate launch recipes/grpo.py --config configs/grpo/countdown_tiny.yaml [--field value ...]

Each step samples a group of rollouts per prompt, scores them, centres rewards per
group and minimises a clipped loss on all sampled tokens of all threads, scored on
the rollouts' packed graphs (runner-written tokens excluded). Sizes, loss variants,
exact resume, the sequential baseline and why not TRL's ``GRPOTrainer``:
docs/design.md#grpo.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import rewards as R
from .attention import collate
from .config import config_field
from .config import config_help as config_help_of
from .finish import SAMPLED
from .format import Limits
from .inputs import reports_input_errors
from .layout import PackedGraph
from .logprobs import packed_logprobs
from .runner import Runner, model_join
from .runner.hf import model_thread_header
from .training import TrainConfig, Trainer, apply_peft, load_pretrained, make_optimizer, run_main
from .wrappers import is_peft

log = logging.getLogger("parallel_reason.grpo")

NORMALIZATIONS = ("token", "sequence", "constant")
#: TRL ``loss_type`` names accepted as aliases of our normalisations
TRL_LOSS_TYPES = {"dapo": "token", "bnpo": "token", "grpo": "sequence", "dr_grpo": "constant"}
METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.jsonl"
#: finish reasons logged as rates (the runner's, those sampling can give)
FINISH_KEYS = SAMPLED


# ---------------------------------------------------------------------------
# Configuration (same YAML + ``--field value`` pattern as parallel_reason.sft)


_f = config_field


@dataclass
class GRPOConfig(TrainConfig):
    """Every option of a GRPO run: the common ones of :class:`TrainConfig` and GRPO's
    own. Load with :func:`parse_args` (``--config FILE`` then ``--field value``
    overrides) or build in code. Sizes are per process."""

    recipe = "recipes/grpo.py"

    # common fields with GRPO's defaults
    model_name_or_path: str = _f("", "hub id or local path of the policy (usually the SFT model: runs/sft/.../final)")
    lora_dropout: float = _f(0.0, "LoRA dropout (0: keep the policy deterministic)")
    lora_modules_to_save: list[str] = _f([], "modules trained in full (SFT already trained the tag embeddings)")
    train_data: str | None = _f(
        None,
        "prompts: JSONL/JSON/parquet/csv, save_to_disk folder or `datasets` name; "
        "a record holds the prompt and the task's columns (nums, target, ...)",
    )
    prompt_field: str = _f(
        "prompt",
        "record field holding the prompt (text or chat messages); without it the task's prompt(**columns) is used",
    )
    generate_eval_n: int = _f(200, "recipes: prompts generated for eval_data (split test)")
    learning_rate: float = _f(1e-6, "peak learning rate")
    lr_scheduler_type: str = _f("constant", "transformers scheduler name")
    adam_beta2: float = _f(0.99, "AdamW beta2")
    output_dir: str = _f("runs/grpo", "checkpoints, final model, metrics.jsonl, samples.jsonl")
    max_steps: int = _f(100, "training steps (one step = one batch of rollouts)")
    logging_steps: int = _f(1, "log every N steps")
    join: str | None = _f(
        None,
        "join mode of rollouts and their packed graphs: concat | tree | summary; none: the mode "
        "the policy was trained with (its config; concat when absent)",
    )

    # model and data
    disable_dropout: bool = _f(True, "set every dropout to 0 (the ratio must compare deterministic policies)")
    task: str = _f("countdown", "task of the correctness reward when the data has no 'task' column")
    generate_seed: int = _f(1, "recipes/grpo.py: generator seed (differs from SFT's so RL sees other problems)")

    # rollouts
    parallel: bool = _f(True, "false: the sequential baseline (plain GRPO: tags are ordinary tokens, no fork)")
    num_generations: int = _f(8, "G: rollouts per prompt (one advantage group)")
    prompts_per_step: int = _f(4, "prompts per process per step")
    generation_batch_size: int = _f(8, "prompts the runner decodes at once (each with its G samples)")
    max_new_tokens: int = _f(512, "sampled-token budget of a rollout (all threads together)")
    max_thread_tokens: int | None = _f(None, "sampled-token budget of one thread")
    max_width: int | None = _f(8, "most threads of a block")
    max_depth: int | None = _f(2, "deepest block nesting")
    temperature: float = _f(1.0, "sampling temperature of training rollouts")
    top_p: float = _f(1.0, "nucleus sampling")
    top_k: int = _f(0, "top-k sampling (0: off)")
    constrained: bool = _f(
        False,
        "grammar-constrained rollouts: never sample a tag that makes the text malformed "
        "(importance ratios use the model's own log-probs; docs/design.md#constrained-decoding)",
    )

    # objective
    epsilon_low: float = _f(0.2, "PPO clip below: ratio >= 1 - epsilon_low")
    epsilon_high: float = _f(0.28, "PPO clip above (DAPO clip-higher): ratio <= 1 + epsilon_high")
    loss_normalization: str = _f(
        "token", "token (DAPO) | sequence (GRPO) | constant (Dr.GRPO); TRL names dapo | grpo | dr_grpo are accepted"
    )
    max_tokens_norm: int | None = _f(None, "constant normalisation: tokens per rollout (default max_new_tokens)")
    scale_rewards: str = _f("none", "none (mean-centring only) | group | batch: divide advantages by that std")
    num_iterations: int = _f(1, "optimisation passes over each batch of rollouts (PPO epochs)")
    mini_batch_size: int | None = _f(
        None, "rollouts per optimiser step (default: all of the step); must divide prompts_per_step * num_generations"
    )
    micro_batch_size: int | None = _f(None, "rollouts per forward (default: the mini-batch); must divide it")
    old_logprobs: str = _f(
        "runner",
        "runner: the sampling log-probs recorded on the graph | recompute: a no-grad forward before the first update",
    )
    beta: float = _f(0.0, "KL coefficient (k3 estimator) to the reference model; 0: no reference")
    ref_model: str = _f("auto", "auto | copy (frozen copy of the initial model) | disable_adapter (LoRA base)")

    # rewards (parallel_reason.rewards)
    rewards: list[str] = _f(["correctness", "acceleration"], "reward functions: correctness | acceleration | format")
    reward_weights: list[float] | None = _f(None, "one weight per reward (default 1.0 each)")
    acceleration_factor: float = _f(0.5, "acceleration = factor * min(1 - critical_path/total_tokens, clip)")
    acceleration_clip: float = _f(0.2, "upper bound of 1 - critical_path/total_tokens in the acceleration reward")
    format_valid: float = _f(1.0, "format reward of a well-formed completion")
    format_invalid: float = _f(0.0, "format reward of a malformed one (or one the runner stopped on a violation)")
    format_truncated: float = _f(0.0, "format reward of a rollout that hit a token budget")
    format_no_block: float | None = _f(
        None, "format reward of a well-formed completion without any block (None: same as format_valid)"
    )

    # optimiser, logging, evaluation
    optim: str = _f("adamw", "adamw | sgd")
    num_samples_to_log: int = _f(4, "completions per logged step written to samples.jsonl (and a wandb Table)")
    eval_num_prompts: int | None = _f(None, "held-out prompts per evaluation (default: all)")
    eval_temperature: float = _f(0.0, "evaluation sampling temperature (0: greedy)")
    eval_batch_size: int = _f(16, "held-out prompts per runner call")
    save_final_model: bool = _f(True, "write output_dir/final with the model card")

    def validate(self) -> GRPOConfig:
        def bad(msg):
            raise ValueError(f"config: {msg}")

        self.loss_normalization = TRL_LOSS_TYPES.get(self.loss_normalization, self.loss_normalization)
        if self.loss_normalization not in NORMALIZATIONS:
            bad(
                f"loss_normalization must be one of {NORMALIZATIONS} (or TRL's {sorted(TRL_LOSS_TYPES)}), "
                f"got {self.loss_normalization!r}"
            )
        choices = {
            "scale_rewards": ("none", "group", "batch"),
            "old_logprobs": ("runner", "recompute"),
            "ref_model": ("auto", "copy", "disable_adapter"),
            "optim": ("adamw", "sgd"),
        }
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                bad(f"{k} must be one of {allowed}, got {getattr(self, k)!r}")
        for k in (
            "num_generations",
            "prompts_per_step",
            "num_iterations",
            "generation_batch_size",
            "max_new_tokens",
            "eval_batch_size",
        ):
            if getattr(self, k) < 1:
                bad(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("max_steps", "num_samples_to_log"):
            if getattr(self, k) < 0:
                bad(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.epsilon_low < 0 or self.epsilon_high < 0 or self.epsilon_low >= 1:
            bad("need 0 <= epsilon_low < 1 and epsilon_high >= 0")
        if self.beta < 0:
            bad(f"beta must be >= 0, got {self.beta}")
        if self.temperature <= 0:
            bad("temperature of training rollouts must be > 0 (greedy groups have no variance)")
        n = self.rollouts_per_step
        mb, micro = self.mini_batch_size or n, self.micro_batch_size or (self.mini_batch_size or n)
        if mb < 1 or n % mb:
            bad(f"mini_batch_size {mb} must divide prompts_per_step * num_generations = {n}")
        if micro < 1 or mb % micro:
            bad(f"micro_batch_size {micro} must divide the mini-batch ({mb})")
        if len(self.rewards) == 0:
            bad("rewards: at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            bad(f"{len(self.reward_weights)} reward_weights for {len(self.rewards)} rewards")
        if self.push_to_hub and not self.save_final_model:
            bad("push_to_hub needs save_final_model: true (it publishes output_dir/final)")
        from .tasks import TASKS

        if self.task not in TASKS:
            bad(f"task {self.task!r} is unknown; available: {', '.join(sorted(TASKS))}")
        return super().validate()

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def mini_batch(self) -> int:
        return self.mini_batch_size or self.rollouts_per_step

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.mini_batch

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.num_iterations * (self.rollouts_per_step // self.mini_batch)


def config_help() -> str:
    return config_help_of(GRPOConfig, GRPOConfig.usage())


def parse_args(argv: Sequence[str] | None = None) -> GRPOConfig:
    """``--config FILE`` then ``--field value`` overrides (:func:`parallel_reason.config.parse_config`)."""
    return GRPOConfig.parse(argv)


# ---------------------------------------------------------------------------
# Advantages and the loss (pure functions: the trainer and the tests use these)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "none", eps: float = 1e-4) -> torch.Tensor:
    """Advantages of rewards laid out group after group (``[P * G]``): reward minus
    its group mean; ``scale="group"`` divides by the group std (unbiased, as TRL),
    ``"batch"`` by the std of the whole batch."""
    r = rewards.to(torch.float32).view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        adv = adv / (std + eps)
    elif scale == "batch":
        std = r.flatten().std() if r.numel() > 1 else torch.zeros(())
        adv = adv / (std + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}")
    return adv.flatten()


def token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Per-token PPO-clip loss ``[B, L]`` (0 off the mask) and per-token diagnostics.

    ``loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta * KL_k3`` with
    ``r = exp(logp - old_logp)`` and ``KL_k3 = exp(ref - logp) - (ref - logp) - 1``."""
    m = mask.to(logp.dtype)
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logp.dtype)[:, None]
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    info = {
        "clip_low": ((ratio < 1.0 - epsilon_low) & (adv < 0) & mask).detach(),
        "clip_high": ((ratio > 1.0 + epsilon_high) & (adv > 0) & mask).detach(),
        "ratio": (ratio * m).detach(),
    }
    if ref_logp is not None:
        d = torch.where(mask, ref_logp - logp, torch.zeros_like(logp))
        kl = torch.exp(d) - d - 1.0
        info["kl"] = (kl * m).detach()
        if beta:
            loss = loss + beta * kl
    return loss * m, info


def reduce_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    normalization: str,
    num_tokens: float,
    num_rollouts: float,
    max_tokens: float | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the mini-batch loss. ``num_tokens`` and
    ``num_rollouts`` are the totals of the whole mini-batch (all micro-batches and
    processes), so the shares add up to the exact mini-batch loss."""
    if normalization == "token":
        return per_token.sum() / max(float(num_tokens), 1.0)
    if normalization == "sequence":
        n = mask.sum(dim=1).clamp(min=1).to(per_token.dtype)
        return (per_token.sum(dim=1) / n).sum() / max(float(num_rollouts), 1.0)
    if normalization == "constant":
        if not max_tokens:
            raise ValueError("constant normalisation needs max_tokens")
        return per_token.sum() / (max(float(num_rollouts), 1.0) * float(max_tokens))
    raise ValueError(f"unknown normalisation {normalization!r}")


def _pad_rows(rows: Sequence[torch.Tensor | None], L: int, device, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(len(rows), L, dtype=dtype, device=device)
    for b, r in enumerate(rows):
        if r is not None:
            out[b, : r.shape[0]] = r.to(device=device, dtype=dtype)
    return out


def grpo_loss(
    model,
    graphs: Sequence[PackedGraph],
    advantages: torch.Tensor,
    old_logprobs: Sequence[torch.Tensor] | None = None,
    ref_logprobs: Sequence[torch.Tensor] | None = None,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    beta: float = 0.0,
    normalization: str = "token",
    max_tokens: int | None = None,
    num_tokens: float | None = None,
    num_rollouts: float | None = None,
    pad_id: int = 0,
    scale: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Loss of a micro-batch of rollouts (their packed graphs) and summed diagnostics.

    ``old_logprobs`` (one ``[L_i]`` tensor per graph, aligned with graph nodes) are
    the behaviour log-probs; None means "the current policy" (ratio 1, the gradient
    of on-policy GRPO). ``num_tokens``/``num_rollouts`` default to this micro-batch's
    own counts. ``scale`` multiplies the loss (the trainer passes the number of
    processes to undo DDP's gradient averaging)."""
    dev = next(model.parameters()).device
    batch = collate(graphs, pad_id=pad_id)
    batch = {k: v.to(dev) for k, v in batch.items()}
    mask = batch["loss_mask"]
    L = mask.shape[1]
    logp, ent = packed_logprobs(model, batch, return_entropy=True)
    old = logp.detach() if old_logprobs is None else _pad_rows(old_logprobs, L, dev, logp.dtype)
    ref = None if ref_logprobs is None else _pad_rows(ref_logprobs, L, dev, logp.dtype)
    adv = advantages.to(dev)
    per_tok, info = token_loss(logp, old, adv, mask, epsilon_low, epsilon_high, beta, ref)
    n_tok = float(mask.sum()) if num_tokens is None else num_tokens
    n_roll = float(len(graphs)) if num_rollouts is None else num_rollouts
    loss = reduce_loss(per_tok, mask, normalization, n_tok, n_roll, max_tokens) * scale
    m = mask.float()
    stats = {
        "tokens": float(m.sum()),
        "clip_low": float(info["clip_low"].sum()),
        "clip_high": float(info["clip_high"].sum()),
        "ratio": float(info["ratio"].sum()),
        "entropy": float((ent.detach() * m).sum()),
        "loss": float(loss.detach()) / scale if scale else 0.0,
    }
    if "kl" in info:
        stats["kl"] = float(info["kl"].sum())
    return loss, stats


# ---------------------------------------------------------------------------
# Rollout batches


@dataclass
class RolloutBatch:
    """The rollouts of one step, flat in prompt order (G consecutive per prompt)."""

    rollouts: list
    graphs: list[PackedGraph]
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    components: dict[str, list[float]] = field(default_factory=dict)
    old_logprobs: list[torch.Tensor] | None = None  # per rollout [L_i]
    ref_logprobs: list[torch.Tensor] | None = None
    texts: list[str] | None = None  # completion texts the rewards read


# ---------------------------------------------------------------------------
# Data


def load_prompts(source, split: str = "train", config: str | None = None, max_samples: int | None = None) -> list[dict]:
    """Prompt records of any source :mod:`parallel_reason.data` reads (JSONL, JSON,
    parquet/csv, save_to_disk folders, `datasets` names); unlike SFT examples they
    need no completion. Each record keeps its origin under ``_origin``."""
    from .data import DataError, read_records

    rows = read_records(source, split, config)
    if not rows:
        raise DataError(f"{source}: no records")
    if max_samples is not None and max_samples >= 0:
        rows = rows[:max_samples]
    return [{**rec, "_origin": origin} for origin, rec in rows]


def required_params(fn, skip: int = 0) -> list[str]:
    """Parameters of ``fn`` without a default, after the first ``skip``."""
    ps = list(inspect.signature(fn).parameters.values())[skip:]
    return [
        p.name
        for p in ps
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def check_prompts(rows: Sequence[dict], task: str, prompt_field: str = "prompt", verifier: bool = True) -> None:
    """:class:`~parallel_reason.data.DataError` naming the first record a run on
    ``task`` cannot use: a ``task`` column naming another task, a missing column of
    the task's prompt (when the record has no ``prompt_field``) or, with
    ``verifier``, of its verifier, or values the task refuses (``check_problem``:
    Countdown's non-integer numbers). Run at load, before any model: a bad record
    would otherwise stop training at the step that first draws it."""
    from .data import DataError, check_prompt
    from .tasks import get_task

    mod = get_task(task)
    needs = required_params(mod.reward, 1) if verifier else []
    prompt_needs = [c for c in required_params(mod.prompt) if c not in needs]
    check = getattr(mod, "check_problem", None) if verifier else None
    for k, row in enumerate(rows):
        origin = row.get("_origin") or f"prompt record {k}"
        if row.get("task") and row["task"] != task:
            raise DataError(
                f"{origin}: the record's task is {row['task']!r} but the config's task is {task!r}; "
                f"set task: {row['task']} (a run trains one task)"
            )
        if row.get(prompt_field) is not None:
            check_prompt(row[prompt_field], origin, prompt_field)
        cols = needs + (prompt_needs if row.get(prompt_field) is None else [])
        missing = [c for c in cols if row.get(c) is None]
        if missing:
            have = sorted(c for c in row if not c.startswith("_"))
            what = f"field {prompt_field!r} or " if row.get(prompt_field) is None and prompt_needs else ""
            raise DataError(f"{origin}: task {task!r} needs {what}the field(s) {missing}; the record has {have}")
        if check is not None:
            try:
                check(**{c: row[c] for c in required_params(check)})
            except ValueError as e:
                raise DataError(f"{origin}: {e}") from None


class PromptOrder:
    """Seeded, resumable prompt order: epoch ``e`` is a permutation drawn from
    ``(seed, e)`` only (:func:`parallel_reason.data.epoch_permutation`); step ``s``
    takes the ``s``-th slice of ``per_step * world`` indices of the endless
    concatenation of epochs, and process ``rank`` its own part. The order depends
    only on (seed, step): resuming at a step reproduces it."""

    def __init__(self, n: int, per_step: int, seed: int, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("no prompts")
        self.n, self.per_step, self.seed, self.rank, self.world = n, per_step, seed, rank, world
        self._cache: tuple[int, list[int]] | None = None

    def _epoch(self, e: int) -> list[int]:
        from .data import epoch_permutation

        if self._cache is None or self._cache[0] != e:
            self._cache = (e, epoch_permutation(self.n, self.seed, e))
        return self._cache[1]

    def indices(self, step: int) -> list[int]:
        glob = self.per_step * self.world
        start = step * glob + self.rank * self.per_step
        out = []
        for k in range(start, start + self.per_step):
            e, i = divmod(k, self.n)
            out.append(self._epoch(e)[i])
        return out


def step_seeds(seed: int, step: int, rank: int, per_step: int) -> list[int]:
    """Runner seed of each prompt of one process at one step: a function of the
    prompt's global position in the step, so 2 processes x 1 prompt sample exactly
    what 1 process x 2 prompts samples."""
    base = (int(seed) * 1_000_003 + int(step) * 65_537) % (2**31 - 1)
    return [base + rank * per_step + i for i in range(per_step)]


# ---------------------------------------------------------------------------
# The trainer


class GRPOTrainer(Trainer):
    """The accelerate loop; see the module docstring.

    ``model``/``tokenizer`` (tests, notebooks) override loading
    ``model_name_or_path``; ``train_rows``/``eval_rows`` (dicts with a prompt and the
    task's columns) override the data sources; ``reward_funcs`` (TRL signature, with
    ``reward_weights``) override the configured rewards; ``runner_factory(model,
    tokenizer, config)`` builds the rollout engine (default: the HF fork/join runner)."""

    run_files = (METRICS_NAME, SAMPLES_NAME)

    def __init__(
        self,
        cfg: GRPOConfig,
        model=None,
        tokenizer=None,
        train_rows: Sequence[dict] | None = None,
        eval_rows: Sequence[dict] | None = None,
        reward_funcs: Sequence[Callable] | None = None,
        reward_weights: Sequence[float] | None = None,
        runner_factory: Callable | None = None,
    ):
        n_micro = cfg.mini_batch // cfg.micro_batch
        # accelerate divides each micro-batch loss by the accumulation steps and calls
        # optimizer.step() for real only at the end of a window of n_micro micro-batches
        self.setup(cfg, n_micro, cfg.micro_batch, check_model=model is None)
        self.n_micro = n_micro
        cfg, acc = self.cfg, self.acc

        # data
        if train_rows is None:
            if not cfg.train_data:
                raise ValueError("config: train_data is not set")
            train_rows = load_prompts(cfg.train_data, cfg.train_split, cfg.data_config, cfg.max_train_samples)
        if eval_rows is None and cfg.eval_data:
            eval_rows = load_prompts(cfg.eval_data, cfg.eval_split, cfg.data_config, cfg.max_eval_samples)
        self.train_rows = list(train_rows)
        self.eval_rows = list(eval_rows) if eval_rows else None
        verifier = reward_funcs is None and bool({"correctness", "acceleration"} & set(map(str, cfg.rewards)))
        check_prompts(self.train_rows, cfg.task, cfg.prompt_field, verifier)
        check_prompts(self.eval_rows or [], cfg.task, cfg.prompt_field, verifier)

        self._setup_model(model, tokenizer)
        self._setup_rewards(reward_funcs, reward_weights)
        self.runner_factory = runner_factory or default_runner_factory
        self.order = PromptOrder(
            len(self.train_rows), cfg.prompts_per_step, cfg.seed, acc.process_index, acc.num_processes
        )
        if self.resume_dir is not None:
            self._load_state(self.resume_dir)
        self.init_trackers()

    # -- setup --------------------------------------------------------------------

    def _setup_model(self, model, tokenizer) -> None:
        """Policy (LoRA when configured), optimizer and schedule, and the KL reference."""
        cfg, acc = self.cfg, self.acc
        if model is None or tokenizer is None:
            tokenizer, model = self._load(model, tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if cfg.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(model)
        self.ref_mode = None
        ref = None
        if cfg.beta > 0:
            self.ref_mode = cfg.ref_model
            if self.ref_mode == "auto":
                self.ref_mode = "disable_adapter" if (cfg.use_peft or is_peft(model)) else "copy"
            if self.ref_mode == "copy":
                ref = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.use_peft and not is_peft(model):
            model = apply_peft(model, cfg)
        if self.ref_mode == "disable_adapter" and not is_peft(model):
            raise ValueError("config: ref_model disable_adapter needs a LoRA policy (use_peft: true)")

        def make_opt(m):
            if cfg.optim == "sgd":
                return torch.optim.SGD(
                    [p for p in m.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
                )
            return make_optimizer(m, cfg)

        # one scheduler step per optimiser step
        self.prepare(model, max(cfg.max_steps * cfg.optimizer_steps_per_step, 1), cfg.warmup_steps, make_opt)
        if ref is not None:
            from accelerate.utils import DistributedType

            if acc.distributed_type == DistributedType.DEEPSPEED:
                from trl.models.utils import prepare_deepspeed

                ref = prepare_deepspeed(ref, acc)
            else:
                ref = acc.prepare_model(ref, evaluation_mode=True)
        self.ref_model = ref

    def _setup_rewards(self, reward_funcs, reward_weights) -> None:
        if reward_funcs is None:
            from .metrics import tokenizer_counter

            self.reward_funcs, self.reward_weights = R.build_reward_funcs(
                self.cfg, count=tokenizer_counter(self.tokenizer)
            )
            return
        self.reward_funcs = list(reward_funcs)
        self.reward_weights = (
            [float(w) for w in reward_weights] if reward_weights is not None else [1.0] * len(self.reward_funcs)
        )
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"{len(self.reward_weights)} reward weights for {len(self.reward_funcs)} rewards")

    def _load(self, model, tokenizer):
        """Tokenizer and model from ``model_name_or_path``; control tokens are added
        (embeddings resized) if the tokenizer lacks them."""
        cfg = self.cfg
        if not cfg.model_name_or_path:
            raise ValueError("config: model_name_or_path is not set")
        tokenizer, model, added = load_pretrained(cfg, cfg.model_name_or_path, model, tokenizer)
        if added:
            log.warning(
                "the policy's tokenizer lacked control tokens %s: added (untrained rows); GRPO normally "
                "starts from an SFT model that knows them",
                added,
            )
        return tokenizer, model

    # -- rollouts ----------------------------------------------------------------

    def prompt_of(self, row: dict) -> str:
        """The prompt text of a record: its prompt field (text or chat messages,
        rendered like SFT did by :func:`parallel_reason.data.render_prompt`), or the
        task's ``prompt(**columns)``."""
        from .data import render_prompt

        p = row.get(self.cfg.prompt_field)
        if p is None:
            from .tasks import get_task

            task = get_task(row.get("task") or self.cfg.task)
            p = task.prompt(**{k: row[k] for k in required_params(task.prompt)})
        return render_prompt(p, self.tokenizer, self.cfg.apply_chat_template, row.get("_origin", ""))

    def generate(self, rows: Sequence[dict], n: int, temperature: float, seed: int | Sequence[int]) -> list:
        """``n`` rollouts per record with the current policy: unwrapped (ZeRO-3
        parameters gathered, FSDP-1 root parameters summoned, as TRL does for its own
        HF generation), eval mode, no grad."""
        from trl.distributed import DistributedBackend
        from trl.models.utils import unwrap_model_for_generation

        prompts = [self.prompt_of(r) for r in rows]
        with (
            unwrap_model_for_generation(self.model, self.acc) as unwrapped,
            torch.no_grad(),
            DistributedBackend(self.acc).summon_full_params(self.model, recurse=False),
        ):
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                runner = self.runner_factory(unwrapped, self.tokenizer, self.cfg)
                rollouts = runner.generate(
                    prompts, n=n, temperature=temperature, top_p=self.cfg.top_p, top_k=self.cfg.top_k, seed=seed
                )
            finally:
                unwrapped.train(was_training)
        if len(rollouts) != n * len(rows):
            raise RuntimeError(f"runner returned {len(rollouts)} rollouts for {len(rows)} prompts x {n}")
        return rollouts

    def text_of(self, rollout) -> str:
        """The completion text the rewards read: the completion ids decoded without
        special tokens (EOS, padding; control tags are ordinary added tokens and stay)."""
        return self.tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)

    def score(
        self, rows: Sequence[dict], rollouts: list, n: int, texts: list[str] | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Weighted reward per rollout and each component (unweighted) by name; the
        records' columns are passed as keyword lists, the rollouts as ``rollouts``."""
        prompts = [self.prompt_of(r) for r in rows for _ in range(n)]
        completions = texts if texts is not None else [self.text_of(ro) for ro in rollouts]
        keys = sorted({k for r in rows for k in r if not k.startswith("_")} - {"prompts", "completions", "rollouts"})
        columns = {k: [r.get(k) for r in rows for _ in range(n)] for k in keys}
        if "task" not in columns:
            columns["task"] = [self.cfg.task] * len(completions)
        total, parts = R.score(
            self.reward_funcs, self.reward_weights, prompts, completions, rollouts=rollouts, **columns
        )
        return torch.tensor(total, dtype=torch.float32), parts

    def make_batch(self, rows: Sequence[dict], rollouts: list) -> RolloutBatch:
        """Rewards and group advantages of ``num_generations`` rollouts per record."""
        G = self.cfg.num_generations
        texts = [self.text_of(ro) for ro in rollouts]
        rewards, parts = self.score(rows, rollouts, G, texts)
        adv = group_advantages(rewards, G, self.cfg.scale_rewards)
        return RolloutBatch(
            rollouts=list(rollouts),
            graphs=[r.graph for r in rollouts],
            rewards=rewards,
            advantages=adv,
            components=parts,
            texts=texts,
        )

    # -- optimisation -------------------------------------------------------------

    @torch.no_grad()
    def _logprobs(self, model, graphs: Sequence[PackedGraph]) -> list[torch.Tensor]:
        """Per-graph log-probs ``[L_i]`` of the sampled tokens (no grad), micro-batched."""
        out: list[torch.Tensor] = []
        dev = self.acc.device
        mb = self.cfg.micro_batch
        for k in range(0, len(graphs), mb):
            gs = graphs[k : k + mb]
            b = {key: v.to(dev) for key, v in collate(gs, pad_id=self.tokenizer.pad_token_id).items()}
            lp = packed_logprobs(model, b).cpu()
            out += [lp[j, : len(g)] for j, g in enumerate(gs)]
        return out

    def prepare_old_and_ref(self, batch: RolloutBatch) -> None:
        """Behaviour log-probs (the runner's, or recomputed) and reference log-probs."""
        if batch.old_logprobs is None:
            if self.cfg.old_logprobs == "runner" and all(g.sample_logprobs is not None for g in batch.graphs):
                batch.old_logprobs = [lp for g in batch.graphs if (lp := g.sample_logprobs) is not None]  # all of them
            else:
                if self.cfg.old_logprobs == "runner":
                    log.warning("rollouts carry no sampling log-probs: recomputing the old log-probs")
                batch.old_logprobs = self._logprobs(self.model, batch.graphs)
        if self.cfg.beta > 0 and batch.ref_logprobs is None:
            if self.ref_mode == "disable_adapter":
                with self.unwrapped.disable_adapter():
                    batch.ref_logprobs = self._logprobs(self.model, batch.graphs)
            else:
                batch.ref_logprobs = self._logprobs(self.ref_model, batch.graphs)

    def optimize(self, batch: RolloutBatch) -> dict:
        """``num_iterations`` passes over the batch, one optimiser step per mini-batch."""
        cfg, acc = self.cfg, self.acc
        self.model.train()
        self.prepare_old_and_ref(batch)
        N = len(batch.graphs)
        if N != cfg.rollouts_per_step:
            raise ValueError(f"batch of {N} rollouts, config expects {cfg.rollouts_per_step}")
        sums: dict[str, float] = {}
        grad_norms: list[float] = []
        for _ in range(cfg.num_iterations):
            for start in range(0, N, cfg.mini_batch):
                self._mini_batch_step(batch, list(range(start, start + cfg.mini_batch)), sums, grad_norms)
        if acc.num_processes > 1:  # token-weighted diagnostics over all processes; the loss shares add up
            keys = sorted(sums)
            tot = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "sum")
            sums = dict(zip(keys, tot.tolist()))
        tok = max(sums.get("tokens", 0.0), 1.0)
        out = {
            "loss": sums.get("loss", 0.0) / max(cfg.optimizer_steps_per_step, 1),
            "clip_fraction": (sums.get("clip_low", 0.0) + sums.get("clip_high", 0.0)) / tok,
            "clip_fraction_low": sums.get("clip_low", 0.0) / tok,
            "clip_fraction_high": sums.get("clip_high", 0.0) / tok,
            "ratio_mean": sums.get("ratio", 0.0) / tok,
            "entropy": sums.get("entropy", 0.0) / tok,
            "lr": self.scheduler.get_last_lr()[0],
        }
        if "kl" in sums:
            out["kl"] = sums["kl"] / tok
        if grad_norms:
            out["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return out

    def _mini_batch_step(self, batch: RolloutBatch, idx: list[int], sums: dict, grad_norms: list) -> None:
        """One optimiser step over the rollouts ``idx``, in micro-batches; adds the loss
        statistics to ``sums`` and the gradient norm to ``grad_norms``."""
        cfg, acc, model = self.cfg, self.acc, self.model
        W = acc.num_processes
        counts = torch.tensor(
            [float(sum(int(batch.graphs[i].loss_mask.sum()) for i in idx)), float(len(idx))], device=acc.device
        )
        counts = acc.reduce(counts, reduction="sum") if W > 1 else counts
        n_tok, n_roll = float(counts[0]), float(counts[1])
        old_logprobs = batch.old_logprobs
        assert old_logprobs is not None  # set by prepare_old_and_ref
        for k in range(0, len(idx), cfg.micro_batch):
            sl = idx[k : k + cfg.micro_batch]
            with acc.accumulate(model):
                loss, st = grpo_loss(
                    model,
                    [batch.graphs[i] for i in sl],
                    batch.advantages[sl],
                    [old_logprobs[i] for i in sl],
                    None if batch.ref_logprobs is None else [batch.ref_logprobs[i] for i in sl],
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    beta=cfg.beta,
                    normalization=cfg.loss_normalization,
                    max_tokens=cfg.max_tokens_norm or cfg.max_new_tokens,
                    num_tokens=n_tok,
                    num_rollouts=n_roll,
                    pad_id=self.tokenizer.pad_token_id,
                    # x W: DDP averages gradients over processes; x n_micro: accelerate divides by
                    # the accumulation steps. The sum over micro-batches and processes is then
                    # exactly the mini-batch loss.
                    scale=float(W * self.n_micro),
                )
                gn = self.backward_and_step(loss)
                if gn is not None:
                    grad_norms.append(gn)
            for key, v in st.items():
                sums[key] = sums.get(key, 0.0) + v
        if not acc.sync_gradients:  # full windows by construction; guard the invariant
            raise RuntimeError("gradient accumulation window ended without an optimiser step")

    # -- metrics -------------------------------------------------------------------

    def rollout_metrics(self, batch: RolloutBatch) -> dict:
        """Rewards (total and per component), accuracy, format-valid rate, blocks and
        threads per rollout, total tokens, critical path, speedup (mean of per-rollout
        ``total / critical_path``), finish reasons."""
        texts = batch.texts or [self.text_of(r) for r in batch.rollouts]
        st = [R.rollout_stats(r, t) for r, t in zip(batch.rollouts, texts)]
        n = max(len(st), 1)
        G = self.cfg.num_generations
        grp = batch.rewards.view(-1, G)
        out: dict[str, float] = {
            "reward": float(batch.rewards.mean()),
            "reward_std": float(grp.std(dim=1).mean()) if G > 1 else 0.0,
            "frac_groups_zero_std": float((grp.std(dim=1) < 1e-6).float().mean()) if G > 1 else 1.0,
            "total_tokens": sum(s["total_tokens"] for s in st) / n,
            "critical_path": sum(s["critical_path"] for s in st) / n,
            "speedup": sum(s["speedup"] for s in st) / n,
            "blocks_per_rollout": sum(s["blocks"] for s in st) / n,
            "fork_rate": sum(s["blocks"] > 0 for s in st) / n,
            "threads_per_rollout": sum(s["threads"] for s in st) / n,
            "truncated_rate": sum(s["truncated"] for s in st) / n,
        }
        for name, vals in batch.components.items():
            out[f"rewards/{name}"] = sum(vals) / max(len(vals), 1)
        if "correctness" in batch.components:
            out["accuracy"] = sum(v > 0 for v in batch.components["correctness"]) / n
        lim = Limits(self.cfg.max_depth, self.cfg.max_width)
        out["format_valid"] = (
            sum(R.format_outcome(t, r, lim).valid and not R.is_truncated(r) for r, t in zip(batch.rollouts, texts)) / n
        )
        reasons: dict[str, int] = {}
        for r in batch.rollouts:
            k = r.finish_reason
            reasons[k] = reasons.get(k, 0) + 1
        for k in FINISH_KEYS:
            out[f"finish/{k}"] = reasons.get(k, 0) / n
        return out

    def _mean_over_processes(self, metrics: dict) -> dict:
        acc = self.acc
        if acc.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], device=acc.device, dtype=torch.float64)
        t = acc.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist()))

    # -- logging -------------------------------------------------------------------

    def report(self, entry: dict) -> None:
        """One line of metrics.jsonl and a short python log line (main process)."""
        with open(self.out / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        keys = (
            "reward",
            "accuracy",
            "speedup",
            "fork_rate",
            "format_valid",
            "total_tokens",
            "critical_path",
            "kl",
            "clip_fraction",
            "entropy",
            "eval/accuracy",
            "eval/speedup_mean_of_ratios",
            "eval/format_valid",
            "eval/total_tokens",
            "time/rollout_s",
            "time/train_s",
        )
        log.info(
            "step %d: %s",
            entry["step"],
            " ".join(f"{k}={entry[k]:.4g}" for k in keys if isinstance(entry.get(k), float)),
        )

    def log_samples(self, rows: Sequence[dict], batch: RolloutBatch, step: int) -> None:
        """The first rollout of the first ``num_samples_to_log`` groups: samples.jsonl
        always, a wandb Table when wandb is on."""
        k = self.cfg.num_samples_to_log
        if k <= 0 or not self.acc.is_main_process:
            return
        G = self.cfg.num_generations
        records = []
        for i in list(range(0, len(batch.rollouts), G))[:k]:
            ro = batch.rollouts[i]
            text = batch.texts[i] if batch.texts else self.text_of(ro)
            st = R.rollout_stats(ro, text)
            records.append(
                {
                    "step": step,
                    "prompt": self.prompt_of(rows[i // G]),
                    "completion": text,
                    "reward": float(batch.rewards[i]),
                    "advantage": float(batch.advantages[i]),
                    **{f"reward/{n}": float(v[i]) for n, v in batch.components.items()},
                    "total_tokens": st["total_tokens"],
                    "critical_path": st["critical_path"],
                    "blocks": st["blocks"],
                    "finish_reason": ro.finish_reason,
                }
            )
        with open(self.out / SAMPLES_NAME, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        if "wandb" in self.cfg.report_to and records:
            cols = list(records[0])
            self.acc.get_tracker("wandb").log_table(
                "samples", columns=cols, data=[[r.get(c) for c in cols] for r in records], step=step
            )

    # -- the loop --------------------------------------------------------------------

    def train_step(self) -> dict:
        """Generate, score, optimise: one step. Returns its metrics (mean over processes)."""
        cfg, acc = self.cfg, self.acc
        rows = [self.train_rows[i] for i in self.order.indices(self.global_step)]
        t0 = time.perf_counter()
        rollouts = self.generate(
            rows,
            cfg.num_generations,
            cfg.temperature,
            step_seeds(cfg.seed, self.global_step, acc.process_index, cfg.prompts_per_step),
        )
        t1 = time.perf_counter()
        batch = self.make_batch(rows, rollouts)
        metrics = self.rollout_metrics(batch)
        t2 = time.perf_counter()
        metrics.update(self.optimize(batch))
        t3 = time.perf_counter()
        metrics.update(
            {
                "time/rollout_s": t1 - t0,
                "time/reward_s": t2 - t1,
                "time/train_s": t3 - t2,
                "rollout_wall_s_mean": sum(r.wall_s for r in rollouts) / len(rollouts),
            }
        )
        self.global_step += 1
        metrics = self._mean_over_processes(metrics)
        if self.global_step % cfg.logging_steps == 0:
            self._log({"step": self.global_step, **metrics})
            self.log_samples(rows, batch, self.global_step)
        return metrics

    def train(self) -> GRPOResult:
        """Train until ``max_steps`` (from the resumed step), evaluating and
        checkpointing as configured; writes the final model."""
        cfg, acc = self.cfg, self.acc
        log.info(
            "GRPO: %d prompts, %d processes x %d prompts x %d generations per step, %d optimiser steps "
            "per step, %s rollouts, %d steps",
            len(self.train_rows),
            acc.num_processes,
            cfg.prompts_per_step,
            cfg.num_generations,
            cfg.optimizer_steps_per_step,
            "parallel" if cfg.parallel else "sequential",
            cfg.max_steps,
        )
        if self.eval_rows and cfg.eval_on_start and self.global_step == 0:
            self._log({"step": 0, **{f"eval/{k}": v for k, v in self.evaluate().items()}})
        last_eval = 0 if (self.eval_rows and cfg.eval_on_start) else -1
        while self.global_step < cfg.max_steps:
            self.train_step()
            if self.eval_rows and cfg.eval_steps and self.global_step % cfg.eval_steps == 0:
                self._log({"step": self.global_step, **{f"eval/{k}": v for k, v in self.evaluate().items()}})
                last_eval = self.global_step
            if cfg.save_steps and self.global_step % cfg.save_steps == 0:
                self.save_checkpoint()
        metrics = {}
        if self.eval_rows:
            if last_eval != self.global_step:
                self._log({"step": self.global_step, **{f"eval/{k}": v for k, v in self.evaluate().items()}})
            metrics = {k: v for k, v in self.log_history[-1].items() if k.startswith("eval/")}
        final = self.save_final(metrics) if cfg.save_final_model else None
        self.finish(final)
        return GRPOResult(self.global_step, list(self.log_history), str(final) if final else None)

    # -- evaluation -------------------------------------------------------------------

    def evaluate(self, rows: Sequence[dict] | None = None) -> dict:
        """One rollout per held-out prompt at ``eval_temperature`` (0: greedy):
        accuracy, format-valid rate, tokens, critical path and speedup (mean of
        per-problem ratios and ratio of means), sharded over processes (every process
        runs the same number of runner calls: ZeRO-3 gathers are collective)."""
        from .data import eval_shards

        rows = list(rows if rows is not None else (self.eval_rows or []))
        if self.cfg.eval_num_prompts:
            rows = rows[: self.cfg.eval_num_prompts]
        acc = self.acc
        lim = Limits(self.cfg.max_depth, self.cfg.max_width)
        sums = torch.zeros(8, dtype=torch.float64)
        for k, (idx, w) in enumerate(
            eval_shards(len(rows), self.cfg.eval_batch_size, acc.process_index, acc.num_processes)
        ):
            chunk = [rows[i] for i in idx]
            ros = self.generate(
                chunk, 1, self.cfg.eval_temperature, step_seeds(self.cfg.seed + 1, k, acc.process_index, len(chunk))
            )
            texts = [self.text_of(ro) for ro in ros]
            _, parts = self.score(chunk, ros, 1, texts)
            correct = parts.get("correctness")
            if correct is None:  # custom rewards: verify with the task when the records allow it
                try:
                    correct = R.Correctness(self.cfg.task)(
                        [""] * len(ros),
                        texts,
                        **{c: [r.get(c) for r in chunk] for c in chunk[0] if not c.startswith("_")},
                    )
                except ValueError:
                    correct = [0.0] * len(ros)
            for j, ro in enumerate(ros):
                s = R.rollout_stats(ro, texts[j])
                valid = R.format_outcome(texts[j], ro, lim).valid and not s["truncated"]
                sums += w[j] * torch.tensor(
                    [
                        1.0,
                        float(correct[j] > 0),
                        float(valid),
                        s["total_tokens"],
                        max(s["critical_path"], 1),
                        s["speedup"],
                        s["blocks"],
                        float(s["truncated"]),
                    ],
                    dtype=torch.float64,
                )
        if acc.num_processes > 1:
            sums = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
        n = max(float(sums[0]), 1.0)
        return {
            "n": float(sums[0]),
            "accuracy": float(sums[1]) / n,
            "format_valid": float(sums[2]) / n,
            "total_tokens": float(sums[3]) / n,
            "critical_path": float(sums[4]) / n,
            "speedup_mean_of_ratios": float(sums[5]) / n,
            "speedup_ratio_of_means": float(sums[3]) / max(float(sums[4]), 1.0),
            "blocks_per_rollout": float(sums[6]) / n,
            "truncated_rate": float(sums[7]) / n,
        }

    # -- checkpoints -------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "num_train_prompts": len(self.train_rows),
            "prompts_per_step": self.cfg.prompts_per_step,
            "seed": self.cfg.seed,
        }

    def _load_state(self, ckpt: Path) -> None:
        self.load_checkpoint(ckpt, self.state(), "prompts and step layout")
        if self.acc.is_main_process:  # drop lines a crashed run wrote after this checkpoint
            for name in (METRICS_NAME, SAMPLES_NAME):
                p = self.out / name
                if p.exists():
                    keep = [
                        line
                        for line in p.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= self.global_step
                    ]
                    p.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def card(self, metrics: dict | None = None) -> dict:
        """Card for :func:`parallel_reason.hub.render_model_card`."""
        cfg = self.cfg
        rewards = " + ".join(f"{w:g} x {R.reward_name(f)}" for f, w in zip(self.reward_funcs, self.reward_weights))
        summary = (
            (
                f"Trained with P-GRPO (parallel_reason): groups of {cfg.num_generations} fork/join rollouts per "
                f"prompt from the runner, PPO-clipped token loss (clip {cfg.epsilon_low}/{cfg.epsilon_high}, "
                f"{cfg.loss_normalization} normalisation) on the packed graph of every rollout; "
                f"reward = {rewards}."
            )
            if cfg.parallel
            else (
                f"Sequential GRPO baseline (parallel_reason, parallel: false): plain causal rollouts, the same "
                f"loss code; reward = {rewards}."
            )
        )
        card = super().card(metrics)
        return {
            **card,
            "stage": "grpo",
            "mode": "parallel" if cfg.parallel else "sequential",
            "join": cfg.join or model_join(self.model),
            "summary": summary,
            "thread_header": model_thread_header(self.model),
            "extra": {"GRPO steps": self.global_step, **card["extra"], "task": cfg.task},
        }


@dataclass
class GRPOResult:
    global_step: int
    log_history: list
    final_dir: str | None

    def series(self, key: str) -> list[float]:
        return [e[key] for e in self.log_history if key in e]


def default_runner_factory(model, tokenizer, cfg: GRPOConfig):
    """The HF fork/join runner configured from ``cfg`` (``parallel: false``: the
    sequential baseline, control tags are ordinary tokens)."""
    return Runner(
        model,
        tokenizer,
        max_new_tokens=cfg.max_new_tokens,
        max_thread_tokens=cfg.max_thread_tokens,
        max_width=cfg.max_width,
        max_depth=cfg.max_depth,
        join=cfg.join,
        batch_size=cfg.generation_batch_size,
        parallel=cfg.parallel,
        constrained=cfg.constrained,
    )


def train(cfg: GRPOConfig, **kwargs) -> GRPOResult:
    """Run GRPO with ``cfg`` (keyword arguments go to :class:`GRPOTrainer`)."""
    return GRPOTrainer(cfg, **kwargs).train()


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    return run_main(parse_args, train, argv)


__all__ = [
    "GRPOConfig",
    "GRPOResult",
    "GRPOTrainer",
    "NORMALIZATIONS",
    "PromptOrder",
    "RolloutBatch",
    "default_runner_factory",
    "group_advantages",
    "grpo_loss",
    "load_prompts",
    "main",
    "parse_args",
    "reduce_loss",
    "step_seeds",
    "token_loss",
    "train",
]
