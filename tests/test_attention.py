"""Packed batches and their attention masks (parallel_reason.attention), and the
no-leakage invariant of docs/design.md#packed-graph: no trained token sees a sibling
thread, no token is trained twice, trained tokens = sampled tokens."""

from __future__ import annotations

import random
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import random_trajectory

from parallel_reason.attention import (
    attention_mask,
    collate,
    dense_mask,
    flex_block_mask,
    float_mask,
    mask_bytes,
    segment_block_counts,
)
from parallel_reason.layout import JOIN_MODES, Run, build_graph, encode, sampled_count, tokenize_trajectory
from parallel_reason.metrics import stats_from_ids


def _graphs(tok, n=4, seed=0, p_block=0.9, depth=2, join="concat"):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        items = tokenize_trajectory(
            random_trajectory(rng, depth=depth, max_width=4, p_block=p_block, p_result=0.5), tok
        )
        out.append(build_graph(encode(tok, f"Numbers: {k} 3\nTarget: 7\n"), items, join))
    return out


@pytest.fixture(scope="module", params=JOIN_MODES)
def graphs(tiny_tokenizer, request):
    gs = _graphs(tiny_tokenizer, n=5, seed=3, join=request.param)
    assert len({len(g) for g in gs}) > 1 and max(g.num_segments for g in gs) > 5
    return gs


# ---------------------------------------------------------------------------
# collate


def test_collate_fields_and_padding(graphs, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    b = collate(graphs, pad_id=pad)
    B, L = len(graphs), max(len(g) for g in graphs)
    S = max(g.num_segments for g in graphs)
    for k in ("input_ids", "position_ids", "pred", "loss_mask", "seg_id"):
        assert b[k].shape == (B, L), k
    assert b["seg_vis"].shape == (B, S, S)
    assert b["loss_mask"].dtype == torch.bool
    for i, g in enumerate(graphs):
        n = len(g)
        assert torch.equal(b["input_ids"][i, :n], g.input_ids)
        assert torch.equal(b["pred"][i, :n], g.pred)
        assert torch.equal(b["position_ids"][i, :n], g.position_ids)
        assert torch.equal(b["loss_mask"][i, :n], g.loss_mask)
        assert torch.equal(b["seg_id"][i, :n], g.seg_id)
        s = g.num_segments
        assert torch.equal(b["seg_vis"][i, :s, :s], g.seg_vis)
        assert not b["seg_vis"][i, s:].any() and not b["seg_vis"][i, :, s:].any()
        # padding: pad id, never trained, no predecessor, segment -1
        assert (b["input_ids"][i, n:] == pad).all()
        assert not b["loss_mask"][i, n:].any()
        assert (b["pred"][i, n:] == -1).all()
        assert (b["seg_id"][i, n:] == -1).all()


def test_collate_pad_to_multiple_and_errors(graphs):
    b = collate(graphs, pad_id=0, pad_to_multiple_of=64)
    assert b["input_ids"].shape[1] % 64 == 0 and b["input_ids"].shape[1] >= max(len(g) for g in graphs)
    one = collate(graphs[:1], pad_id=0)
    assert one["input_ids"].shape == (1, len(graphs[0]))
    assert (one["seg_id"] >= 0).all()  # no padding for a single graph
    with pytest.raises(ValueError):
        collate([], pad_id=0)


# ---------------------------------------------------------------------------
# dense / float masks


def test_dense_mask_matches_graph_and_padding_rows(graphs):
    b = collate(graphs, pad_id=0, pad_to_multiple_of=16)
    m = dense_mask(b["seg_id"], b["seg_vis"])
    B, L = b["seg_id"].shape
    assert m.shape == (B, 1, L, L) and m.dtype == torch.bool
    eye = torch.eye(L, dtype=torch.bool)
    for i, g in enumerate(graphs):
        n = len(g)
        assert torch.equal(m[i, 0, :n, :n], g.dense_mask())
        assert not m[i, 0, :n, n:].any(), "a real token sees padding"
        # padding rows see exactly themselves (never an empty row: softmax would be NaN)
        assert torch.equal(m[i, 0, n:, :], eye[n:])
        assert (m[i, 0].sum(-1) >= 1).all()
        # causal: nothing sees the future
        assert not torch.triu(m[i, 0], diagonal=1).any()


def test_float_mask_and_dispatch(graphs):
    b = collate(graphs[:2], pad_id=0)
    m = dense_mask(b["seg_id"], b["seg_vis"])
    f = float_mask(m, torch.float32)
    assert f.dtype == torch.float32
    assert (f[m] == 0).all() and (f[~m] == torch.finfo(torch.float32).min).all()
    assert torch.equal(attention_mask(b, "sdpa"), m)
    assert torch.equal(attention_mask(b, "eager", torch.bfloat16), float_mask(m, torch.bfloat16))
    with pytest.raises(ValueError, match="flash"):
        attention_mask(b, "flash_attention_2")


def test_mask_bytes(graphs):
    g = graphs[0]
    assert mask_bytes(g) == len(g) * 8 + g.num_segments**2
    b = collate(graphs, pad_id=0)
    assert mask_bytes(b) == b["seg_id"].numel() * 8 + b["seg_vis"].numel()


# ---------------------------------------------------------------------------
# flex-attention BlockMask (built from segments, never L x L)


@pytest.mark.parametrize("block", [16, 32, 128, 1024])
def test_segment_block_counts_match_dense(graphs, block):
    b = collate(graphs, pad_id=0)
    m = dense_mask(b["seg_id"], b["seg_vis"])[:, 0].long()
    B, L = b["seg_id"].shape
    nb = -(-L // block)
    padded = F.pad(m, (0, nb * block - L, 0, nb * block - L))
    ref = padded.view(B, nb, block, nb, block).sum((2, 4))
    got = segment_block_counts(b["seg_id"], b["seg_vis"], block)
    assert got.shape == (B, nb, nb)
    assert torch.equal(got, ref)


def _kernel_view(bm, L: int) -> torch.Tensor:
    """What a block-sparse kernel computes from a BlockMask: full blocks attended
    without calling mask_mod, partial blocks through mask_mod, others skipped."""
    from torch.nn.attention.flex_attention import create_mask

    B = bm.kv_num_blocks.shape[0]
    bs_q, bs_kv = bm.BLOCK_SIZE
    elem = create_mask(bm.mask_mod, B, 1, L, L, device="cpu")[:, 0]
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        for qb in range(bm.kv_num_blocks.shape[2]):
            qs = slice(qb * bs_q, min((qb + 1) * bs_q, L))
            for j in range(int(bm.kv_num_blocks[b, 0, qb])):
                kb = int(bm.kv_indices[b, 0, qb, j])
                ks = slice(kb * bs_kv, min((kb + 1) * bs_kv, L))
                out[b, qs, ks] = elem[b, qs, ks]
            for j in range(int(bm.full_kv_num_blocks[b, 0, qb])):
                kb = int(bm.full_kv_indices[b, 0, qb, j])
                ks = slice(kb * bs_kv, min((kb + 1) * bs_kv, L))
                assert not out[b, qs, ks].any(), "a block is both partial and full"
                out[b, qs, ks] = True
    return out


@pytest.mark.parametrize("block", [16, 64])
def test_flex_block_mask_structure(graphs, block):
    from torch.nn.attention.flex_attention import create_mask

    b = collate(graphs, pad_id=0)
    B, L = b["seg_id"].shape
    m = dense_mask(b["seg_id"], b["seg_vis"])[:, 0]
    bm = flex_block_mask(b["seg_id"], b["seg_vis"], block_size=block)
    # element level: mask_mod == dense mask
    assert torch.equal(create_mask(bm.mask_mod, B, 1, L, L, device="cpu")[:, 0], m)
    # block level: partial blocks are mixed, full blocks all True, skipped blocks all False
    nb = -(-L // block)
    tiles = F.pad(m.long(), (0, nb * block - L, 0, nb * block - L)).view(B, nb, block, nb, block).sum((2, 4))
    sizes = torch.tensor([min(block, L - i * block) for i in range(nb)])
    area = sizes[:, None] * sizes[None, :]
    dense_blocks = bm.to_dense()[:, 0].bool()  # partial or full
    assert torch.equal(dense_blocks, tiles > 0)
    for bi in range(B):
        for qb in range(nb):
            full = set(bm.full_kv_indices[bi, 0, qb, : int(bm.full_kv_num_blocks[bi, 0, qb])].tolist())
            part = set(bm.kv_indices[bi, 0, qb, : int(bm.kv_num_blocks[bi, 0, qb])].tolist())
            assert full == {kb for kb in range(nb) if tiles[bi, qb, kb] == area[qb, kb]}
            assert part == {kb for kb in range(nb) if 0 < tiles[bi, qb, kb] < area[qb, kb]}
    # a block-sparse kernel reading this BlockMask attends exactly the dense mask
    assert torch.equal(_kernel_view(bm, L), m)


def test_flex_attention_matches_sdpa(graphs):
    from torch.nn.attention.flex_attention import flex_attention

    b = collate(graphs[:3], pad_id=0)
    B, L = b["seg_id"].shape
    m = dense_mask(b["seg_id"], b["seg_vis"])
    bm = flex_block_mask(b["seg_id"], b["seg_vis"], block_size=32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 2, L, 16, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": the unfused reference path
        out = flex_attention(q, k, v, block_mask=bm)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())
    # padding rows attend only to themselves: their output is their own value
    for i, gr in enumerate(graphs[:3]):
        n = len(gr)
        assert torch.allclose(out[i, :, n:], v[i, :, n:], atol=1e-6)


@pytest.mark.slow
def test_flex_attention_compiled_cpu(graphs):
    """The fused (block-sparse) kernel, compiled for CPU, against sdpa with the dense mask."""
    from torch.nn.attention.flex_attention import flex_attention

    b = collate(graphs[:2], pad_id=0, pad_to_multiple_of=32)
    B, L = b["seg_id"].shape
    m = dense_mask(b["seg_id"], b["seg_vis"])
    bm = flex_block_mask(b["seg_id"], b["seg_vis"], block_size=32)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, 2, L, 16, generator=g) for _ in range(3))
    try:
        out = torch.compile(flex_attention)(q, k, v, block_mask=bm)
    except Exception as e:  # no C++ toolchain, unsupported CPU...
        pytest.skip(f"torch.compile(flex_attention) unavailable on this CPU: {type(e).__name__}: {e}")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())


# ---------------------------------------------------------------------------
# Invariant 2: no leakage


def _flat(items) -> tuple:
    """Linear text of a token tree (what the continuation after a join re-reads)."""
    out: list[int] = []
    for it in items:
        if isinstance(it, Run):
            out += it.ids
        else:
            out += it.head
            for t in it.threads:
                out += list(t.opener) + list(_flat(t.body))
            out += it.closer
    return tuple(out)


def _expected(prompt: tuple, items) -> tuple[list[tuple], list[dict]]:
    """Reference written from the token tree alone (not from layout's builder):
    every sampled token as its full id path (context + itself) under concat
    semantics, and for every block the paths of each thread's own tokens."""
    sampled: list[tuple] = []
    blocks: list[dict] = []

    def seq(items, ctx: tuple) -> tuple:
        for it in items:
            if isinstance(it, Run):
                for t in it.ids:
                    ctx = ctx + (t,)
                    if it.train:
                        sampled.append(ctx)
            else:
                for t in it.head:
                    ctx = ctx + (t,)
                    sampled.append(ctx)
                fork = ctx
                rec = {"fork_len": len(fork), "threads": []}
                blocks.append(rec)
                for th in it.threads:
                    start = len(sampled)
                    seq(th.body, fork + tuple(th.opener))
                    rec["threads"].append(sampled[start:])
                for th in it.threads:
                    ctx = ctx + tuple(th.opener) + _flat(th.body)
                ctx = ctx + tuple(it.closer)
        return ctx

    seq(items, tuple(prompt))
    return sampled, blocks


@pytest.mark.parametrize("seed", range(5))
def test_no_leakage_random_nested(tiny_tokenizer, seed):
    tok = tiny_tokenizer
    rng = random.Random(100 + seed)
    trees, graphs = [], []
    for k in range(3):
        text = random_trajectory(rng, depth=3, max_width=4, p_block=0.9)
        items = tokenize_trajectory(text, tok)
        prompt = encode(tok, f"Numbers: {seed} {k}\nTarget: 9\n")
        trees.append((prompt, items))
        graphs.append(build_graph(prompt, items))
    batch = collate(graphs, pad_id=tok.pad_token_id)
    dm = dense_mask(batch["seg_id"], batch["seg_vis"])[:, 0]
    n_blocks = 0
    for bi, ((prompt, items), g) in enumerate(zip(trees, graphs)):
        ids = g.input_ids.tolist()
        trained = torch.nonzero(g.loss_mask).flatten().tolist()
        # counts: graph loss mask == token-tree sampled count == metrics on the same ids
        assert len(trained) == sampled_count(items)
        assert len(trained) == stats_from_ids(list(_flat(items)), tok).total_tokens
        # the set of trained tokens is exactly the set of sampled tokens (each once,
        # with exactly the context the runner decodes it in)
        path_of = {i: tuple(ids[j] for j in g.ancestors(i)) for i in trained}
        want, blocks = _expected(tuple(prompt), items)
        assert Counter(path_of.values()) == Counter(want)
        assert len(set(path_of.values())) == len(trained), "a token is trained twice"
        node_of = {p: i for i, p in path_of.items()}
        # every trained token sees exactly its ancestor path (graph relation and batch mask)
        n = len(g)
        anc = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(g.pred.tolist()):  # parents precede children
            if p >= 0:
                anc[i] = anc[p]
            anc[i, i] = True
        t = torch.tensor(trained)
        assert torch.equal(dm[bi, t, :n], anc[t]) and not dm[bi, t, n:].any()
        for i in trained[:: max(1, len(trained) // 25)]:
            assert torch.equal(g.visible(i), anc[i])
        # no trained token sees a sibling thread's own branch (opener + body), the
        # branches being taken from the token tree
        for rec in blocks:
            if len(rec["threads"]) < 2:
                continue
            n_blocks += 1
            branch = []
            for paths in rec["threads"]:
                nodes = {node_of[p] for p in paths}
                if paths:  # the opener: ancestors of the thread's first token after the fork
                    nodes |= set(g.ancestors(node_of[paths[0]])[rec["fork_len"] :])
                branch.append(nodes)
            for j, paths in enumerate(rec["threads"]):
                others = set().union(*(b for k, b in enumerate(branch) if k != j))
                if not others:
                    continue
                rows = dm[bi, [node_of[p] for p in paths]][:, sorted(others)]
                assert not rows.any(), f"a token of thread {j + 1} sees a sibling thread"
    assert n_blocks > 0


@pytest.mark.slow
def test_flex_attention_model_logprobs_match_sdpa(tiny_tokenizer, graphs):
    """A Qwen2 with attn_implementation="flex_attention" fed the segment-built BlockMask
    (through packed_logprobs, i.e. transformers' own compiled flex path) gives the same
    per-token log-probs as the sdpa model with the dense mask."""
    from conftest import make_model

    from parallel_reason.logprobs import packed_logprobs

    b = collate(graphs[:2], pad_id=tiny_tokenizer.pad_token_id, pad_to_multiple_of=128)
    sdpa = make_model(tiny_tokenizer, attn="sdpa", seed=3)
    try:
        flex = make_model(tiny_tokenizer, attn="flex_attention", seed=3)
        with torch.no_grad():
            got = packed_logprobs(flex, b)
    except Exception as e:  # no C++ toolchain for inductor, etc.
        pytest.skip(f"flex_attention unavailable on this CPU: {type(e).__name__}: {e}")
    with torch.no_grad():
        ref = packed_logprobs(sdpa, b)
    assert torch.allclose(got, ref, atol=1e-4), float((got - ref).abs().max())
