"""Packed graphs -> padded batches and attention masks.

:func:`collate` pads graphs into a batch (padding sees only itself, never trained);
:func:`attention_mask` returns what the model's attention implementation takes: a
dense bool mask for ``sdpa``, its additive float form for ``eager``, or a
flex-attention ``BlockMask`` built from the segment table without any ``L x L``
tensor (:func:`flex_block_mask`). See docs/design.md#packed-graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .layout import PackedGraph


def collate(graphs: Sequence[PackedGraph], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Pad packed graphs into batch tensors.

    Returns ``input_ids, position_ids, pred, loss_mask, seg_id`` (all ``[B, L]``;
    ``seg_id`` is -1 on padding, ``pred`` -1 on padding) and ``seg_vis``
    ``[B, S, S]``."""
    if not graphs:
        raise ValueError("collate needs at least one graph")
    B = len(graphs)
    L = max(len(g) for g in graphs)
    if pad_to_multiple_of:
        L = int(math.ceil(L / pad_to_multiple_of) * pad_to_multiple_of)
    S = max(g.num_segments for g in graphs)
    out = {
        "input_ids": torch.full((B, L), int(pad_id), dtype=torch.long),
        "position_ids": torch.zeros(B, L, dtype=torch.long),
        "pred": torch.full((B, L), -1, dtype=torch.long),
        "loss_mask": torch.zeros(B, L, dtype=torch.bool),
        "seg_id": torch.full((B, L), -1, dtype=torch.long),
        "seg_vis": torch.zeros(B, S, S, dtype=torch.bool),
    }
    for b, g in enumerate(graphs):
        n = len(g)
        out["input_ids"][b, :n] = g.input_ids
        out["position_ids"][b, :n] = g.position_ids
        out["pred"][b, :n] = g.pred
        out["loss_mask"][b, :n] = g.loss_mask
        out["seg_id"][b, :n] = g.seg_id
        s = g.num_segments
        out["seg_vis"][b, :s, :s] = g.seg_vis
    return out


def dense_mask(seg_id: torch.Tensor, seg_vis: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, 1, L, L]`` mask from segment ids ``[B, L]`` and ``seg_vis [B, S, S]``."""
    B, L = seg_id.shape
    valid = seg_id >= 0
    s = seg_id.clamp(min=0)
    idx = torch.arange(L, device=seg_id.device)
    causal = idx[None, :] <= idx[:, None]  # [L, L]
    same = s[:, :, None] == s[:, None, :]
    bidx = torch.arange(B, device=seg_id.device)[:, None, None]
    cross = seg_vis[bidx, s[:, :, None], s[:, None, :]]
    m = ((same & causal) | (cross & ~same)) & valid[:, :, None] & valid[:, None, :]
    m |= (~valid)[:, :, None] & torch.eye(L, dtype=torch.bool, device=seg_id.device)[None]
    return m[:, None]


def float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask (0 where attended, the dtype's minimum elsewhere) for ``eager``."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def attention_mask(batch: dict, attn_implementation: str, dtype: torch.dtype = torch.float32, block_size: int = 128):
    """The mask object the given attention implementation takes."""
    if attn_implementation == "flex_attention":
        return flex_block_mask(batch["seg_id"], batch["seg_vis"], block_size=block_size)
    m = dense_mask(batch["seg_id"], batch["seg_vis"])
    if attn_implementation == "sdpa":
        return m
    if attn_implementation == "eager":
        return float_mask(m, dtype)
    raise ValueError(
        f"attention implementation {attn_implementation!r} cannot take a packed-graph mask; "
        "use 'sdpa' or 'eager' (any device) or 'flex_attention' (GPU). flash-attention takes no custom masks."
    )


def segment_block_counts(seg_id: torch.Tensor, seg_vis: torch.Tensor, block_size: int) -> torch.Tensor:
    """Number of visible (query, key) pairs in every ``block x block`` tile:
    ``[B, nb, nb]`` long, computed from segment counts without an ``L x L`` tensor."""
    B, L = seg_id.shape
    S = seg_vis.shape[-1]
    nb = math.ceil(L / block_size)
    dev = seg_id.device
    counts = torch.zeros(B, nb, S + 1, dtype=torch.float64, device=dev)  # last column: padding
    blk = (torch.arange(L, device=dev) // block_size)[None].expand(B, L)
    col = torch.where(seg_id >= 0, seg_id, torch.full_like(seg_id, S))
    counts.index_put_(
        (torch.arange(B, device=dev)[:, None].expand(B, L), blk, col),
        torch.ones(B, L, dtype=torch.float64, device=dev),
        accumulate=True,
    )
    C = counts[..., :S]
    cross = (seg_vis & ~torch.eye(S, dtype=torch.bool, device=dev)).to(torch.float64)
    pairs = C @ cross @ C.transpose(1, 2)  # cross-segment visible pairs per tile
    # same segment: full product below the diagonal tile, triangle on it
    same = C @ C.transpose(1, 2)
    lower = torch.tril(torch.ones(nb, nb, dtype=torch.bool, device=dev), diagonal=-1)
    pairs = pairs + same * lower
    tri = (C * (C + 1) / 2).sum(-1)  # [B, nb]
    pad_diag = counts[..., S]  # padding tokens see themselves
    pairs = pairs + torch.diag_embed(tri + pad_diag)
    return pairs.round().long()


def flex_block_mask(seg_id: torch.Tensor, seg_vis: torch.Tensor, block_size: int = 128):
    """A flex-attention ``BlockMask`` for a packed batch, never materialising ``L x L``."""
    from torch.nn.attention.flex_attention import BlockMask

    B, L = seg_id.shape
    nb = math.ceil(L / block_size)
    pairs = segment_block_counts(seg_id, seg_vis, block_size)
    sizes = torch.full((nb,), block_size, dtype=torch.long, device=seg_id.device)
    sizes[-1] = L - block_size * (nb - 1)
    full_area = sizes[:, None] * sizes[None, :]
    full = pairs == full_area[None]
    partial = (pairs > 0) & ~full

    def to_indices(m: torch.Tensor):
        num = m.sum(-1).to(torch.int32)  # [B, nb]
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[:, None], order[:, None]  # head dim 1 (broadcast over heads)

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)
    seg = seg_id
    vis = seg_vis

    def mask_mod(b, h, q_idx, kv_idx):
        sq = seg[b, q_idx]
        sk = seg[b, kv_idx]
        same = (sq == sk) & (kv_idx <= q_idx) & (sq >= 0)
        cross = vis[b, sq.clamp(min=0), sk.clamp(min=0)] & (sq != sk) & (sq >= 0) & (sk >= 0)
        pad_self = (sq < 0) & (q_idx == kv_idx)
        return same | cross | pad_self

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(L, L)
    )


def mask_bytes(graph_or_batch) -> int:
    """Bytes of the segment-level representation (seg ids + S x S visibility)."""
    if isinstance(graph_or_batch, PackedGraph):
        g = graph_or_batch
        return g.seg_id.numel() * g.seg_id.element_size() + g.seg_vis.numel() * g.seg_vis.element_size()
    b = graph_or_batch
    return b["seg_id"].numel() * b["seg_id"].element_size() + b["seg_vis"].numel() * b["seg_vis"].element_size()
