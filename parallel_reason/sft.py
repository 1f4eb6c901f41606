"""Packed-graph SFT: one forward pass trains every thread of a fork/join trajectory
(:class:`PackedSFTTrainer`, a small accelerate loop, and :class:`SFTConfig`).

    accelerate launch recipes/sft.py --config configs/sft/countdown_tiny.yaml [--field value ...]
    python recipes/sft.py --config configs/sft/countdown_tiny.yaml            # single process

Loss normalisation, exact resume, launching (DDP, ZeRO, FSDP, CPU) and why not
TRL's ``SFTTrainer``: docs/design.md#trainers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .attention import collate
from .config import config_field
from .config import config_help as config_help_of
from .data import (
    Example,
    GraphStats,
    build_graphs,
    check_trajectories,
    corpus,
    epoch_windows,
    eval_shards,
    load_examples,
    split_holdout,
    steps_per_epoch,
)
from .inputs import reports_input_errors
from .layout import PackedGraph
from .logprobs import packed_logprobs
from .training import TrainConfig, Trainer, apply_peft, load_pretrained, no_zero3_init, run_main

log = logging.getLogger("parallel_reason.sft")

TINY = "tiny"


# ---------------------------------------------------------------------------
# Config


_f = config_field


@dataclass
class SFTConfig(TrainConfig):
    """Every option of an SFT run: the common ones of :class:`TrainConfig` and SFT's
    own. Load with :func:`parse_args`; any field can be overridden on the command
    line (``--field value``)."""

    recipe = "recipes/sft.py"

    # common fields with SFT's defaults
    model_name_or_path: str = _f(
        TINY,
        "hub id or local path; 'tiny' builds a tiny Qwen2 + BPE tokenizer "
        "from the training data into output_dir/base_model",
    )
    output_dir: str = _f("runs/sft", "checkpoints, final model, logs")
    eval_data: str | None = _f(None, "held-out data (same forms); or use eval_fraction")
    max_steps: int = _f(-1, "optimizer steps; > 0 overrides num_train_epochs")
    warmup_steps: int = _f(0, "warmup steps (overrides warmup_ratio when > 0)")

    # tiny model
    tiny_arch: str = _f("qwen2", "tiny model: qwen2 | llama")
    tiny_vocab_size: int = _f(512, "tiny model: BPE vocabulary size")
    tiny_hidden_size: int = _f(64, "tiny model: hidden size")
    tiny_layers: int = _f(2, "tiny model: layers")
    tiny_heads: int = _f(4, "tiny model: attention heads")
    tiny_kv_heads: int = _f(2, "tiny model: key/value heads")
    tiny_intermediate_size: int = _f(128, "tiny model: MLP size")

    # data
    eval_fraction: float = _f(0.0, "hold out this fraction of train_data when eval_data is not given")
    completion_field: str = _f("completion", "record field holding the completion")
    mode: str = _f("parallel", "parallel: packed fork/join graphs | sequential: plain causal SFT")
    thread_header: str = _f(
        "index",
        "what the runner writes after <Thread>: index ('i:') | outline (the thread's "
        "outline, restated at the start of each thread in the data; saved in the "
        "model config so the runner decodes the same way)",
    )
    max_length: int = _f(2048, "drop examples whose packed graph (prompt included) is longer")
    add_eos: bool = _f(True, "append EOS to every completion (trained)")

    # optimisation
    num_train_epochs: float = _f(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_train_tokens: int = _f(
        0,
        "> 0: a compute budget instead of epochs: the steps that process about this many "
        "buffer tokens (prompt and re-read copies included), from the mean packed "
        "length; two runs on different data formats then get the same compute",
    )
    per_device_train_batch_size: int = _f(8, "packed graphs per process per micro-batch")
    per_device_eval_batch_size: int = _f(8, "packed graphs per process per eval batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    warmup_ratio: float = _f(0.0, "warmup as a fraction of the total steps")
    pad_to_multiple_of: int | None = _f(None, "pad batch length to a multiple (e.g. 8 or 128 on GPU)")
    disable_tqdm: bool = _f(False, "no progress bar")

    def validate(self) -> SFTConfig:
        def bad(msg):
            raise ValueError(f"config: {msg}")

        if self.mode not in ("parallel", "sequential"):
            bad(f"mode must be 'parallel' or 'sequential', got {self.mode!r}")
        if self.thread_header not in ("index", "outline"):
            bad(f"thread_header must be 'index' or 'outline', got {self.thread_header!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0 and self.max_train_tokens <= 0:
            bad("set max_steps > 0, num_train_epochs > 0 or max_train_tokens > 0")
        if self.max_train_tokens < 0:
            bad(f"max_train_tokens must be >= 0, got {self.max_train_tokens}")
        if not 0 <= self.warmup_ratio < 1:
            bad(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_fraction and not 0 < self.eval_fraction < 1:
            bad(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        return super().validate()


def config_help() -> str:
    return config_help_of(SFTConfig, SFTConfig.usage())


def parse_args(argv: Sequence[str] | None = None) -> SFTConfig:
    """``--config FILE`` then ``--field value`` overrides (:func:`parallel_reason.config.parse_config`)."""
    return SFTConfig.parse(argv)


# ---------------------------------------------------------------------------
# Model


def _build_tiny_model(cfg: SFTConfig, texts, path: str) -> None:
    from .tiny import build_tiny

    if not texts:
        raise ValueError("model_name_or_path: tiny needs training texts to build its tokenizer")
    build_tiny(
        texts,
        path,
        vocab_size=cfg.tiny_vocab_size,
        seed=cfg.seed,
        arch=cfg.tiny_arch,
        hidden_size=cfg.tiny_hidden_size,
        layers=cfg.tiny_layers,
        heads=cfg.tiny_heads,
        kv_heads=cfg.tiny_kv_heads,
        intermediate_size=cfg.tiny_intermediate_size,
        max_positions=max(4096, cfg.max_length),
        attn_implementation=cfg.attn_implementation,
    )


def load_model_and_tokenizer(cfg: SFTConfig, acc=None, texts: Sequence[str] | None = None):
    """``(tokenizer, model, base_path)``. ``model_name_or_path: tiny`` builds a tiny
    model from ``texts`` once (main process) into ``output_dir/base_model`` and loads
    it from there. Control tokens are added (embeddings resized and initialised) when
    the tokenizer lacks them; a missing pad token becomes EOS (padding is never attended)."""
    path = cfg.model_name_or_path
    if path == TINY:
        path = str(Path(cfg.output_dir) / "base_model")
        ready = (Path(path) / "config.json").exists()
        if not ready and (acc is None or acc.is_main_process):
            log.info("building the tiny model into %s", path)
            with no_zero3_init():  # ZeRO-3 init would make this main-process-only build wait for the others
                _build_tiny_model(cfg, texts, path)
        if acc is not None:
            acc.wait_for_everyone()
    tok, model, added = load_pretrained(cfg, path)
    if added:
        log.info(
            "added control tokens %s (embeddings resized to %d rows)",
            added,
            model.get_input_embeddings().weight.shape[0],
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token: using EOS %r for padding", tok.eos_token)
    if tok.eos_token_id is None and cfg.add_eos:
        raise ValueError(f"tokenizer of {path} has no EOS token; set add_eos: false or use another tokenizer")
    model.config.use_cache = False
    if cfg.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        log.warning("flex_attention without a GPU runs an unfused O(L^2) reference kernel; use sdpa on CPU")
    return tok, model, path


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


class PackedSFTTrainer(Trainer):
    """The accelerate loop; see the module docstring. ``train_examples`` /
    ``eval_examples`` override the config's data sources (tests, notebooks)."""

    merge_copy = False  # the final save is the last use of the model: merge LoRA in place

    def __init__(
        self,
        cfg: SFTConfig,
        train_examples: Sequence[Example] | None = None,
        eval_examples: Sequence[Example] | None = None,
    ):
        self.setup(
            cfg,
            cfg.gradient_accumulation_steps,
            cfg.per_device_train_batch_size,
            check_model=cfg.model_name_or_path != TINY,
        )
        cfg, acc = self.cfg, self.acc

        # data
        if train_examples is None:
            if not cfg.train_data:
                raise ValueError("config: train_data is not set")
            train_examples = load_examples(
                cfg.train_data,
                cfg.train_split,
                cfg.data_config,
                cfg.prompt_field,
                cfg.completion_field,
                cfg.max_train_samples,
            )
        if eval_examples is None:
            if cfg.eval_data:
                eval_examples = load_examples(
                    cfg.eval_data,
                    cfg.eval_split,
                    cfg.data_config,
                    cfg.prompt_field,
                    cfg.completion_field,
                    cfg.max_eval_samples,
                )
            elif cfg.eval_fraction > 0:
                train_examples, eval_examples = split_holdout(train_examples, cfg.eval_fraction, cfg.seed)
        if cfg.mode == "parallel":  # a malformed completion is reported before the model loads
            check_trajectories(list(train_examples) + list(eval_examples or []), cfg.join)
        # model
        self.tokenizer, model, self.base_path = load_model_and_tokenizer(cfg, acc, corpus(train_examples))
        tok = self.tokenizer
        gkw: dict[str, Any] = dict(
            mode=cfg.mode,
            join=cfg.join,
            max_length=cfg.max_length,
            eos=cfg.add_eos,
            apply_chat_template=cfg.apply_chat_template,
            thread_header=cfg.thread_header,
        )
        if cfg.mode == "parallel":  # decoding must open and join threads as the data did: the config carries it
            model.config.thread_header = cfg.thread_header
            model.config.parallel_join = cfg.join
        self.train_graphs, self.train_stats = build_graphs(train_examples, tok, name="train", **gkw)
        self.eval_graphs: list[PackedGraph] | None
        self.eval_stats: GraphStats | None
        self.eval_graphs, self.eval_stats = (
            build_graphs(eval_examples, tok, name="eval", **gkw) if eval_examples else (None, None)
        )
        log.info("train: %s", self.train_stats.as_dict())
        if self.eval_stats:
            log.info("eval: %s", self.eval_stats.as_dict())
        if cfg.use_peft:
            model = apply_peft(model, cfg)

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
        self.prepare(model, self.total_steps, cfg.warmup_steps or math.ceil(cfg.warmup_ratio * self.total_steps))

        self._interval = self._new_interval()
        self.trained_tokens_seen = 0
        if self.resume_dir is not None:
            st = self.load_checkpoint(self.resume_dir, self._resume_keys(), "data and batch layout")
            self._interval = st.get("interval") or self._new_interval()
            self.trained_tokens_seen = int(st.get("trained_tokens_seen", 0))
        self.init_trackers()

    # -- state -------------------------------------------------------------

    @staticmethod
    def _new_interval() -> dict:
        return {"nll": 0.0, "tokens": 0, "input_tokens": 0, "time": 0.0, "steps": 0, "grad_norm": 0.0, "grad_norm_n": 0}

    def _resume_keys(self) -> dict:
        return {"num_train_examples": len(self.train_graphs), "steps_per_epoch": self.steps_per_epoch}

    def state(self) -> dict:
        return {
            **self._resume_keys(),
            "total_steps": self.total_steps,
            "trained_tokens_seen": self.trained_tokens_seen,
            "interval": self._interval,
        }

    # -- one optimizer step ---------------------------------------------------

    def _batch(self, graphs) -> dict:
        b = collate(graphs, pad_id=self.tokenizer.pad_token_id, pad_to_multiple_of=self.cfg.pad_to_multiple_of)
        return {k: v.to(self.acc.device) for k, v in b.items()}

    def _train_step(self, window) -> dict:
        acc, model, cfg = self.acc, self.model, self.cfg
        rank, W, G = acc.process_index, acc.num_processes, cfg.gradient_accumulation_steps
        t0 = time.perf_counter()
        batches = [self._batch([self.train_graphs[i] for i in micro[rank]]) for micro in window]
        counts = torch.tensor(
            [sum(int(b["loss_mask"].sum()) for b in batches), sum(int((b["seg_id"] >= 0).sum()) for b in batches)],
            device=acc.device,
        )
        counts = acc.reduce(counts, "sum")
        T, n_input = int(counts[0]), int(counts[1])
        scale = W * G / T
        nll_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        grad_norm = None
        for b in batches:
            with acc.accumulate(model):
                logp = packed_logprobs(model, b)
                nll = -(logp * b["loss_mask"]).sum()
                nll_sum += nll.detach().double()
                gn = self.backward_and_step(nll * scale)
                grad_norm = gn if gn is not None else grad_norm
        if not acc.sync_gradients:  # cannot happen with full windows; guard the invariant
            raise RuntimeError("gradient accumulation window ended without an optimizer step")
        nll_total = float(acc.reduce(nll_sum.reshape(1), "sum")[0])
        return {
            "loss": nll_total / T,
            "nll": nll_total,
            "tokens": T,
            "input_tokens": n_input,
            "grad_norm": grad_norm,
            "time": time.perf_counter() - t0,
        }

    # -- evaluation ------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        acc, model = self.acc, self.model
        graphs = self.eval_graphs
        assert graphs is not None  # called only when there is eval data
        was_training = model.training
        model.eval()
        nll = torch.zeros((), device=acc.device, dtype=torch.float64)
        ntok = torch.zeros((), device=acc.device, dtype=torch.float64)
        for idx, w in eval_shards(
            len(graphs), self.cfg.per_device_eval_batch_size, acc.process_index, acc.num_processes
        ):
            b = self._batch([graphs[i] for i in idx])
            wt = torch.tensor(w, device=acc.device, dtype=torch.float64)[:, None] * b["loss_mask"]
            logp = packed_logprobs(model, b).double()
            nll -= (logp * wt).sum()
            ntok += wt.sum()
        tot = acc.reduce(torch.stack([nll, ntok]), "sum")
        if was_training:
            model.train()
        return {"eval_loss": float(tot[0] / tot[1]), "eval_tokens": int(tot[1])}

    # -- checkpoints and logging -------------------------------------------------------

    def card(self, metrics: dict | None = None) -> dict:
        cfg, card = self.cfg, super().card(metrics)
        return {
            **card,
            "stage": "sft",
            "thread_header": cfg.thread_header if cfg.mode == "parallel" else None,
            "base_model": cfg.model_name_or_path if cfg.model_name_or_path != TINY else self.base_path,
            "mode": cfg.mode,
            "extra": {"trained tokens": self.trained_tokens_seen, "optimizer steps": self.global_step, **card["extra"]},
        }

    def checkpoint_metrics(self) -> dict:
        return {k: v for e in self.log_history for k, v in e.items() if k in ("loss", "eval_loss")}

    def _flush_interval(self) -> None:
        iv = self._interval
        if not iv["steps"]:
            return
        lr = self.scheduler.get_last_lr()[0]
        self._log(
            {
                "step": self.global_step,
                "epoch": round(self.global_step / self.steps_per_epoch, 4),
                "loss": iv["nll"] / iv["tokens"],
                "lr": lr,
                "grad_norm": iv["grad_norm"] / iv["grad_norm_n"] if iv["grad_norm_n"] else None,
                "trained_tokens_per_s": iv["tokens"] / iv["time"] if iv["time"] > 0 else None,
                "tokens_per_s": iv["input_tokens"] / iv["time"] if iv["time"] > 0 else None,
                "trained_tokens": self.trained_tokens_seen,
            }
        )
        self._interval = self._new_interval()

    # -- loop -----------------------------------------------------------------------

    def train(self) -> SFTResult:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        W, B, G = acc.num_processes, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        log.info(
            "training (%s, %s): %d examples, %d processes x %d graphs x %d accumulation = %d graphs per "
            "step, %d steps per epoch, %d steps",
            acc.distributed_type.value,
            acc.mixed_precision,
            len(self.train_graphs),
            W,
            B,
            G,
            W * B * G,
            self.steps_per_epoch,
            self.total_steps,
        )
        if self.eval_graphs is not None and cfg.eval_on_start and self.global_step == 0:
            self._log({"step": 0, **self.evaluate()})
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc="sft",
            dynamic_ncols=True,
            disable=cfg.disable_tqdm or not acc.is_local_main_process,
        )
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
        self.finish(final)
        return SFTResult(
            global_step=self.global_step,
            log_history=list(self.log_history),
            final_dir=str(final),
            train_stats=self.train_stats.as_dict(),
            eval_stats=self.eval_stats.as_dict() if self.eval_stats else None,
        )


def train(
    cfg: SFTConfig, train_examples: Sequence[Example] | None = None, eval_examples: Sequence[Example] | None = None
) -> SFTResult:
    """Run SFT with ``cfg`` and return its :class:`SFTResult` (final model in ``output_dir/final``)."""
    return PackedSFTTrainer(cfg, train_examples, eval_examples).train()


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    return run_main(parse_args, train, argv)


__all__ = ["SFTConfig", "SFTResult", "PackedSFTTrainer", "parse_args", "train", "main", "load_model_and_tokenizer"]
