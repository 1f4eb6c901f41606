"""Bad user input, reported in one line: :class:`InputError` (a file, record or flag
that cannot be used; :class:`parallel_reason.data.DataError` is one), the decorator
every command-line ``main`` wears to print it as ``error: ...`` with exit status 2
(:func:`reports_input_errors`; any other exception is a bug and keeps its
traceback), and the checks run before a model is loaded: model path and device.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

#: dtype names the command-line tools accept
DTYPES = ("auto", "float32", "bfloat16", "float16")


class InputError(ValueError):
    """A file, record or flag that cannot be used; the message names it and what is wrong."""


def reports_input_errors(main):
    """Decorate a CLI's ``main(argv)``: an :class:`InputError` becomes ``error: <message>``
    on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper


def check_device(device: str | None, flag: str = "--device") -> None:
    """``auto``/None, or a torch device that exists on this machine."""
    if device in (None, "auto"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{flag} {device!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {device}: no CUDA GPU is available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{flag} {device}: MPS is not available on this machine")


def _hub_offline() -> bool:
    flags = [os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    if any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str)
        for f in ("config.json", "adapter_config.json", "tokenizer_config.json")
    )


def check_model_path(path: str, flag: str = "--model", revision: str | None = None) -> None:
    """A model that can be loaded without asking the hub about a typo: an existing
    folder, or a well-formed hub id (``namespace/name``), found in the local cache
    when the hub is offline (``HF_HUB_OFFLINE``). A path that looks local
    (``./``, ``/``, ``~``, two slashes or more) must exist."""
    if not path or not str(path).strip():
        raise InputError(f"{flag} is empty: give a model folder or a hub id (namespace/name)")
    path = str(path)
    p = Path(path).expanduser()
    if p.is_dir():
        return
    if p.exists():
        raise InputError(f"{flag} {path}: a file, not a model folder")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_local = path.startswith((".", "/", "~", "\\")) or path.count("/") > 1 or "\\" in path
    if not looks_local:
        try:
            validate_repo_id(path)
        except HFValidationError:
            looks_local = True
    if looks_local:
        raise InputError(f"{flag} {path}: no such folder (and not a hub repo id of the form namespace/name)")
    if _hub_offline() and not _in_hub_cache(path, revision):
        raise InputError(
            f"{flag} {path}: no such local folder, and HF_HUB_OFFLINE is set so the hub id "
            "cannot be downloaded (it is not in the local cache)"
        )


def parse_range(text: str) -> tuple:
    """``"LO,HI"`` -> ``(LO, HI)`` with ``1 <= LO <= HI`` (an argparse type)."""
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two integers), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return lo, hi


__all__ = ["DTYPES", "InputError", "check_device", "check_model_path", "parse_range", "reports_input_errors"]
