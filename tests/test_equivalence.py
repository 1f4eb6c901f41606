"""Equivalence invariant (docs/design.md#packed-graph): per-token log-probs of a
packed graph equal those of every request run as its own plain causal sequence."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model, random_trajectory

from parallel_reason.attention import collate
from parallel_reason.layout import graph_from_text
from parallel_reason.logprobs import packed_logprobs

TOL = 1e-4  # float32, max abs difference of log-probs


def plain_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Reference: plain causal forward over one sequence; lp[k] = log p(ids[k] | ids[:k])."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    out = torch.zeros(len(ids), dtype=torch.float64)
    out[1:] = lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return out


@pytest.mark.parametrize("arch,attn", [("qwen2", "sdpa"), ("qwen2", "eager"), ("llama", "sdpa")])
def test_packed_equals_per_request(tiny_tokenizer, arch, attn):
    tok = tiny_tokenizer
    model = make_model(tok, arch=arch, attn=attn, seed=1)
    rng = random.Random(7)
    graphs = []
    for k in range(4):
        text = random_trajectory(rng, depth=2, max_width=4, p_block=0.9)
        graphs.append(graph_from_text(f"Numbers: {k} 1 2\nTarget: 5\n", text, tok))
    assert any(g.num_segments > 3 for g in graphs)
    batch = collate(graphs, pad_id=tok.pad_token_id)
    assert len({len(g) for g in graphs}) > 1, "batch must mix lengths (padding)"
    with torch.no_grad():
        packed = packed_logprobs(model, batch)
    checked = 0
    worst = 0.0
    for b, g in enumerate(graphs):
        ids = g.input_ids.tolist()
        for ctx, comp in g.requests():
            path = ctx + comp
            # every node of a request's path: its ancestors must be exactly the path prefix
            assert g.ancestors(comp[-1]) == path
            ref = plain_logprobs(model, [ids[i] for i in path])
            for k, node in enumerate(comp):
                d = abs(float(packed[b, node]) - float(ref[len(ctx) + k]))
                worst = max(worst, d)
                checked += 1
        # every trained token belongs to exactly one request
        in_requests = sorted(n for _, comp in g.requests() for n in comp)
        assert in_requests == torch.nonzero(g.loss_mask).flatten().tolist()
    assert checked > 100
    assert worst <= TOL, f"max abs diff {worst:.2e} > {TOL}"
