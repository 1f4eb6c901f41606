"""Per-token log-probabilities on a packed batch, gathered by predecessor:
``logp[i] = log_softmax(logits[pred[i]])[input_ids[i]]``.

The one scoring function of the SFT trainer, the GRPO trainer and the
train/inference consistency checks. It calls the model's own ``forward`` with
``logits_to_keep`` set to the predecessors of the selected tokens, so the
vocabulary projection runs only where needed. See docs/design.md#packed-graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import attention_mask
from .wrappers import unwrap_model


def attn_implementation_of(model) -> str:
    cfg = getattr(model, "config", None)
    if cfg is None and hasattr(model, "module"):
        cfg = model.module.config
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    return impl


def packed_logprobs(model, batch: dict, select: torch.Tensor | None = None, return_entropy: bool = False, mask=None):
    """Log-probs ``[B, L]`` (float32) of the selected tokens (default: ``loss_mask``),
    zero elsewhere; with ``return_entropy`` also the entropy of each selected token's
    predictive distribution ``[B, L]``."""
    input_ids = batch["input_ids"]
    device = input_ids.device
    sel = batch["loss_mask"] if select is None else select
    sel = sel.to(device).bool()
    pred = batch["pred"].to(device)
    if bool(((pred < 0) & sel).any()):
        raise ValueError("a selected token has no predecessor (the first token cannot be scored)")
    B, L = input_ids.shape
    n = sel.sum(1)
    N = max(int(n.max()), 1)
    order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :N]  # selected first, in order
    valid = torch.arange(N, device=device)[None, :] < n[:, None]
    keep = torch.where(valid, pred.gather(1, order), torch.zeros_like(order))
    targets = torch.where(valid, input_ids.gather(1, order), torch.zeros_like(order))
    if mask is None:
        impl = attn_implementation_of(unwrap_model(model))
        dtype = next(unwrap_model(model).parameters()).dtype
        mask = attention_mask(
            {k: v.to(device) for k, v in batch.items() if k in ("seg_id", "seg_vis")}, impl, dtype=dtype
        )
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=batch["position_ids"].to(device),
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits.float()  # [B, N, V]
    V = logits.shape[-1]
    lp_sel = -F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view(B, N)
    lp_sel = lp_sel * valid
    logp = torch.zeros(B, L, dtype=torch.float32, device=device)
    logp = logp.scatter(1, order, lp_sel)
    # scatter writes padding slots into position order[:, k] for invalid k: those
    # positions are unselected tokens and got 0 (lp_sel * valid), so zero stays zero.
    if not return_entropy:
        return logp
    lsm = torch.log_softmax(logits, dim=-1)
    ent_sel = -(lsm.exp() * lsm).sum(-1) * valid
    ent = torch.zeros(B, L, dtype=torch.float32, device=device).scatter(1, order, ent_sel)
    return logp, ent
