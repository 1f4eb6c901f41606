"""The runner's finish reasons: the one list, and how its readers group them.

:data:`FINISH_REASONS` is what :class:`parallel_reason.runner.Rollout.finish_reason`
can be (the runner refuses any other); rewards, the GRPO trainer's logs, the
benchmark and self-training read their groups from here.
"""

from __future__ import annotations

#: the normal end of a rollout
EOS = "eos"

#: Every finish reason and what it means.
FINISH_REASONS: dict[str, str] = {
    EOS: "the main sequence sampled EOS outside any block (normal end)",
    "max_new_tokens": "the rollout sampled max_new_tokens tokens with no thread open",
    "unclosed_thread": "the rollout sampled max_new_tokens tokens while a thread was still open "
    "(a thread that never closes, with no or a larger per-thread bound)",
    "max_thread_tokens": "a thread sampled max_thread_tokens tokens without sampling </Thread>",
    "max_threads": "</Outlines> closed a block with more outlines than max_width",
    "max_depth": "<Parallel> was sampled at a nesting depth above max_depth",
    "no_outlines": "</Outlines> closed a block with zero outlines",
    "eos_in_thread": "EOS was sampled inside a thread (text or nested block head)",
    "malformed": "a control tag was sampled where the grammar forbids it (stray </Parallel>, <Thread>, "
    "</Thread> outside a thread, outline tags out of order, EOS in a block head); see detail",
    "replay_end": "replay only: the forced tokens ran out before the rollout ended",
}

#: Reasons a caller (the server, a remote engine) may end a rollout with; not decoding guards.
EXTERNAL_REASONS: dict[str, str] = {
    "stop": "a stop string or stop token of the request was produced (serving)",
    "cancelled": "the request was cancelled (its client disconnected)",
}

#: reasons of rollouts that hit a token budget before they ended
TRUNCATED = ("max_new_tokens", "unclosed_thread", "max_thread_tokens", "replay_end")
#: reasons of rollouts the runner stopped on a grammar or limit violation
MALFORMED = ("malformed", "max_threads", "max_depth", "no_outlines", "eos_in_thread")
#: reasons that only replay (forced tokens) gives, never sampling
REPLAY_ONLY = ("replay_end",)
#: reasons a sampled rollout can end with
SAMPLED = tuple(r for r in FINISH_REASONS if r not in REPLAY_ONLY)

__all__ = ["EOS", "EXTERNAL_REASONS", "FINISH_REASONS", "MALFORMED", "REPLAY_ONLY", "SAMPLED", "TRUNCATED"]
