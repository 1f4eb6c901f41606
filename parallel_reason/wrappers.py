"""Looking through model wrappers: the one home of unwrapping and of the PEFT test.

Trainers and the runner receive models wrapped by DDP / DeepSpeed / FSDP
(``.module``), ``torch.compile`` (``._orig_mod``) and PEFT. :func:`unwrap_model`
strips them (PEFT only on request: a PEFT model is saved and trained as itself);
:func:`is_peft` tells a PEFT model (False when ``peft`` is not installed).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _peft_model_class():
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return None
    return PeftModel


def is_peft(model) -> bool:
    """Is ``model`` a ``peft.PeftModel``?"""
    cls = _peft_model_class()
    return cls is not None and isinstance(model, cls)


def unwrap_model(model, peft: bool = False):
    """``model`` without its DDP/DeepSpeed/FSDP (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers; a PEFT model is kept unless ``peft`` (then its base
    model is returned, unwrapped in turn: the innermost model)."""
    for _ in range(16):  # a wrapper chain is short; the bound guards against cycles
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif peft and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and not is_peft(model):
            model = model.module
        else:
            break
    return model


__all__ = ["is_peft", "unwrap_model"]
