"""Packed-graph SFT (DESIGN.md section 6): one forward pass trains every thread of a
fork/join trajectory.

    accelerate launch recipes/sft.py --config configs/sft/countdown_tiny.yaml [--field value ...]
    python recipes/sft.py --config configs/sft/countdown_tiny.yaml            # single process

Why an accelerate loop and not TRL's ``SFTTrainer``
---------------------------------------------------
Our batches are not token sequences but packed graphs: a 4D (or flex ``BlockMask``)
attention mask built per batch from the segment table, position ids that restart
at every fork, and log-probs gathered *by predecessor*
(:func:`parallel_reason.logprobs.packed_logprobs`), not by shifting labels.
``SFTTrainer`` would need a custom collator, a ``compute_loss`` override that
ignores its label shifting, padding-free/packing switched off, its own dataset
preparation (tokenization, truncation, completion-only masks) bypassed, and its
``num_items_in_batch`` logic re-checked for our loss mask: i.e. most of it
overridden, with the subtle parts (loss normalisation, resume order) hidden in
transformers' ``Trainer``. A ~330-line accelerate loop (:class:`PackedSFTTrainer`) keeps the semantics that
matter visible and tested:

* **loss** = mean negative log-likelihood per trained token over the whole
  optimizer step. Before a step, the trained-token count of all its micro-batches
  on all processes is all-reduced (``T``); each micro-batch backpropagates
  ``nll_sum * W * G / T`` (``W`` processes, ``G`` accumulation steps); accelerate
  divides by ``G`` and DDP/ZeRO/FSDP average over ``W``, so the gradient is exactly
  that of ``sum(nll) / T`` whatever the split into micro-batches and processes
  (tested: ``G=2, B=2`` equals ``G=1, B=4``);
* **exact resume**: the order of examples is a permutation seeded by
  ``(seed, epoch)`` only (:func:`parallel_reason.data.epoch_windows`); a checkpoint
  holds model, optimizer, scheduler and RNG states (``accelerator.save_state``)
  and the step counter; on resume the consumed steps of the epoch are skipped;
* the same loop runs single-process, DDP, DeepSpeed ZeRO-2/3 and FSDP, because the
  model is only ever called through its (wrapped) ``forward``.

Launching
---------
``configs/accelerate/{ddp,zero2,zero3,fsdp}.yaml`` (GPU; ``--num_processes N`` overrides
the 8 they name). On a host without GPU, ``ddp.yaml`` (torchrun launcher) gives gloo
DDP and ``zero2.yaml``/``zero3.yaml`` run DeepSpeed's CPU accelerator over gloo (both
tested with 2 processes); ``accelerate launch --cpu --num_processes 2`` starts ONE
process in accelerate 1.x unless MPI is installed; FSDP needs accelerators (on CPU the
run falls back to DDP with a warning). Set ``OMP_NUM_THREADS`` on shared CPUs:
oversubscribed OpenMP threads slow tiny-model training several times.

Completion-only loss: the loss mask of the packed graph (prompt, thread openers,
join tokens and re-read thread copies are never trained). ``mode: sequential``
trains plain causal text through the same code path (one segment per example).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import torch

from . import hub
from .files import write_json
from .config import coerce, config_field, config_from_dict, parse_config
from .config import config_help as _config_help
from .attention import collate
from .data import (DataError, Example, build_graphs, check_trajectories, corpus, epoch_windows, eval_shards,
                   load_examples, split_holdout, steps_per_epoch)
from .inputs import check_model_path, reports_input_errors
from .logprobs import packed_logprobs

log = logging.getLogger("parallel_reason.sft")

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"
ACCEL_STATE_DIR = "accelerate_state"
TINY = "tiny"


# ---------------------------------------------------------------------------
# Config


_f = config_field


@dataclass
class SFTConfig:
    """Every option of an SFT run. Load with :meth:`from_yaml` / :func:`parse_args`;
    any field can be overridden on the command line (``--field value``)."""

    # model
    model_name_or_path: str = _f(TINY, "hub id or local path; 'tiny' builds a tiny Qwen2 + BPE tokenizer "
                                       "from the training data into output_dir/base_model")
    tokenizer_name_or_path: str | None = _f(None, "defaults to model_name_or_path")
    revision: str | None = _f(None, "model revision (branch, tag or commit)")
    trust_remote_code: bool = _f(False, "allow custom modelling code from the hub")
    attn_implementation: str = _f("sdpa", "sdpa (default) | eager | flex_attention (GPU)")
    torch_dtype: str = _f("float32", "dtype the weights are loaded in: float32 | bfloat16 | float16 | auto")
    tiny_arch: str = _f("qwen2", "tiny model: qwen2 | llama")
    tiny_vocab_size: int = _f(512, "tiny model: BPE vocabulary size")
    tiny_hidden_size: int = _f(64, "tiny model: hidden size")
    tiny_layers: int = _f(2, "tiny model: layers")
    tiny_heads: int = _f(4, "tiny model: attention heads")
    tiny_kv_heads: int = _f(2, "tiny model: key/value heads")
    tiny_intermediate_size: int = _f(128, "tiny model: MLP size")

    # data
    train_data: str | None = _f(None, "JSONL/JSON/parquet/csv file, save_to_disk folder or `datasets` name")
    eval_data: str | None = _f(None, "held-out data (same forms); or use eval_fraction")
    data_config: str | None = _f(None, "`datasets` config name")
    train_split: str = _f("train", "split of train_data (`datasets` sources)")
    eval_split: str = _f("validation", "split of eval_data (`datasets` sources)")
    eval_fraction: float = _f(0.0, "hold out this fraction of train_data when eval_data is not given")
    prompt_field: str = _f("prompt", "record field holding the prompt")
    completion_field: str = _f("completion", "record field holding the completion")
    mode: str = _f("parallel", "parallel: packed fork/join graphs | sequential: plain causal SFT")
    join: str = _f("concat", "join mode of the packed graph")
    thread_header: str = _f("index", "what the runner writes after <Thread>: index ('i:') | outline (the thread's "
                                     "outline, restated at the start of each thread in the data; saved in the "
                                     "model config so the runner decodes the same way)")
    max_length: int = _f(2048, "drop examples whose packed graph (prompt included) is longer")
    max_train_samples: int | None = _f(None, "use only the first N training records")
    max_eval_samples: int | None = _f(None, "use only the first N held-out records")
    apply_chat_template: bool = _f(False, "render string prompts with the tokenizer's chat template")
    add_eos: bool = _f(True, "append EOS to every completion (trained)")
    generate_data: str | None = _f(None, "recipes/sft.py: data_gen module that writes train_data/eval_data "
                                         "when they are missing (e.g. countdown)")
    generate_train_n: int = _f(2000, "recipes/sft.py: records generated for train_data")
    generate_eval_n: int = _f(100, "recipes/sft.py: records generated for eval_data")

    # optimisation
    output_dir: str = _f("runs/sft", "checkpoints, final model, logs")
    overwrite_output_dir: bool = _f(False, "delete existing checkpoints in output_dir instead of refusing to start")
    seed: int = _f(42, "seed of initialisation, data order and dropout")
    num_train_epochs: float = _f(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps; > 0 overrides num_train_epochs")
    max_train_tokens: int = _f(0, "> 0: a compute budget instead of epochs: the steps that process about this many "
                                  "buffer tokens (prompt and re-read copies included), from the mean packed "
                                  "length; two runs on different data formats then get the same compute")
    per_device_train_batch_size: int = _f(8, "packed graphs per process per micro-batch")
    per_device_eval_batch_size: int = _f(8, "packed graphs per process per eval batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    learning_rate: float = _f(2e-5, "peak learning rate")
    lr_scheduler_type: str = _f("cosine", "transformers scheduler name: linear | cosine | constant | "
                                         "constant_with_warmup | ...")
    warmup_ratio: float = _f(0.0, "warmup as a fraction of the total steps")
    warmup_steps: int = _f(0, "warmup steps (overrides warmup_ratio when > 0)")
    weight_decay: float = _f(0.0, "AdamW weight decay (not on biases and norms)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward")
    bf16: Union[bool, str] = _f("auto", "bf16 autocast: auto (on where the GPU supports it) | true | false")
    pad_to_multiple_of: int | None = _f(None, "pad batch length to a multiple (e.g. 8 or 128 on GPU)")

    # LoRA (PEFT)
    use_peft: bool = _f(False, "train LoRA adapters instead of all weights")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_target_modules: list[str] = _f(["all-linear"], "modules that get adapters ('all-linear' or names)")
    lora_modules_to_save: list[str] = _f(["embed_tokens", "lm_head"],
                                         "modules trained in full (embeddings, so control-token rows learn)")
    merge_lora: bool = _f(True, "final model: merge the adapter into the weights (adapter kept in final/adapter)")

    # logging, evaluation, checkpoints
    logging_steps: int = _f(10, "log every N optimizer steps")
    eval_steps: int = _f(0, "evaluate every N steps (0: only at start and end)")
    eval_on_start: bool = _f(True, "evaluate before the first step")
    save_steps: int = _f(0, "checkpoint every N steps (0: none, only the final model)")
    save_total_limit: int | None = _f(2, "keep the last N checkpoints (None: all)")
    resume_from_checkpoint: str | None = _f(None, "auto (latest in output_dir, if any) | path to a checkpoint")
    report_to: list[str] = _f(["none"], "none | tensorboard | wandb (list)")
    project: str = _f("parallel-reason", "tracker project name")
    run_name: str | None = _f(None, "tracker run name (default: basename of output_dir)")
    disable_tqdm: bool = _f(False, "no progress bar")
    log_level: str = _f("info", "python logging level of the main process")
    model_card_name: str | None = _f(None, "title of the model card")

    # Hugging Face Hub
    push_to_hub: bool = _f(False, "after training, publish output_dir/final with parallel_reason.hub.push "
                                  "(token: HF_TOKEN or the stored login)")
    hub_model_id: str | None = _f(None, "hub repo of push_to_hub, namespace/name (created when missing)")
    hub_private: bool = _f(False, "push_to_hub: create the repo private")

    def validate(self) -> "SFTConfig":
        def bad(msg):
            raise ValueError(f"config: {msg}")

        if self.mode not in ("parallel", "sequential"):
            bad(f"mode must be 'parallel' or 'sequential', got {self.mode!r}")
        if self.thread_header not in ("index", "outline"):
            bad(f"thread_header must be 'index' or 'outline', got {self.thread_header!r}")
        if self.bf16 not in (True, False, "auto"):
            bad(f"bf16 must be true, false or auto, got {self.bf16!r}")
        if self.attn_implementation not in ("sdpa", "eager", "flex_attention"):
            bad(f"attn_implementation {self.attn_implementation!r} cannot take a packed-graph mask; "
                "use sdpa, eager or flex_attention (flash-attention takes no custom masks)")
        if self.torch_dtype not in ("float32", "bfloat16", "float16", "auto"):
            bad(f"torch_dtype must be float32, bfloat16, float16 or auto, got {self.torch_dtype!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_steps", "save_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0 and self.max_train_tokens <= 0:
            bad("set max_steps > 0, num_train_epochs > 0 or max_train_tokens > 0")
        if self.max_train_tokens < 0:
            bad(f"max_train_tokens must be >= 0, got {self.max_train_tokens}")
        if not 0 <= self.warmup_ratio < 1:
            bad(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_fraction and not 0 < self.eval_fraction < 1:
            bad(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            bad(f"save_total_limit must be >= 1 or None, got {self.save_total_limit}")
        trackers = [r for r in self.report_to if r != "none"]
        for r in trackers:
            if r not in ("wandb", "tensorboard"):
                bad(f"report_to: unknown tracker {r!r} (none | tensorboard | wandb)")
        if "none" in self.report_to and trackers:
            bad("report_to: 'none' cannot be combined with trackers")
        check_optimizer_fields(self)
        check_hub_fields(self)
        return self

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "SFTConfig":
        return config_from_dict(cls, d, where)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> "SFTConfig":
        return parse_args(["--config", str(path), *overrides])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_optimizer_fields(cfg) -> None:
    """``ValueError`` naming an optimizer or scheduler field out of range (shared by
    the SFT and GRPO configs: checked before any model is loaded)."""
    def bad(msg):
        raise ValueError(f"config: {msg}")

    if not math.isfinite(cfg.learning_rate) or cfg.learning_rate < 0:
        bad(f"learning_rate must be a number >= 0, got {cfg.learning_rate}")
    if not cfg.weight_decay >= 0:
        bad(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            bad(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not cfg.adam_epsilon > 0:
        bad(f"adam_epsilon must be > 0, got {cfg.adam_epsilon}")
    if not cfg.max_grad_norm >= 0:
        bad(f"max_grad_norm must be >= 0 (0: off), got {cfg.max_grad_norm}")
    from transformers import SchedulerType

    names = [t.value for t in SchedulerType]
    if cfg.lr_scheduler_type not in names:
        bad(f"lr_scheduler_type {cfg.lr_scheduler_type!r} is unknown; choose one of {', '.join(names)}")


def check_hub_fields(cfg) -> None:
    """``ValueError`` when ``push_to_hub`` is on without a valid ``hub_model_id``
    (shared by the SFT and GRPO configs: checked before any training step)."""
    if not cfg.push_to_hub:
        return
    if not cfg.hub_model_id or not str(cfg.hub_model_id).strip():
        raise ValueError("config: push_to_hub is true but hub_model_id is not set; give the hub repo "
                         "(hub_model_id: namespace/name) or set push_to_hub: false")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(cfg.hub_model_id))
    except HFValidationError as e:
        raise ValueError(f"config: hub_model_id {cfg.hub_model_id!r} is not a valid repo id: {e}") from None


def config_help() -> str:
    return _config_help(SFTConfig, "recipes/sft.py --config FILE.yaml [--field value ...]")


def parse_args(argv: Sequence[str] | None = None) -> SFTConfig:
    """``--config FILE`` then ``--field value`` overrides (:func:`parallel_reason.config.parse_config`)."""
    return parse_config(SFTConfig, argv, "recipes/sft.py --config FILE.yaml [--field value ...]")


# ---------------------------------------------------------------------------
# Pieces shared with later trainers


def resolve_mixed_precision(bf16: bool | str) -> str:
    if bf16 == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return "bf16" if bf16 else "no"


def make_accelerator(cfg: SFTConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    trackers = [r for r in cfg.report_to if r != "none"]
    acc = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(cfg.bf16),
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=os.path.join(cfg.output_dir, "logs")),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
        **_cpu_launch_kwargs(),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes but accelerate formed a group of {acc.num_processes} "
            f"({acc.distributed_type.value}): gradients would not be synchronised. FSDP needs GPUs "
            "(accelerate runs FSDP only on accelerators); on CPU use DDP (accelerate launch --multi_gpu "
            "--num_processes N) or DeepSpeed.")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type.value != "FSDP":
        log.warning("FSDP was requested but accelerate runs FSDP only on accelerators: training with %s "
                    "(gradients are synchronised, parameters are not sharded)", acc.distributed_type.value)
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None:  # fill what accelerate cannot infer without a DataLoader
        conf = ds.deepspeed_config
        if conf.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            conf["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
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


def _dtype(name: str):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


@contextlib.contextmanager
def _no_zero3_init():
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


def _build_tiny_model(cfg: "SFTConfig", texts, path: str) -> None:
    from .tiny import build_tiny

    if not texts:
        raise ValueError("model_name_or_path: tiny needs training texts to build its tokenizer")
    build_tiny(texts, path, vocab_size=cfg.tiny_vocab_size, seed=cfg.seed, arch=cfg.tiny_arch,
               hidden_size=cfg.tiny_hidden_size, layers=cfg.tiny_layers, heads=cfg.tiny_heads,
               kv_heads=cfg.tiny_kv_heads, intermediate_size=cfg.tiny_intermediate_size,
               max_positions=max(4096, cfg.max_length), attn_implementation=cfg.attn_implementation)


def load_model_and_tokenizer(cfg: SFTConfig, acc=None, texts: Sequence[str] | None = None):
    """``(tokenizer, model, base_path)``. ``model_name_or_path: tiny`` builds a tiny
    model from ``texts`` once (main process) into ``output_dir/base_model`` and loads
    it from there. Control tokens are added (embeddings resized and initialised) when
    the tokenizer lacks them; a missing pad token becomes EOS (padding is never attended)."""
    from transformers import AutoModelForCausalLM

    from .tokens import load_tokenizer

    from .tokens import add_control_tokens

    path = cfg.model_name_or_path
    if path == TINY:
        path = str(Path(cfg.output_dir) / "base_model")
        ready = (Path(path) / "config.json").exists()
        if not ready and (acc is None or acc.is_main_process):
            log.info("building the tiny model into %s", path)
            with _no_zero3_init():  # ZeRO-3 init would make this main-process-only build wait for the others
                _build_tiny_model(cfg, texts, path)
        if acc is not None:
            acc.wait_for_everyone()
    tok = load_tokenizer(cfg.tokenizer_name_or_path or path, revision=cfg.revision,
                         trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                                 dtype=_dtype(cfg.torch_dtype),
                                                 attn_implementation=cfg.attn_implementation)
    added = add_control_tokens(tok, model)
    if added:
        log.info("added control tokens %s (embeddings resized to %d rows)", added,
                 model.get_input_embeddings().weight.shape[0])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token: using EOS %r for padding", tok.eos_token)
    if tok.eos_token_id is None and cfg.add_eos:
        raise ValueError(f"tokenizer of {path} has no EOS token; set add_eos: false or use another tokenizer")
    model.config.use_cache = False
    if cfg.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        log.warning("flex_attention without a GPU runs an unfused O(L^2) reference kernel; use sdpa on CPU")
    return tok, model, path


def apply_peft(model, cfg: SFTConfig):
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    target = "all-linear" if targets == ["all-linear"] else list(targets)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    to_save = list(cfg.lora_modules_to_save) or None
    kw = {}
    if tied and to_save:
        kw["ensure_weight_tying"] = True  # one trained copy for tied embed/lm_head
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, modules_to_save=to_save, task_type="CAUSAL_LM", **kw)
    return get_peft_model(model, lcfg)


def make_optimizer(model, cfg: SFTConfig):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)


def list_checkpoints(output_dir: str | os.PathLike, complete_only: bool = True) -> list[Path]:
    """Checkpoints of a run, oldest first (complete = its trainer_state.json was written)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    cks = []
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit():
            if not complete_only or (p / STATE_NAME).exists():
                cks.append(p)
    return sorted(cks, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(cfg: SFTConfig) -> Path | None:
    r = cfg.resume_from_checkpoint
    if r is None:
        if list_checkpoints(cfg.output_dir, complete_only=False) and not cfg.overwrite_output_dir:
            raise ValueError(f"{cfg.output_dir} already holds checkpoints: set resume_from_checkpoint: auto to "
                             "continue the run, or overwrite_output_dir: true to start over")
        return None
    if r == "auto":
        cks = list_checkpoints(cfg.output_dir)
        return cks[-1] if cks else None
    p = Path(r)
    if not (p / STATE_NAME).exists() or not (p / ACCEL_STATE_DIR).is_dir():
        raise ValueError(f"resume_from_checkpoint: {r} is not a complete checkpoint (needs {STATE_NAME} and "
                         f"{ACCEL_STATE_DIR}/)")
    return p


# ---------------------------------------------------------------------------
# Trainer


@dataclass
class SFTResult:
    global_step: int
    log_history: list
    final_dir: str | None
    train_stats: dict
    eval_stats: dict | None

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.log_history if "loss" in e}

    def eval_losses(self) -> dict[int, float]:
        return {e["step"]: e["eval_loss"] for e in self.log_history if "eval_loss" in e}


class PackedSFTTrainer:
    """The accelerate loop; see the module docstring. ``train_examples`` /
    ``eval_examples`` override the config's data sources (tests, notebooks)."""

    def __init__(self, cfg: SFTConfig, train_examples: Sequence[Example] | None = None,
                 eval_examples: Sequence[Example] | None = None):
        from transformers import get_scheduler

        self.cfg = cfg.validate()
        if cfg.model_name_or_path != TINY:  # before the data, the accelerator and the weights
            check_model_path(cfg.model_name_or_path, "model_name_or_path", cfg.revision)
        if cfg.tokenizer_name_or_path:
            check_model_path(cfg.tokenizer_name_or_path, "tokenizer_name_or_path", cfg.revision)
        self.acc = acc = make_accelerator(cfg)
        setup_logging(acc, cfg.log_level)
        if cfg.push_to_hub and acc.is_main_process:
            hub.require_token()  # fail now, not after training
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        out = Path(cfg.output_dir)
        if cfg.overwrite_output_dir and cfg.resume_from_checkpoint is None and acc.is_main_process:
            for p in list_checkpoints(out, complete_only=False) + [out / "final"]:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()
        self.resume_dir = resolve_resume(cfg)
        out.mkdir(parents=True, exist_ok=True)

        # data
        if train_examples is None:
            if not cfg.train_data:
                raise ValueError("config: train_data is not set")
            train_examples = load_examples(cfg.train_data, cfg.train_split, cfg.data_config, cfg.prompt_field,
                                           cfg.completion_field, cfg.max_train_samples)
        if eval_examples is None:
            if cfg.eval_data:
                eval_examples = load_examples(cfg.eval_data, cfg.eval_split, cfg.data_config, cfg.prompt_field,
                                              cfg.completion_field, cfg.max_eval_samples)
            elif cfg.eval_fraction > 0:
                train_examples, eval_examples = split_holdout(train_examples, cfg.eval_fraction, cfg.seed)
        if cfg.mode == "parallel":  # a malformed completion is reported before the model loads
            check_trajectories(list(train_examples) + list(eval_examples or []))
        # model
        self.tokenizer, model, self.base_path = load_model_and_tokenizer(cfg, acc, corpus(train_examples))
        tok = self.tokenizer
        gkw = dict(mode=cfg.mode, join=cfg.join, max_length=cfg.max_length, eos=cfg.add_eos,
                   apply_chat_template=cfg.apply_chat_template, thread_header=cfg.thread_header)
        if cfg.mode == "parallel":  # decoding must open threads as the data did: the config carries it
            model.config.thread_header = cfg.thread_header
        self.train_graphs, self.train_stats = build_graphs(train_examples, tok, name="train", **gkw)
        self.eval_graphs, self.eval_stats = (build_graphs(eval_examples, tok, name="eval", **gkw)
                                             if eval_examples else (None, None))
        log.info("train: %s", self.train_stats.as_dict())
        if self.eval_stats:
            log.info("eval: %s", self.eval_stats.as_dict())

        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.use_peft:
            model = apply_peft(model, cfg)
            if acc.is_main_process:
                n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
                n_all = sum(p.numel() for p in model.parameters())
                log.info("LoRA: %d of %d parameters trainable (%.2f%%)", n_train, n_all, 100 * n_train / n_all)
        model.train()

        # schedule
        W, B, G = acc.num_processes, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        self.steps_per_epoch = steps_per_epoch(len(self.train_graphs), B, W, G)
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        elif cfg.max_train_tokens > 0:
            per_step = W * B * G * self.train_stats.tokens / max(self.train_stats.kept, 1)
            self.total_steps = max(1, math.ceil(cfg.max_train_tokens / per_step))
        else:
            self.total_steps = math.ceil(cfg.num_train_epochs * self.steps_per_epoch)
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * self.total_steps)

        from accelerate.utils import DistributedType

        if acc.distributed_type == DistributedType.FSDP:  # FSDP: optimizer over the wrapped parameters
            model = acc.prepare(model)
            optimizer = make_optimizer(model, cfg)
            scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                      num_training_steps=self.total_steps)
            optimizer, scheduler = acc.prepare(optimizer, scheduler)
        else:
            optimizer = make_optimizer(model, cfg)
            scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                      num_training_steps=self.total_steps)
            model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

        self.global_step = 0
        self.log_history: list[dict] = []
        self._interval = self._new_interval()
        self.trained_tokens_seen = 0
        if self.resume_dir is not None:
            self._load(self.resume_dir)

        trackers = [r for r in cfg.report_to if r != "none"]
        if trackers:
            run_name = cfg.run_name or Path(cfg.output_dir).name
            acc.init_trackers(cfg.project, config=_tracker_config(cfg),
                              init_kwargs={"wandb": {"name": run_name, "dir": cfg.output_dir}})

    # -- state -------------------------------------------------------------

    @staticmethod
    def _new_interval() -> dict:
        return {"nll": 0.0, "tokens": 0, "input_tokens": 0, "time": 0.0, "steps": 0, "grad_norm": 0.0,
                "grad_norm_n": 0}

    def _state(self) -> dict:
        return {"global_step": self.global_step, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "num_train_examples": len(self.train_graphs),
                "num_processes": self.acc.num_processes, "distributed_type": self.acc.distributed_type.value,
                "trained_tokens_seen": self.trained_tokens_seen,
                "interval": self._interval, "log_history": self.log_history, "config": self.cfg.to_dict()}

    def _load(self, ckpt: Path) -> None:
        st = json.loads((ckpt / STATE_NAME).read_text(encoding="utf-8"))
        mismatch = [(k, st.get(k), v) for k, v in (("num_train_examples", len(self.train_graphs)),
                                                   ("steps_per_epoch", self.steps_per_epoch),
                                                   ("num_processes", self.acc.num_processes))
                    if st.get(k) != v]
        if mismatch:
            raise ValueError(f"cannot resume exactly from {ckpt}: " + ", ".join(
                f"{k} was {a}, is now {b}" for k, a, b in mismatch) + " (same data and batch layout needed)")
        self.acc.load_state(str(ckpt / ACCEL_STATE_DIR))
        self.global_step = int(st["global_step"])
        self.log_history = list(st.get("log_history", []))
        self._interval = st.get("interval") or self._new_interval()
        self.trained_tokens_seen = int(st.get("trained_tokens_seen", 0))
        log.info("resumed from %s at step %d", ckpt, self.global_step)

    # -- one optimizer step ---------------------------------------------------

    def _batch(self, graphs) -> dict:
        b = collate(graphs, pad_id=self.tokenizer.pad_token_id, pad_to_multiple_of=self.cfg.pad_to_multiple_of)
        return {k: v.to(self.acc.device) for k, v in b.items()}

    def _train_step(self, window) -> dict:
        acc, model, cfg = self.acc, self.model, self.cfg
        rank, W, G = acc.process_index, acc.num_processes, cfg.gradient_accumulation_steps
        t0 = time.perf_counter()
        batches = [self._batch([self.train_graphs[i] for i in micro[rank]]) for micro in window]
        counts = torch.tensor([sum(int(b["loss_mask"].sum()) for b in batches),
                               sum(int((b["seg_id"] >= 0).sum()) for b in batches)], device=acc.device)
        counts = acc.reduce(counts, "sum")
        T, n_input = int(counts[0]), int(counts[1])
        scale = W * G / T
        nll_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        grad_norm = None
        for b in batches:
            with acc.accumulate(model):
                logp = packed_logprobs(model, b)
                nll = -(logp * b["loss_mask"]).sum()
                acc.backward(nll * scale)
                nll_sum += nll.detach().double()
                if acc.sync_gradients:
                    gn = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
                    if gn is not None:
                        grad_norm = float(gn)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:  # cannot happen with full windows; guard the invariant
            raise RuntimeError("gradient accumulation window ended without an optimizer step")
        nll_total = float(acc.reduce(nll_sum.reshape(1), "sum")[0])
        return {"loss": nll_total / T, "nll": nll_total, "tokens": T, "input_tokens": n_input,
                "grad_norm": grad_norm, "time": time.perf_counter() - t0}

    # -- evaluation ------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        acc, model = self.acc, self.model
        was_training = model.training
        model.eval()
        nll = torch.zeros((), device=acc.device, dtype=torch.float64)
        ntok = torch.zeros((), device=acc.device, dtype=torch.float64)
        for idx, w in eval_shards(len(self.eval_graphs), self.cfg.per_device_eval_batch_size,
                                  acc.process_index, acc.num_processes):
            b = self._batch([self.eval_graphs[i] for i in idx])
            wt = torch.tensor(w, device=acc.device, dtype=torch.float64)[:, None] * b["loss_mask"]
            logp = packed_logprobs(model, b).double()
            nll -= (logp * wt).sum()
            ntok += wt.sum()
        tot = acc.reduce(torch.stack([nll, ntok]), "sum")
        if was_training:
            model.train()
        return {"eval_loss": float(tot[0] / tot[1]), "eval_tokens": int(tot[1])}

    # -- checkpoints ----------------------------------------------------------

    def _card(self, metrics: dict | None = None) -> dict:
        cfg = self.cfg
        return {"model_name": cfg.model_card_name or Path(cfg.output_dir).name, "stage": "sft",
                "thread_header": cfg.thread_header if cfg.mode == "parallel" else None,
                "base_model": cfg.model_name_or_path if cfg.model_name_or_path != TINY else self.base_path,
                "datasets": [d for d in (cfg.train_data,) if d], "mode": cfg.mode, "join": cfg.join,
                "metrics": metrics or {}, "config": cfg.to_dict(),
                "extra": {"trained tokens": self.trained_tokens_seen, "optimizer steps": self.global_step,
                          "processes": self.acc.num_processes}}

    def _full_state_dict(self):
        from accelerate.utils import DistributedType

        if self.acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return self.acc.get_state_dict(self.model)  # collective: every rank
        return None

    def save_checkpoint(self) -> Path:
        acc = self.acc
        ckpt = Path(self.cfg.output_dir) / f"{CHECKPOINT_PREFIX}{self.global_step}"
        acc.wait_for_everyone()
        acc.save_state(str(ckpt / ACCEL_STATE_DIR))
        sd = self._full_state_dict()
        if acc.is_main_process:
            last = {k: v for e in self.log_history for k, v in e.items() if k in ("loss", "eval_loss")}
            hub.save_checkpoint(acc.unwrap_model(self.model), self.tokenizer, ckpt, self._card(last), state_dict=sd)
            write_json(ckpt / STATE_NAME, self._state())  # written last: marks the checkpoint complete
            self._rotate()
        acc.wait_for_everyone()
        return ckpt

    def _rotate(self) -> None:
        k = self.cfg.save_total_limit
        if k is None:
            return
        cks = list_checkpoints(self.cfg.output_dir, complete_only=False)
        for p in cks[:-k] if len(cks) > k else []:
            shutil.rmtree(p, ignore_errors=True)

    def save_final(self, metrics: dict) -> Path:
        acc = self.acc
        final = Path(self.cfg.output_dir) / "final"
        acc.wait_for_everyone()
        sd = self._full_state_dict()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            model = acc.unwrap_model(self.model)
            card = self._card(metrics)
            if self.cfg.use_peft:
                from accelerate.utils import DistributedType

                hub.save_checkpoint(model, self.tokenizer, final / "adapter", card, state_dict=sd)
                zero3 = acc.distributed_type == DistributedType.DEEPSPEED and \
                    acc.state.deepspeed_plugin.zero_stage == 3
                if self.cfg.merge_lora and not zero3:
                    hub.save_checkpoint(model, self.tokenizer, final, card, state_dict=sd, merge_peft=True)
                elif self.cfg.merge_lora:
                    log.warning("ZeRO-3: the adapter is saved in final/adapter but not merged (parameters are sharded)")
            else:
                hub.save_checkpoint(model, self.tokenizer, final, card, state_dict=sd)
            write_json(Path(self.cfg.output_dir) / STATE_NAME, self._state())
        acc.wait_for_everyone()
        return final

    # -- logging ----------------------------------------------------------------

    def _log(self, entry: dict) -> None:
        self.log_history.append(entry)
        trackers = [r for r in self.cfg.report_to if r != "none"]
        if trackers:
            self.acc.log({(k if k.startswith("eval") else f"train/{k}"): v for k, v in entry.items()
                          if k != "step" and v is not None}, step=entry["step"])
        if self.acc.is_main_process:
            log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))

    def _flush_interval(self) -> None:
        iv = self._interval
        if not iv["steps"]:
            return
        lr = self.scheduler.get_last_lr()[0]
        self._log({"step": self.global_step, "epoch": round(self.global_step / self.steps_per_epoch, 4),
                   "loss": iv["nll"] / iv["tokens"], "lr": lr,
                   "grad_norm": iv["grad_norm"] / iv["grad_norm_n"] if iv["grad_norm_n"] else None,
                   "trained_tokens_per_s": iv["tokens"] / iv["time"] if iv["time"] > 0 else None,
                   "tokens_per_s": iv["input_tokens"] / iv["time"] if iv["time"] > 0 else None,
                   "trained_tokens": self.trained_tokens_seen})
        self._interval = self._new_interval()

    # -- loop -----------------------------------------------------------------------

    def train(self) -> SFTResult:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        W, B, G = acc.num_processes, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        log.info("training (%s, %s): %d examples, %d processes x %d graphs x %d accumulation = %d graphs per "
                 "step, %d steps per epoch, %d steps", acc.distributed_type.value, acc.mixed_precision,
                 len(self.train_graphs), W, B, G, W * B * G, self.steps_per_epoch, self.total_steps)
        if self.eval_graphs is not None and cfg.eval_on_start and self.global_step == 0:
            self._log({"step": 0, **self.evaluate()})
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="sft", dynamic_ncols=True,
                   disable=cfg.disable_tqdm or not acc.is_local_main_process)
        last_eval_step = 0 if cfg.eval_on_start else -1
        epoch = self.global_step // self.steps_per_epoch
        while self.global_step < self.total_steps:
            windows = epoch_windows(len(self.train_graphs), B, W, G, cfg.seed, epoch)
            skip = self.global_step - epoch * self.steps_per_epoch  # steps of this epoch already done
            for window in windows[skip:]:
                if self.global_step >= self.total_steps:
                    break
                r = self._train_step(window)
                self.global_step += 1
                self.trained_tokens_seen += r["tokens"]
                iv = self._interval
                iv["nll"] += r["nll"]
                iv["tokens"] += r["tokens"]
                iv["input_tokens"] += r["input_tokens"]
                iv["time"] += r["time"]
                iv["steps"] += 1
                if r["grad_norm"] is not None:
                    iv["grad_norm"] += r["grad_norm"]
                    iv["grad_norm_n"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{r['loss']:.4f}")
                if self.global_step % cfg.logging_steps == 0:
                    self._flush_interval()
                if self.eval_graphs is not None and cfg.eval_steps and self.global_step % cfg.eval_steps == 0:
                    self._log({"step": self.global_step, **self.evaluate()})
                    last_eval_step = self.global_step
                if cfg.save_steps and self.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
            epoch += 1
        bar.close()
        self._flush_interval()
        metrics = {}
        if self.eval_graphs is not None:
            if last_eval_step != self.global_step:
                self._log({"step": self.global_step, **self.evaluate()})
            metrics["eval_loss"] = self.log_history[-1]["eval_loss"]
        losses = [e["loss"] for e in self.log_history if "loss" in e]
        if losses:
            metrics["train_loss"] = losses[-1]
        final = self.save_final(metrics)
        acc.end_training()
        if cfg.push_to_hub and acc.is_main_process:  # after the last barrier: other ranks are not kept waiting
            hub.push_trained(final, cfg.hub_model_id, private=cfg.hub_private)
        return SFTResult(global_step=self.global_step, log_history=list(self.log_history), final_dir=str(final),
                         train_stats=self.train_stats.as_dict(),
                         eval_stats=self.eval_stats.as_dict() if self.eval_stats else None)


def _tracker_config(cfg: SFTConfig) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        out[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def train(cfg: SFTConfig, train_examples: Sequence[Example] | None = None,
          eval_examples: Sequence[Example] | None = None) -> SFTResult:
    """Run SFT with ``cfg`` and return its :class:`SFTResult` (final model in ``output_dir/final``)."""
    return PackedSFTTrainer(cfg, train_examples, eval_examples).train()


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except (ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train(cfg)
    return 0


__all__ = ["SFTConfig", "SFTResult", "PackedSFTTrainer", "parse_args", "train", "main", "coerce",
           "check_hub_fields", "load_model_and_tokenizer", "apply_peft", "make_accelerator", "list_checkpoints"]
