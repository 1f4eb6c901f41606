"""Saving trained models: safetensors weights, tokenizer, generation config and a
model card that documents the control-token grammar and the training config.

:func:`save_checkpoint` is the one writer every trainer uses (SFT checkpoints,
final models, GRPO later); a ``push`` entry point (``python -m parallel_reason.hub
push DIR REPO``) is meant to be added here and reuse :func:`render_model_card`.

Wrappers are unwrapped: DDP / DeepSpeed / FSDP (``.module``), ``torch.compile``
(``._orig_mod``) and PEFT. A PEFT model is saved as its adapter
(``adapter_model.safetensors`` + ``adapter_config.json``), or merged into the base
weights with ``merge_peft=True`` (then a plain ``AutoModelForCausalLM`` directory).
Under ZeRO-3 / FSDP the caller gathers the full ``state_dict`` (collective, on
every rank: ``accelerator.get_state_dict(model)``) and passes it in; only the main
process calls this function.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from .format import CONTROL_TAGS, PARALLEL_CLOSE, THREAD_CLOSE, THREAD_OPEN

log = logging.getLogger(__name__)

CARD_NAME = "README.md"


def unwrap_model(model):
    """Strip DDP/DeepSpeed/FSDP (``.module``) and ``torch.compile`` wrappers (PEFT is kept)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and not _is_peft(model):
            model = model.module
        else:
            return model


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_model_card(card: dict, tokenizer=None) -> str:
    """Markdown model card. Recognised keys of ``card`` (all optional):
    ``model_name, base_model, datasets (list), mode, join, summary, metrics (dict),
    config (dict, the training config), tags (list), license, extra (dict)``."""
    card = dict(card or {})
    base = card.get("base_model")
    tags = ["parallel-reasoning", "fork-join", "parallel_reason"] + list(card.get("tags", []))
    front: dict[str, Any] = {"library_name": "transformers", "tags": tags}
    if base and not os.path.isabs(str(base)) and not str(base).startswith("."):
        front["base_model"] = str(base)
    if card.get("license"):
        front["license"] = card["license"]
    ds = [d for d in card.get("datasets", []) if d and not os.path.exists(str(d))]
    if ds:
        front["datasets"] = ds
    name = card.get("model_name") or "parallel_reason model"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    default_summary = (
        "A causal language model fine-tuned with `parallel_reason` to reason in fork/join "
        "parallel threads: it writes a `<Parallel>` block with one outline per thread, the threads "
        "are decoded concurrently by the runner, and the reasoning continues after the join.")
    if card.get("mode") == "sequential":
        default_summary = (
            "A causal language model fine-tuned with `parallel_reason` on linear (sequential) reasoning: "
            "the sequential baseline of the fork/join models. Its tokenizer carries the control tokens "
            "below, but its training data had no `<Parallel>` block.")
    lines += [card.get("summary") or default_summary, ""]
    lines += ["## Training", ""]
    rows = [("stage", card.get("stage", "sft")), ("base model", base), ("training data", ", ".join(map(str, card.get("datasets", [])))),
            ("mode", card.get("mode")), ("join", card.get("join"))]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows if v not in (None, "")]
    lines.append("")
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
        lines.append("")
    lines += ["## Control-token grammar", "",
              "Each tag below is one added token of the tokenizer (not a special token, so "
              "`decode(..., skip_special_tokens=True)` keeps it):", "",
              "| tag | token id |", "|---|---|"]
    for tag in CONTROL_TAGS:
        tid = None
        if tokenizer is not None:
            t = tokenizer.convert_tokens_to_ids(tag)
            tid = t if t is not None and t != getattr(tokenizer, "unk_token_id", None) else "missing"
        lines.append(f"| `{tag}` | {tid if tid is not None else ''} |")
    lines += ["", "```text", "...sequential reasoning...", "<Parallel>",
              "<Outlines><Outline>1: plan of thread 1</Outline><Outline>2: plan of thread 2</Outline></Outlines>",
              "<Thread>1: text of thread 1</Thread>", "<Thread>2: text of thread 2</Thread>", "</Parallel>",
              "...sequential continuation, possibly more blocks...", "```", "",
              "- The number of outlines is the number of threads; threads may nest blocks.",
              "- A thread sees the shared prefix and the outlines, never its siblings.",
              f"- The runner writes each thread's opener (`\\n{THREAD_OPEN}i:`) and the join "
              f"(`\\n{PARALLEL_CLOSE}`) itself: those tokens were never trained. The model writes "
              f"everything else, including each `{THREAD_CLOSE}`.",
              f"- Join mode `{card.get('join') or 'concat'}`: after `{PARALLEL_CLOSE}` the continuation "
              "sees the prefix and all threads re-read as one linear text (decodable by any engine "
              "with prefix caching).", ""]
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)",
              "# decode fork/join threads concurrently with parallel_reason.runner", "```", ""]
    extra = card.get("extra") or {}
    if extra:
        lines += ["## Notes", ""] + [f"- {k}: {_fmt(v)}" for k, v in extra.items()] + [""]
    cfg = card.get("config")
    if cfg:
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(_plain(cfg), sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, card: dict | None = None,
                    state_dict: dict | None = None, merge_peft: bool = False,
                    max_shard_size: str = "5GB") -> Path:
    """Write ``out_dir``: weights as safetensors, tokenizer, generation config and a
    ``README.md`` model card (see :func:`render_model_card`). Returns ``out_dir``.

    ``merge_peft`` merges a PEFT adapter into the base weights *in place* (use it for
    the final model; intermediate checkpoints keep the adapter only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    if _is_peft(model):
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
            (out / CARD_NAME).write_text(render_model_card(card or {}, tokenizer), encoding="utf-8")
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
    (out / CARD_NAME).write_text(render_model_card(card or {}, tokenizer), encoding="utf-8")
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


def read_card_config(path: str | os.PathLike) -> dict | None:
    """The training config stored in a model card (``## Training config`` YAML block)."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else (Path(path) / CARD_NAME).read_text(encoding="utf-8")
    marker = "## Training config"
    if marker not in text:
        return None
    block = text.split(marker, 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomic JSON write (temp file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
