"""GRPO rewards: :class:`Correctness`, :class:`Acceleration` (ThreadWeaver's
``factor * min(1 - critical_path / total_tokens, clip)``, correct answers only) and
:class:`FormatReward`, each with TRL's reward-function signature
``fn(prompts, completions, **kwargs) -> list[float]`` so they combine with weights
and log separately. Our trainer adds a ``rollouts`` keyword (metrics from the
runner's token tree); without it metrics come from the text.
:func:`build_reward_funcs` builds the list, :func:`score` combines it. See
docs/design.md#rewards-metrics.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import finish
from .format import Limits, Problem, parse_lenient
from .layout import block_counts
from .metrics import Counter, approx_count
from .metrics import stats as text_stats
from .tasks import get_task

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list]

#: finish reasons (the runner's, see :data:`parallel_reason.finish.TRUNCATED`, and TRL/vLLM's
#: ``length``) that mean the rollout hit a token budget before it ended
TRUNCATED = ("length",) + finish.TRUNCATED
#: finish reasons that mean the runner stopped the rollout on a grammar or limit violation
MALFORMED = finish.MALFORMED


# ---------------------------------------------------------------------------
# Helpers


def completion_text(completion: Any) -> str:
    """Text of a completion: a string, or TRL's conversational form (a list of
    messages, the last one's ``content``)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content", "")
            return content if isinstance(content, str) else str(content)
    if completion is None:
        return ""
    return str(completion)


def _column(kwargs: dict, name: str, i: int, default=None):
    col = kwargs.get(name)
    if col is None:
        return default
    try:
        return col[i]
    except (IndexError, KeyError, TypeError):
        return default


def _rollout(kwargs: dict, i: int):
    rollouts = kwargs.get("rollouts")
    if rollouts is None:
        return None
    return rollouts[i]


def rollout_stats(rollout=None, text: str | None = None, count: Counter = approx_count) -> dict:
    """Parallelism metrics of one completion: ``total_tokens``, ``critical_path``,
    ``speedup``, ``blocks``, ``threads``, ``truncated``.

    For a :class:`parallel_reason.runner.Rollout`, the token counts are the runner's
    own (``rollout.total_tokens``, ``rollout.critical_path``: sampled tokens counted on
    the token tree, see :func:`parallel_reason.layout.sampled_count`) and the blocks
    are counted on its token tree (``rollout.items``). Without a rollout they come
    from the text through :func:`parallel_reason.metrics.stats` with ``count``."""
    if rollout is not None:
        blocks, threads = block_counts(rollout.items)
        total, cp = int(rollout.total_tokens), int(rollout.critical_path)
        return {
            "total_tokens": total,
            "critical_path": cp,
            "speedup": total / cp if cp else 1.0,
            "blocks": blocks,
            "threads": threads,
            "truncated": is_truncated(rollout),
        }
    st = text_stats(text or "", count)
    return {
        "total_tokens": st.total_tokens,
        "critical_path": st.critical_path,
        "speedup": st.speedup,
        "blocks": st.blocks,
        "threads": st.threads,
        "truncated": False,
    }


def is_truncated(rollout) -> bool:
    """True when the rollout stopped on a token budget (see :data:`TRUNCATED`)."""
    return rollout is not None and rollout.finish_reason.lower() in TRUNCATED


def is_malformed_stop(rollout) -> bool:
    """True when the runner stopped the rollout on a grammar/limit violation (:data:`MALFORMED`)."""
    return rollout is not None and rollout.finish_reason.lower() in MALFORMED


def acceleration_value(total_tokens: int, critical_path: int, factor: float, clip: float) -> float:
    """ThreadWeaver's acceleration term ``factor * min(1 - cp / total, clip)`` (0 when
    there are no tokens). It does not check correctness: see :class:`Acceleration`."""
    if total_tokens <= 0:
        return 0.0
    eta = 1.0 - float(critical_path) / float(total_tokens)
    return float(factor) * min(max(eta, 0.0), float(clip))


# ---------------------------------------------------------------------------
# Reward functions


class Correctness:
    """1.0 if the task's verifier accepts the completion, else 0.0.

    The verifier is the task module's ``reward(completion, **columns)`` (each task in
    :mod:`parallel_reason.tasks` defines one), called with the dataset columns its
    signature names (``nums``, ``target`` for Countdown). A verifier that raises on
    some output scores 0.0 and logs a warning: a training run never stops on one
    odd completion."""

    __name__ = "correctness"

    def __init__(self, task: str | None = "countdown"):
        self.task = task
        self._params: dict[str, tuple] = {}

    def _verifier(self, name: str):
        mod = get_task(name)
        if name not in self._params:
            sig = inspect.signature(mod.reward)
            self._params[name] = tuple(list(sig.parameters)[1:])
        return mod.reward, self._params[name]

    def score_one(self, completion: str, kwargs: dict, i: int) -> float:
        name = _column(kwargs, "task", i, None) or self.task
        if name is None:
            raise ValueError("no task: give a 'task' column or Correctness(task=...)")
        fn, params = self._verifier(name)
        args = {}
        for p in params:
            v = _column(kwargs, p, i, None)
            if v is None:
                raise ValueError(f"task {name!r} needs the column {p!r}; got columns {sorted(kwargs)}")
            args[p] = v
        try:
            return float(fn(completion, **args))
        except Exception as e:  # a verifier must not stop training
            log.warning("verifier of task %r raised %s on %r; scoring 0", name, e, completion[:200])
            return 0.0

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [self.score_one(completion_text(c), kwargs, i) for i, c in enumerate(completions)]


class Acceleration:
    """``factor * min(1 - critical_path / total_tokens, clip)`` for correct answers,
    0.0 for the rest. Metrics come from the ``rollouts`` keyword (token tree), else
    from the text (``count`` decides how text pieces are counted: pass
    :func:`parallel_reason.metrics.tokenizer_counter` for real tokens)."""

    __name__ = "acceleration"

    def __init__(
        self,
        factor: float = 0.5,
        clip: float = 0.2,
        task: str | None = "countdown",
        count: Counter = approx_count,
        correctness: Correctness | None = None,
    ):
        if clip < 0 or factor < 0:
            raise ValueError(f"acceleration factor and clip must be >= 0, got factor={factor}, clip={clip}")
        self.factor = float(factor)
        self.clip = float(clip)
        self.count = count
        self.correctness = correctness or Correctness(task)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            text = completion_text(c)
            if self.correctness.score_one(text, kwargs, i) <= 0:
                out.append(0.0)
                continue
            st = rollout_stats(_rollout(kwargs, i), text, self.count)
            out.append(acceleration_value(st["total_tokens"], st["critical_path"], self.factor, self.clip))
        return out


@dataclass
class FormatOutcome:
    valid: bool
    truncated: bool
    blocks: int
    problems: list


def format_outcome(text: str, rollout=None, limits: Limits | None = None) -> FormatOutcome:
    """Classify a completion for :class:`FormatReward` (never raises)."""
    try:
        traj, parsed = parse_lenient(text, limits)
        problems: list[Problem | str] = list(parsed)
        nblocks = len(traj.blocks())
    except Exception as e:  # the lenient parser should never raise; be defensive anyway
        log.warning("parse_lenient raised %s; treating the completion as malformed", e)
        problems, nblocks = [str(e)], 0
    if is_malformed_stop(rollout):
        problems = list(problems) + [f"runner stopped the rollout: {rollout.finish_reason}"]
    return FormatOutcome(valid=not problems, truncated=is_truncated(rollout), blocks=nblocks, problems=problems)


class FormatReward:
    """A defined value for every completion: ``truncated`` when the rollout hit a
    budget (takes precedence), ``invalid`` when the text is malformed (see
    :func:`parallel_reason.format.validate`; width/depth limits included),
    ``no_block`` (if not None) when it is valid but has no ``<Parallel>`` block,
    ``valid`` otherwise."""

    __name__ = "format"

    def __init__(
        self,
        valid: float = 1.0,
        invalid: float = 0.0,
        truncated: float = 0.0,
        no_block: float | None = None,
        max_depth: int | None = None,
        max_width: int | None = None,
    ):
        self.values = dict(valid=float(valid), invalid=float(invalid), truncated=float(truncated))
        self.no_block = None if no_block is None else float(no_block)
        self.limits = Limits(max_depth=max_depth, max_width=max_width)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            o = format_outcome(completion_text(c), _rollout(kwargs, i), self.limits)
            if o.truncated:
                out.append(self.values["truncated"])
            elif not o.valid:
                out.append(self.values["invalid"])
            elif o.blocks == 0 and self.no_block is not None:
                out.append(self.no_block)
            else:
                out.append(self.values["valid"])
        return out


# ---------------------------------------------------------------------------
# Building and combining


@dataclass
class RewardSpec:
    """What :func:`build_reward_funcs` reads (the GRPO config carries these fields)."""

    rewards: Sequence[str] = ("correctness", "acceleration")
    reward_weights: Sequence[float] | None = None  # one per reward, default 1.0 each
    task: str = "countdown"
    acceleration_factor: float = 0.5
    acceleration_clip: float = 0.2
    format_valid: float = 1.0
    format_invalid: float = 0.0
    format_truncated: float = 0.0
    format_no_block: float | None = None
    max_depth: int | None = None
    max_width: int | None = None


def build_reward_funcs(spec, count: Counter = approx_count) -> tuple[list[RewardFunc], list[float]]:
    """Reward callables and their weights from a config (any object with the
    :class:`RewardSpec` fields). Entries of ``spec.rewards`` are names
    (``correctness``, ``acceleration``, ``format``) or callables (custom rewards
    with the same signature)."""

    def g(k: str, d: Any = None) -> Any:
        return getattr(spec, k, d)

    correctness = Correctness(g("task", "countdown"))
    funcs: list[RewardFunc] = []
    for r in g("rewards", ("correctness",)):
        if callable(r):
            funcs.append(r)
        elif r == "correctness":
            funcs.append(correctness)
        elif r == "acceleration":
            funcs.append(
                Acceleration(
                    g("acceleration_factor", 0.5), g("acceleration_clip", 0.2), count=count, correctness=correctness
                )
            )
        elif r == "format":
            funcs.append(
                FormatReward(
                    g("format_valid", 1.0),
                    g("format_invalid", 0.0),
                    g("format_truncated", 0.0),
                    g("format_no_block"),
                    g("max_depth"),
                    g("max_width"),
                )
            )
        else:
            raise ValueError(f"unknown reward {r!r}; choose among correctness, acceleration, format or pass a callable")
    weights = g("reward_weights")
    weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(funcs):
        raise ValueError(f"{len(weights)} reward_weights for {len(funcs)} rewards")
    return funcs, weights


def reward_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def score(
    funcs: Sequence[RewardFunc], weights: Sequence[float], prompts: list, completions: list, **kwargs
) -> tuple[list[float], dict[str, list[float]]]:
    """Run every reward function; returns the weighted sum per completion and each
    component (unweighted) by name. A component that returns None for an entry (TRL's
    "not applicable") contributes 0; a non-finite value is an error."""
    n = len(completions)
    total = [0.0] * n
    parts: dict[str, list[float]] = {}
    for fn, w in zip(funcs, weights):
        vals = fn(prompts, completions, **kwargs)
        if len(vals) != n:
            raise ValueError(f"reward {reward_name(fn)!r} returned {len(vals)} values for {n} completions")
        vals = [0.0 if v is None else float(v) for v in vals]
        bad = [v for v in vals if not math.isfinite(v)]
        if bad:
            raise ValueError(f"reward {reward_name(fn)!r} returned a non-finite value {bad[0]}")
        name = reward_name(fn)
        k, base = 2, name
        while name in parts:
            name, k = f"{base}_{k}", k + 1
        parts[name] = vals
        for i, v in enumerate(vals):
            total[i] += w * v
    return total, parts


__all__ = [
    "Acceleration",
    "Correctness",
    "FormatReward",
    "FormatOutcome",
    "MALFORMED",
    "RewardSpec",
    "TRUNCATED",
    "acceleration_value",
    "build_reward_funcs",
    "completion_text",
    "format_outcome",
    "is_malformed_stop",
    "is_truncated",
    "reward_name",
    "rollout_stats",
    "score",
]
