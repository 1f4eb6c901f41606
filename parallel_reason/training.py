"""The training core shared by the SFT and GRPO trainers.

:class:`TrainConfig` holds the fields both trainers have (model, LoRA, data sources,
optimizer, checkpoints, logging, hub); :class:`Trainer` owns the accelerator, the
optimizer and schedule, resume, checkpoints and their rotation, the final save,
trackers and logging. A trainer adds only its own step, evaluation and state.
See ``docs/design.md`` (trainers).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hub
from .config import config_field, config_from_dict, parse_config
from .files import write_json
from .inputs import check_model_path
from .layout import JOIN_MODES
from .wrappers import is_peft, unwrap_model

log = logging.getLogger("parallel_reason.training")

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"
ACCEL_STATE_DIR = "accelerate_state"
FINAL_DIR = "final"
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")
TRACKERS = ("wandb", "tensorboard")

_f = config_field


# ---------------------------------------------------------------------------
# Config


@dataclass
class TrainConfig:
    """The fields every trainer has. :class:`parallel_reason.sft.SFTConfig` and
    :class:`parallel_reason.grpo.GRPOConfig` extend it (and change some defaults)."""

    # model
    model_name_or_path: str = _f("", "hub id or local path of the model")
    tokenizer_name_or_path: str | None = _f(None, "defaults to model_name_or_path")
    revision: str | None = _f(None, "model revision (branch, tag or commit)")
    trust_remote_code: bool = _f(False, "allow custom modelling code from the hub")
    attn_implementation: str = _f(
        "sdpa",
        "attention of the training forward (it takes the packed-graph mask): sdpa | eager | flex_attention (GPU)",
    )
    torch_dtype: str = _f("float32", "dtype the weights are loaded in: float32 | bfloat16 | float16 | auto")
    bf16: bool | str = _f(
        "auto", "bf16 autocast of the training forward: auto (on where the GPU supports it) | true | false"
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward")

    # LoRA (PEFT)
    use_peft: bool = _f(False, "train LoRA adapters instead of all weights")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_target_modules: list[str] = _f(["all-linear"], "modules that get adapters ('all-linear' or names)")
    lora_modules_to_save: list[str] = _f(
        ["embed_tokens", "lm_head"], "modules trained in full (embeddings, so control-token rows learn)"
    )
    merge_lora: bool = _f(True, "final model: merge the adapter into the weights (adapter kept in final/adapter)")

    # data
    train_data: str | None = _f(None, "JSONL/JSON/parquet/csv file, save_to_disk folder or `datasets` name")
    eval_data: str | None = _f(None, "held-out data (same forms)")
    data_config: str | None = _f(None, "`datasets` config name")
    train_split: str = _f("train", "split of train_data (`datasets` sources)")
    eval_split: str = _f("validation", "split of eval_data (`datasets` sources)")
    prompt_field: str = _f("prompt", "record field holding the prompt (text or chat messages)")
    apply_chat_template: bool = _f(False, "render string prompts with the tokenizer's chat template")
    max_train_samples: int | None = _f(None, "use only the first N training records")
    max_eval_samples: int | None = _f(None, "use only the first N held-out records")
    join: str | None = _f(
        "concat",
        "join mode of the packed graph and the runner: concat (threads 2..n re-read "
        "after thread 1) | tree (the continuation sees every thread where it is) | summary "
        "(it sees each thread's opener and <Result> only)",
    )
    generate_data: str | None = _f(
        None, "recipes: data_gen module that writes train_data/eval_data when they are missing (e.g. countdown)"
    )
    generate_train_n: int = _f(2000, "recipes: records generated for train_data")
    generate_eval_n: int = _f(100, "recipes: records generated for eval_data")

    # optimizer
    learning_rate: float = _f(2e-5, "peak learning rate")
    lr_scheduler_type: str = _f(
        "cosine", "transformers scheduler name: linear | cosine | constant | constant_with_warmup | ..."
    )
    warmup_steps: int = _f(0, "warmup optimizer steps")
    weight_decay: float = _f(0.0, "AdamW weight decay (not on biases and norms)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")

    # run, logging, evaluation, checkpoints
    output_dir: str = _f("runs/train", "checkpoints, final model, logs")
    overwrite_output_dir: bool = _f(False, "delete existing checkpoints in output_dir instead of refusing to start")
    seed: int = _f(42, "seed of initialisation, data order, dropout and sampling")
    max_steps: int = _f(-1, "training steps")
    logging_steps: int = _f(10, "log every N steps")
    eval_steps: int = _f(0, "evaluate every N steps (0: only at start and end)")
    eval_on_start: bool = _f(True, "evaluate before the first step (when there is held-out data)")
    save_steps: int = _f(0, "checkpoint every N steps (0: none, only the final model)")
    save_total_limit: int | None = _f(2, "keep the last N checkpoints (None: all)")
    resume_from_checkpoint: str | None = _f(None, "auto (latest in output_dir, if any) | path to a checkpoint")
    report_to: list[str] = _f(["none"], "none | tensorboard | wandb (list)")
    project: str = _f("parallel-reason", "tracker project name")
    run_name: str | None = _f(None, "tracker run name (default: basename of output_dir)")
    log_level: str = _f("info", "python logging level of the main process")
    model_card_name: str | None = _f(None, "title of the model card")

    # Hugging Face Hub
    push_to_hub: bool = _f(
        False,
        "after training, publish output_dir/final with parallel_reason.hub.push (token: HF_TOKEN or the stored login)",
    )
    hub_model_id: str | None = _f(None, "hub repo of push_to_hub, namespace/name (created when missing)")
    hub_private: bool = _f(False, "push_to_hub: create the repo private")

    #: ``recipes/<name>.py``: the usage line of ``--help``
    recipe = "recipes/train.py"

    def validate(self):
        """``ValueError`` naming the first common field out of range; subclasses check
        their own fields, then call this. Returns ``self``."""
        if self.join is not None and self.join not in JOIN_MODES:
            _bad(f"join mode {self.join!r} is not available; choose one of {', '.join(JOIN_MODES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            _bad(
                f"attn_implementation {self.attn_implementation!r} cannot take a packed-graph mask; "
                "use sdpa, eager or flex_attention (flash-attention takes no custom masks)"
            )
        if self.torch_dtype not in TORCH_DTYPES:
            _bad(f"torch_dtype must be float32, bfloat16, float16 or auto, got {self.torch_dtype!r}")
        if self.bf16 not in (True, False, "auto"):
            _bad(f"bf16 must be true, false or auto, got {self.bf16!r}")
        if self.logging_steps < 1:
            _bad(f"logging_steps must be >= 1, got {self.logging_steps}")
        for name in ("eval_steps", "save_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                _bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            _bad(f"save_total_limit must be >= 1 or None, got {self.save_total_limit}")
        for r in self.trackers:
            if r not in TRACKERS:
                _bad(f"report_to: unknown tracker {r!r} (none | tensorboard | wandb)")
        if "none" in self.report_to and self.trackers:
            _bad("report_to: 'none' cannot be combined with trackers")
        check_optimizer_fields(self)
        check_hub_fields(self)
        return self

    @property
    def trackers(self) -> list[str]:
        return [r for r in self.report_to if r != "none"]

    @classmethod
    def usage(cls) -> str:
        return f"{cls.recipe} --config FILE.yaml [--field value ...]"

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None):
        """``--config FILE`` then ``--field value`` overrides (:func:`parallel_reason.config.parse_config`)."""
        return parse_config(cls, argv, cls.usage())

    @classmethod
    def from_dict(cls, d: dict, where: str = "config"):
        return config_from_dict(cls, d, where)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()):
        return cls.parse(["--config", str(path), *overrides])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def tracker_config(self) -> dict:
        """The config as flat scalars (what trackers store)."""
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self.to_dict().items()}


def _bad(msg: str):
    raise ValueError(f"config: {msg}")


def check_optimizer_fields(cfg: TrainConfig) -> None:
    """``ValueError`` naming an optimizer or scheduler field out of range (checked
    before any model is loaded)."""
    if not math.isfinite(cfg.learning_rate) or cfg.learning_rate < 0:
        _bad(f"learning_rate must be a number >= 0, got {cfg.learning_rate}")
    if not cfg.weight_decay >= 0:
        _bad(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            _bad(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not cfg.adam_epsilon > 0:
        _bad(f"adam_epsilon must be > 0, got {cfg.adam_epsilon}")
    if not cfg.max_grad_norm >= 0:
        _bad(f"max_grad_norm must be >= 0 (0: off), got {cfg.max_grad_norm}")
    from transformers import SchedulerType

    names = [t.value for t in SchedulerType]
    if cfg.lr_scheduler_type not in names:
        _bad(f"lr_scheduler_type {cfg.lr_scheduler_type!r} is unknown; choose one of {', '.join(names)}")


def check_hub_fields(cfg: TrainConfig) -> None:
    """``ValueError`` when ``push_to_hub`` is on without a valid ``hub_model_id``
    (checked before any training step)."""
    if not cfg.push_to_hub:
        return
    if not cfg.hub_model_id or not str(cfg.hub_model_id).strip():
        raise ValueError(
            "config: push_to_hub is true but hub_model_id is not set; give the hub repo "
            "(hub_model_id: namespace/name) or set push_to_hub: false"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(cfg.hub_model_id))
    except HFValidationError as e:
        raise ValueError(f"config: hub_model_id {cfg.hub_model_id!r} is not a valid repo id: {e}") from None


# ---------------------------------------------------------------------------
# Accelerator, model, optimizer


def resolve_mixed_precision(bf16: bool | str) -> str:
    if bf16 == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return "bf16" if bf16 else "no"


def make_accelerator(cfg: TrainConfig, gradient_accumulation_steps: int = 1, micro_batch_size: int = 1):
    """The run's ``Accelerator``: ``gradient_accumulation_steps`` micro-batches of
    ``micro_batch_size`` per optimizer step; refuses a process group smaller than the
    launch (gradients would not be synchronised)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    acc = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(cfg.bf16),
        log_with=cfg.trackers or None,
        project_config=ProjectConfiguration(
            project_dir=cfg.output_dir, logging_dir=os.path.join(cfg.output_dir, "logs")
        ),
        step_scheduler_with_optimizer=False,  # the trainers step it once per optimizer step
        **_cpu_launch_kwargs(),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes but accelerate formed a group of {acc.num_processes} "
            f"({acc.distributed_type.value}): gradients would not be synchronised. FSDP needs GPUs "
            "(accelerate runs FSDP only on accelerators); on CPU use DDP (accelerate launch --multi_gpu "
            "--num_processes N) or DeepSpeed."
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type.value != "FSDP":
        log.warning(
            "FSDP was requested but accelerate runs FSDP only on accelerators: training with %s "
            "(gradients are synchronised, parameters are not sharded)",
            acc.distributed_type.value,
        )
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None:  # fill what accelerate cannot infer without a DataLoader
        conf = ds.deepspeed_config
        if conf.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            conf["train_micro_batch_size_per_gpu"] = micro_batch_size
        if conf.get("gradient_clipping", "auto") == "auto":
            conf["gradient_clipping"] = cfg.max_grad_norm
    return acc


def _no_accelerator() -> bool:
    acc_api = getattr(torch, "accelerator", None)
    return not (acc_api.is_available() if acc_api is not None else torch.cuda.is_available())


def _cpu_launch_kwargs() -> dict:
    """Accelerator arguments for several processes on a host without GPU.

    * DDP (torchrun / ``accelerate launch --multi_gpu``): accelerate needs ``cpu=True`` to
      form a gloo group (its ``--cpu`` flag alone starts one process unless MPI is used).
    * DeepSpeed: accelerate turns DeepSpeed off under ``cpu=True``, and without a backend
      it believes it runs one process; naming the ``gloo`` backend lets DeepSpeed's CPU
      accelerator form the group and accelerate read the real world size."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not _no_accelerator():
        return {}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        from accelerate.utils import InitProcessGroupKwargs

        return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": True}


def setup_logging(acc, level: str = "info") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO) if acc.is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=lvl)
    logging.getLogger("parallel_reason").setLevel(lvl)


@contextlib.contextmanager
def no_zero3_init():
    """Build a model with plain tensors even while a ZeRO-3 config is registered."""
    try:
        import transformers.integrations.deepspeed as hf_ds
    except ImportError:  # pragma: no cover
        yield
        return
    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_pretrained(cfg: TrainConfig, path: str, model=None, tokenizer=None):
    """``(tokenizer, model, added)``: what is not given is loaded from ``path``
    (tokenizer: ``tokenizer_name_or_path`` first); ``added`` lists the control tokens
    the tokenizer lacked (embeddings resized and initialised)."""
    from transformers import AutoModelForCausalLM

    from .tokens import add_control_tokens, load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(
            cfg.tokenizer_name_or_path or path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=TORCH_DTYPES[cfg.torch_dtype],
            attn_implementation=cfg.attn_implementation,
        )
    return tokenizer, model, add_control_tokens(tokenizer, model)


def apply_peft(model, cfg: TrainConfig):
    """``model`` with LoRA adapters as configured (tied embeddings stay tied)."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    target = "all-linear" if targets == ["all-linear"] else list(targets)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    to_save = list(cfg.lora_modules_to_save) or None
    kw: dict[str, Any] = {}
    if tied and to_save:
        kw["ensure_weight_tying"] = True  # one trained copy for tied embed/lm_head
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        modules_to_save=to_save,
        task_type="CAUSAL_LM",
        **kw,
    )
    model = get_peft_model(model, lcfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("LoRA: %d of %d parameters trainable (%.2f%%)", n_train, n_all, 100 * n_train / n_all)
    return model


def make_optimizer(model, cfg: TrainConfig):
    """AdamW; no weight decay on biases and norms."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)


# ---------------------------------------------------------------------------
# Checkpoints on disk


def list_checkpoints(output_dir: str | os.PathLike, complete_only: bool = True) -> list[Path]:
    """Checkpoints of a run, oldest first (complete = its trainer_state.json was written)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    cks = []
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit():
            if not complete_only or (p / STATE_NAME).exists():
                cks.append(p)
    return sorted(cks, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (``resume_from_checkpoint``: none, ``auto`` or a
    path); refuses to start over a run's checkpoints unless ``overwrite_output_dir``."""
    r = cfg.resume_from_checkpoint
    if r is None:
        if list_checkpoints(cfg.output_dir, complete_only=False) and not cfg.overwrite_output_dir:
            raise ValueError(
                f"{cfg.output_dir} already holds checkpoints: set resume_from_checkpoint: auto to "
                "continue the run, or overwrite_output_dir: true to start over"
            )
        return None
    if r == "auto":
        cks = list_checkpoints(cfg.output_dir)
        return cks[-1] if cks else None
    p = Path(r)
    if not (p / STATE_NAME).exists() or not (p / ACCEL_STATE_DIR).is_dir():
        raise ValueError(
            f"resume_from_checkpoint: {r} is not a complete checkpoint (needs {STATE_NAME} and {ACCEL_STATE_DIR}/)"
        )
    return p


def save_model(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    card: dict | None = None,
    state_dict: dict | None = None,
    merge_peft: bool = False,
    max_shard_size: str = "5GB",
) -> Path:
    """Write ``out_dir``: weights as safetensors, tokenizer, generation config and a
    ``README.md`` model card (:func:`parallel_reason.hub.render_model_card`). Returns
    ``out_dir``.

    ``merge_peft`` merges a PEFT adapter into the base weights *in place* (use it for
    the final model; intermediate checkpoints keep the adapter only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    if is_peft(model):
        if merge_peft:
            if state_dict is not None:
                model.load_state_dict(state_dict, strict=False)  # gathered weights (ZeRO-3/FSDP)
            model = model.merge_and_unload()
            state_dict = None
        else:
            model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
            base = model.get_base_model()
            _save_generation_config(base, out)
            tokenizer.save_pretrained(out)
            (out / hub.CARD_NAME).write_text(hub.render_model_card(card or {}, tokenizer), encoding="utf-8")
            return out
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = True  # trainers switch the KV cache off; the saved model decodes with it
    try:
        # keys of a gathered state dict (ZeRO-3/FSDP) match the unwrapped model's own names
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True, max_shard_size=max_shard_size)
    finally:
        model.config.use_cache = use_cache
    _save_generation_config(model, out)
    tokenizer.save_pretrained(out)
    (out / hub.CARD_NAME).write_text(hub.render_model_card(card or {}, tokenizer), encoding="utf-8")
    return out


def _save_generation_config(model, out: Path) -> None:
    """Generation config with the tokenizer's EOS/pad ids (save_pretrained may skip it)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        from transformers import GenerationConfig

        gc = GenerationConfig.from_model_config(model.config)
    cfg = model.config
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(gc, key, None) is None and getattr(cfg, key, None) is not None:
            setattr(gc, key, getattr(cfg, key))
    gc.save_pretrained(out)


# ---------------------------------------------------------------------------
# The base trainer


class Trainer:
    """Accelerate plumbing of a training run. A subclass calls :meth:`setup` first,
    then :meth:`prepare` with its model, and implements :meth:`state` (what a
    checkpoint stores besides the accelerate state), :meth:`card` (the model card)
    and its own loop, which ends with :meth:`save_final` and :meth:`finish`."""

    #: files of ``output_dir`` (besides checkpoints and ``final``) a fresh start deletes
    run_files: tuple[str, ...] = ()
    #: the final LoRA merge works on a copy of the model (True) or in place (False)
    merge_copy: bool = True
    #: the run's tokenizer, set by the subclass (saved with every checkpoint)
    tokenizer: Any

    def setup(
        self, cfg: TrainConfig, gradient_accumulation_steps: int, micro_batch_size: int, check_model: bool = True
    ) -> None:
        """Validate ``cfg``, check the model path, form the accelerator, seed, and
        clear (``overwrite_output_dir``) or find the checkpoint to resume from."""
        self.cfg = cfg = cfg.validate()
        if check_model:  # before the data, the accelerator and the weights
            check_model_path(cfg.model_name_or_path, "model_name_or_path", cfg.revision)
        if cfg.tokenizer_name_or_path:
            check_model_path(cfg.tokenizer_name_or_path, "tokenizer_name_or_path", cfg.revision)
        self.acc = acc = make_accelerator(cfg, gradient_accumulation_steps, micro_batch_size)
        setup_logging(acc, cfg.log_level)
        if cfg.push_to_hub and acc.is_main_process:
            hub.require_token()  # fail now, not after training
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self.out = out = Path(cfg.output_dir)
        if cfg.overwrite_output_dir and cfg.resume_from_checkpoint is None and acc.is_main_process:
            for p in list_checkpoints(out, complete_only=False) + [out / FINAL_DIR]:
                shutil.rmtree(p, ignore_errors=True)
            for name in self.run_files:
                (out / name).unlink(missing_ok=True)
        acc.wait_for_everyone()
        self.resume_dir = resolve_resume(cfg)
        out.mkdir(parents=True, exist_ok=True)
        self.global_step = 0
        self.log_history: list[dict] = []

    def prepare(self, model, total_steps: int, warmup_steps: int, make_opt: Callable | None = None) -> None:
        """Gradient checkpointing, then the optimizer (``make_opt(model)``, default
        AdamW) and a ``lr_scheduler_type`` schedule of ``total_steps``, prepared with
        the model (under FSDP the optimizer is built over the wrapped parameters)."""
        from accelerate.utils import DistributedType
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.acc
        make_opt = make_opt or (lambda m: make_optimizer(m, cfg))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if is_peft(model) and hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False
        model.train()

        def schedule(opt):
            return get_scheduler(
                cfg.lr_scheduler_type, opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps
            )

        if acc.distributed_type == DistributedType.FSDP:
            model = acc.prepare(model)
            optimizer = make_opt(model)
            optimizer, scheduler = acc.prepare(optimizer, schedule(optimizer))
        else:
            optimizer = make_opt(model)
            model, optimizer, scheduler = acc.prepare(model, optimizer, schedule(optimizer))
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def backward_and_step(self, loss) -> float | None:
        """Backward of one micro-batch (inside ``accelerator.accumulate``); at the end of
        an accumulation window clip, step the optimizer and the schedule. Returns the
        gradient norm before clipping when it was computed."""
        acc, cfg = self.acc, self.cfg
        acc.backward(loss)
        grad_norm = None
        if acc.sync_gradients and cfg.max_grad_norm > 0:
            gn = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            grad_norm = None if gn is None else float(gn)
        self.optimizer.step()
        if acc.sync_gradients:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def init_trackers(self) -> None:
        cfg = self.cfg
        if cfg.trackers:
            run_name = cfg.run_name or self.out.name
            self.acc.init_trackers(
                cfg.project,
                config=cfg.tracker_config(),
                init_kwargs={"wandb": {"name": run_name, "dir": cfg.output_dir}},
            )

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    # -- what a subclass provides -------------------------------------------------

    def state(self) -> dict:
        """JSON-able trainer state beyond the step counter and the log (checked or
        restored on resume)."""
        return {}

    def card(self, metrics: dict | None = None) -> dict:
        """The model card fields (:func:`parallel_reason.hub.render_model_card`) every
        trainer writes; a trainer adds its stage, mode and the rest."""
        cfg = self.cfg
        return {
            "model_name": cfg.model_card_name or self.out.name,
            "base_model": cfg.model_name_or_path or None,
            "datasets": [d for d in (cfg.train_data,) if d],
            "join": cfg.join,
            "metrics": metrics or {},
            "config": cfg.to_dict(),
            "extra": {"processes": self.acc.num_processes},
        }

    def checkpoint_metrics(self) -> dict:
        """Metrics written into an intermediate checkpoint's card."""
        return {}

    def report(self, entry: dict) -> None:
        """Where a log entry goes besides the history and the trackers (main process)."""
        log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))

    # -- logging ------------------------------------------------------------------

    def _log(self, entry: dict) -> None:
        self.log_history.append(entry)
        if self.cfg.trackers:
            self.acc.log(
                {
                    (k if k.startswith("eval") else f"train/{k}"): v
                    for k, v in entry.items()
                    if k != "step" and v is not None
                },
                step=entry["step"],
            )
        if self.acc.is_main_process:
            self.report(entry)

    # -- checkpoints ----------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "global_step": self.global_step,
            "num_processes": self.acc.num_processes,
            "distributed_type": self.acc.distributed_type.value,
            **self.state(),
            "log_history": self.log_history,
            "config": self.cfg.to_dict(),
        }

    def _full_state_dict(self):
        from accelerate.utils import DistributedType

        if self.acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return self.acc.get_state_dict(self.model)  # collective: every rank
        return None

    def save_checkpoint(self) -> Path:
        """``checkpoint-N/``: the accelerate state (model, optimizer, scheduler, RNG of
        every process) in ``accelerate_state/``, the model with its card, and
        ``trainer_state.json``, written last: it marks the checkpoint complete."""
        acc = self.acc
        ckpt = self.out / f"{CHECKPOINT_PREFIX}{self.global_step}"
        acc.wait_for_everyone()
        acc.save_state(str(ckpt / ACCEL_STATE_DIR))
        sd = self._full_state_dict()
        if acc.is_main_process:
            save_model(self.unwrapped, self.tokenizer, ckpt, self.card(self.checkpoint_metrics()), state_dict=sd)
            write_json(ckpt / STATE_NAME, self._state())
            self._rotate()
        acc.wait_for_everyone()
        return ckpt

    def _rotate(self) -> None:
        k = self.cfg.save_total_limit
        if k is None:
            return
        cks = list_checkpoints(self.out, complete_only=False)
        for p in cks[:-k] if len(cks) > k else []:
            shutil.rmtree(p, ignore_errors=True)

    def load_checkpoint(self, ckpt: Path, expect: dict, what: str) -> dict:
        """Restore the accelerate state, step and log of ``ckpt`` after checking that
        the stored values of ``expect`` and the process count match (``what`` must stay
        the same for an exact resume). Returns the stored state."""
        st = json.loads((ckpt / STATE_NAME).read_text(encoding="utf-8"))
        expect = {**expect, "num_processes": self.acc.num_processes}
        mismatch = [(k, st.get(k), v) for k, v in expect.items() if st.get(k) != v]
        if mismatch:
            raise ValueError(
                f"cannot resume exactly from {ckpt}: "
                + ", ".join(f"{k} was {a}, is now {b}" for k, a, b in mismatch)
                + f" (same {what} needed)"
            )
        self.acc.load_state(str(ckpt / ACCEL_STATE_DIR))
        self.global_step = int(st["global_step"])
        self.log_history = [e for e in st.get("log_history", []) if e.get("step", 0) <= self.global_step]
        log.info("resumed from %s at step %d", ckpt, self.global_step)
        return st

    def save_final(self, metrics: dict | None = None) -> Path:
        """``output_dir/final``: weights (LoRA: the adapter in ``final/adapter`` and,
        with ``merge_lora``, the merged model in ``final``), tokenizer and model card;
        the trainer state beside it."""
        from accelerate.utils import DistributedType

        acc = self.acc
        final = self.out / FINAL_DIR
        acc.wait_for_everyone()
        sd = self._full_state_dict()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            model = self.unwrapped
            card = self.card(metrics)
            if is_peft(model):
                save_model(model, self.tokenizer, final / "adapter", card, state_dict=sd)
                zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
                if self.cfg.merge_lora and not zero3:
                    # a copy when the trainer still uses the model afterwards (GRPO), else in place (memory)
                    merged = copy.deepcopy(model) if self.merge_copy else model
                    save_model(merged, self.tokenizer, final, card, state_dict=sd, merge_peft=True)
                elif self.cfg.merge_lora:
                    log.warning("ZeRO-3: the adapter is saved in final/adapter but not merged (parameters are sharded)")
            else:
                save_model(model, self.tokenizer, final, card, state_dict=sd)
            write_json(self.out / STATE_NAME, self._state())
        acc.wait_for_everyone()
        return final

    def finish(self, final: Path | None) -> None:
        """End the trackers and the process group; then publish ``final`` when
        ``push_to_hub`` (main process, after the last barrier)."""
        self.acc.end_training()
        if final is not None and self.cfg.push_to_hub and self.acc.is_main_process:
            hub.push_trained(final, self.cfg.hub_model_id, private=self.cfg.hub_private)


def run_main(
    parse: Callable, train: Callable, argv: Sequence[str] | None = None, prepare: Callable | None = None
) -> int:
    """A trainer's command line: parse the config (a bad one: one ``error:`` line, exit
    status 2), ``prepare(cfg)`` (recipes: generate missing data), train, and say where
    the final model is (rank 0)."""
    from .data import DataError
    from .launch import launcher_rank

    try:
        cfg = parse(argv)
    except (ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if prepare is not None:
        prepare(cfg)
    result = train(cfg)
    if result.final_dir and launcher_rank() == 0:
        print(f"final model: {result.final_dir}", file=sys.stderr)
    return 0


def exit_process(code: int) -> None:
    """Exit a recipe with ``code``. In a multi-process launch, after training has ended
    (files written, trackers and process group closed), skip the interpreter's teardown:
    a rank torn down by it occasionally aborted ("terminate called without an active
    exception") after a successful DeepSpeed run, turning success into a failed launch."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    raise SystemExit(code)


__all__ = [
    "TrainConfig",
    "Trainer",
    "make_accelerator",
    "load_pretrained",
    "apply_peft",
    "make_optimizer",
    "list_checkpoints",
    "resolve_resume",
    "check_optimizer_fields",
    "check_hub_fields",
    "exit_process",
    "run_main",
    "save_model",
    "CHECKPOINT_PREFIX",
    "STATE_NAME",
    "ACCEL_STATE_DIR",
    "FINAL_DIR",
    "TORCH_DTYPES",
]
