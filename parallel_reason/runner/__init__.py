"""Fork/join runner: decodes the threads of ``<Parallel>`` blocks concurrently
(:mod:`.scheduler`: the engine-agnostic state machine; :mod:`.hf`: the Hugging Face
backend and :class:`Runner`). See docs/design.md#runner.

Usage::

    runner = Runner(model, tokenizer, max_new_tokens=512, max_width=8, max_depth=2, batch_size=16)
    rollouts = runner.generate(prompts, n=8, temperature=1.0, top_p=0.95, seed=0)
    r = rollouts[0]
    r.completion, r.finish_reason, r.total_tokens, r.critical_path, r.wall_s
    r.graph  # layout.PackedGraph with sample_logprobs: what the trainer trains
"""

from .hf import BackendStats, HFBackend, Runner, filter_logits, model_join
from .scheduler import FINISH_REASONS, Rollout, RolloutState, RunLimits, TagSet

__all__ = [
    "Runner",
    "Rollout",
    "FINISH_REASONS",
    "RunLimits",
    "HFBackend",
    "BackendStats",
    "RolloutState",
    "TagSet",
    "filter_logits",
    "model_join",
]
