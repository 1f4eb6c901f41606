"""Fork/join runner: decodes the threads of a ``<Parallel>`` block concurrently.

- :mod:`.scheduler`: the engine-agnostic state machine (grammar, guards, token
  tree, finish reasons, the backend interface);
- :mod:`.hf`: the Hugging Face backend (one packed-graph KV buffer per prompt,
  4D masks, batched decode steps) and :class:`Runner`.

Usage::

    runner = Runner(model, tokenizer, max_new_tokens=512, max_width=8, max_depth=2, batch_size=16)
    rollouts = runner.generate(prompts, n=8, temperature=1.0, top_p=0.95, seed=0)
    r = rollouts[0]
    r.completion, r.finish_reason, r.total_tokens, r.critical_path, r.wall_s
    r.graph  # layout.PackedGraph with sample_logprobs: what the trainer trains
"""

from .hf import BackendStats, HFBackend, Runner, filter_logits
from .scheduler import FINISH_REASONS, RunLimits, Rollout, RolloutState, TagSet

__all__ = ["Runner", "Rollout", "FINISH_REASONS", "RunLimits", "HFBackend", "BackendStats", "RolloutState",
           "TagSet", "filter_logits"]
