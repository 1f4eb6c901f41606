"""Task registry: one module per task, each exposing ``prompt``, ``extract_answer``,
``verify`` and ``reward`` (see :mod:`parallel_reason.tasks.countdown`).

- ``countdown``: combine the numbers to reach a target (``nums``, ``target`` columns).
- ``math``: GSM8K / MATH-style word problems with a final ``\\boxed{}`` answer,
  checked with math-verify (``answer`` column).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: task name -> module path
TASKS: dict[str, str] = {
    "countdown": "parallel_reason.tasks.countdown",
    "math": "parallel_reason.tasks.math",
}


def get_task(name: str) -> ModuleType:
    """The module implementing task ``name`` (e.g. ``"countdown"``)."""
    try:
        path = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}") from None
    return importlib.import_module(path)


__all__ = ["TASKS", "get_task"]
