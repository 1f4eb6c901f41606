"""Shared fixtures: a tiny tokenizer and tiny models built in the test session."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("alpha beta gamma delta check try plan found none left right sum take Numbers Target Answer Search").split()


def random_text(rng: random.Random, lo: int = 1, hi: int = 6) -> str:
    return " " + " ".join(rng.choice(WORDS + [str(rng.randint(0, 99))]) for _ in range(rng.randint(lo, hi)))


def random_trajectory(
    rng: random.Random, depth: int = 2, max_width: int = 4, p_block: float = 0.7, p_result: float = 0.0
):
    """A random well-formed completion text with nested blocks (widths 1..max_width);
    a thread ends with a ``<Result>`` with probability ``p_result``."""
    from parallel_reason.format import RESULT, Trajectory, make_block, render

    def seq(d: int) -> list:
        parts = [random_text(rng)]
        for _ in range(rng.randint(0, 2)):
            if d < depth and rng.random() < p_block:
                w = rng.randint(1, max_width)
                parts.append(make_block([(random_text(rng, 1, 3).strip(), seq(d + 1)) for _ in range(w)]))
                parts.append("\n" + random_text(rng).lstrip())
        if d > 0 and p_result > 0 and rng.random() < p_result:
            parts[-1] += " =>" + RESULT + random_text(rng, 1, 3).lstrip()
        return parts

    return render(Trajectory(seq(0)))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from parallel_reason.tiny import build_tokenizer
    from parallel_reason.tokens import add_control_tokens

    rng = random.Random(0)
    corpus = (
        [random_trajectory(rng) for _ in range(200)]
        + [" ".join(WORDS)] * 5
        + ["0 1 2 3 4 5 6 7 8 9 : = + - * / ( ) [ ]"] * 5
    )
    tok = build_tokenizer(corpus, vocab_size=320)
    add_control_tokens(tok)
    return tok


def make_model(tokenizer, arch: str = "qwen2", attn: str = "sdpa", seed: int = 0, **kw):
    from parallel_reason.tiny import build_model

    return build_model(len(tokenizer), arch=arch, seed=seed, attn_implementation=attn, **kw).eval()


TINY_SAVED = dict(vocab_size=300, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)


def saved_countdown_model(d, n: int):
    """``n`` Countdown test problems (3 numbers) written to ``d / "cd.jsonl"`` and a tiny
    random model with a tokenizer built from their traces, saved to ``d / "model"``.
    Returns ``(data path, model path)``."""
    from data_gen import countdown as dg
    from parallel_reason.tiny import build_tiny

    recs = dg.generate(dg.GenConfig(n_numbers=3, split="test", seed=0), n, progress=False)
    data = d / "cd.jsonl"
    dg.write_jsonl(recs, str(data))
    build_tiny([r["prompt"] + r["completion"] for r in recs] * 2, d / "model", **TINY_SAVED)
    return data, d / "model"


def reset_accelerate() -> None:
    """A fresh accelerate state (a process singleton) for the next in-process run."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate():
    """One torch thread (tiny models only lose from intra-op threads on a shared CPU)
    and a fresh accelerate state before and after the test."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate()
    yield
    torch.set_num_threads(n)
    reset_accelerate()


def make_rollout(items=(), prompt_ids=(), completion: str = "", finish_reason: str = "eos", **fields):
    """A real :class:`parallel_reason.runner.Rollout` of a token tree, for tests that
    do not decode: completion ids, log-probs (those recorded on top-level runs), loss
    mask, packed graph (None when there are no tokens at all) and token counts follow
    from ``items``; ``fields`` override any of them (e.g. ``total_tokens`` /
    ``critical_path`` of a tree left empty)."""
    from parallel_reason.layout import Run, build_graph, critical_path_count, linear_ids, sampled_count
    from parallel_reason.runner import Rollout

    items = list(items)
    ids = linear_ids(items)
    if all(isinstance(it, Run) for it in items):
        lps = [
            lp for it in items for lp in (it.logprobs if it.train and it.logprobs is not None else [0.0] * len(it.ids))
        ]
        mask = [int(it.train) for it in items for _ in it.ids]
    else:
        lps, mask = [0.0] * len(ids), [1] * len(ids)
    values = dict(
        prompt_ids=list(prompt_ids),
        completion=completion,
        completion_ids=ids,
        items=items,
        graph=build_graph(list(prompt_ids), items) if prompt_ids or ids else None,
        logprobs=lps,
        sampler_logprobs=list(lps),
        loss_mask=mask,
        finish_reason=finish_reason,
        total_tokens=sampled_count(items),
        critical_path=critical_path_count(items),
        wall_s=0.0,
    )
    values.update(fields)
    return Rollout(**values)
