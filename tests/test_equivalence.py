"""Equivalence invariant (docs/design.md#packed-graph): per-token log-probs of a
packed graph equal those of every request run as its own plain causal sequence."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model, random_trajectory

from parallel_reason.attention import collate
from parallel_reason.layout import JOIN_MODES, graph_from_text
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


# ---------------------------------------------------------------------------
# Join modes, from their definitions (not from the layout's segment tables)


class _Node:
    __slots__ = ("id", "pos", "sees", "train")

    def __init__(self, tid: int, pos: int, sees: frozenset, train: bool):
        self.id, self.pos, self.sees, self.train = tid, pos, sees, train


def definition_nodes(prompt_ids, items, join: str) -> list[_Node]:
    """Every token of a trajectory with its position and the set of earlier tokens it
    attends to, written from each join's definition:

    * a thread sees the prefix, the block head and its own tokens;
    * ``concat``: after ``</Parallel>`` the text reads on after thread 1: threads 2..n are
      read again as new tokens (positions continue), then the join;
    * ``tree``: the join sees every thread's tokens where they are and starts after the
      longest thread; nothing is read twice;
    * ``summary``: as ``tree``, but of each thread the join sees only its opener, its
      result (``<Result>`` to the end) and its ``</Thread>``, not its reasoning."""
    from parallel_reason.layout import Run, linear_ids

    nodes: list[_Node] = []
    shown: dict[int, range] = {}  # id(Run) of a result -> its nodes

    def add(ids, train, ctx: frozenset, pos: int) -> tuple[frozenset, int]:
        for t in ids:
            nodes.append(_Node(int(t), pos, ctx, train))
            ctx = ctx | {len(nodes) - 1}
            pos += 1
        return ctx, pos

    def seq(its, ctx, pos):
        for it in its:
            if isinstance(it, Run):
                n0 = len(nodes)
                ctx, pos = add(it.ids, it.train, ctx, pos)
                if it.result:
                    shown[id(it)] = range(n0, len(nodes))
                continue
            ctx, pos = add(it.head, True, ctx, pos)
            head_ctx, ends, seen = ctx, [], set(ctx)
            for t in it.threads:
                n0 = len(nodes)
                end = seq(t.body, *add(t.opener, False, head_ctx, pos))
                ends.append(end)
                seen |= set(range(n0, n0 + len(t.opener)))  # the opener
                seen |= {n for r in t.body if isinstance(r, Run) and r.result for n in shown[id(r)]}  # the result
                if t.closed:
                    seen.add(len(nodes) - 1)  # </Thread>
            if not it.joined:
                return ends[-1] if ends else (ctx, pos)
            if join == "summary":
                ctx, pos = add(it.closer, False, frozenset(seen), max(p for _, p in ends))
            elif join == "tree":
                seen = frozenset().union(*(c for c, _ in ends))
                ctx, pos = add(it.closer, False, seen, max(p for _, p in ends))
            else:
                ctx, pos = ends[0]
                reread = [x for t in it.threads[1:] for x in t.opener + linear_ids(t.body)]
                ctx, pos = add(reread + it.closer, False, ctx, pos)
        return ctx, pos

    ctx, pos = add(prompt_ids, False, frozenset(), 0)
    seq(items, ctx, pos)
    return nodes


def definition_logprobs(model, nodes: list[_Node]) -> list[float]:
    """Log-prob of every trained token, one request at a time: a token, everything it
    sees, and what those see in turn (a summary join's result tokens see reasoning the
    join does not), each with its own position and visibility, in one forward. The
    forward of a request's last token also gives the log-probs of the tokens in it."""
    lp: dict[int, float] = {}
    for k in reversed(range(len(nodes))):
        if not nodes[k].train or k in lp:
            continue
        closure, todo = set(), [k]
        while todo:
            for v in nodes[todo.pop()].sees:
                if v not in closure:
                    closure.add(v)
                    todo.append(v)
        sub = sorted(closure) + [k]
        where = {j: i for i, j in enumerate(sub)}
        m = torch.eye(len(sub), dtype=torch.bool)
        for i, j in enumerate(sub):
            for v in nodes[j].sees:
                m[i, where[v]] = True
        mask = m[None, None]
        if model.config._attn_implementation == "eager":  # eager takes an additive float mask
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        ids = torch.tensor([[nodes[j].id for j in sub]])
        pos = torch.tensor([[nodes[j].pos for j in sub]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, position_ids=pos, attention_mask=mask).logits[0].double(), -1)
        for j in sub:
            if nodes[j].train and j not in lp:
                pred = max(nodes[j].sees, key=lambda v: nodes[v].pos)  # the token right before j
                lp[j] = float(logp[where[pred], nodes[j].id])
    return [lp[k] for k in range(len(nodes)) if nodes[k].train]


@pytest.mark.parametrize("join", JOIN_MODES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_join_definition(tiny_tokenizer, join, attn):
    """Packed log-probs (batched, padded, nested blocks) equal, within 1e-4, a reference
    built token by token from the join mode's definition."""
    from parallel_reason.format import parse
    from parallel_reason.layout import build_graph, encode, tokenize_trajectory

    tok = tiny_tokenizer
    model = make_model(tok, attn=attn, seed=3)
    rng = random.Random(12)
    graphs, refs, texts, saved, hidden = [], [], [], 0, 0
    for k in range(3):
        text = random_trajectory(rng, depth=2, max_width=3, p_block=0.9, p_result=0.7)
        texts.append(text)
        prompt = encode(tok, f"Numbers: {k} 4\nTarget: 9\n")
        items = tokenize_trajectory(text, tok)
        g = build_graph(prompt, items, join)
        nodes = definition_nodes(prompt, items, join)
        # same tokens trained in the same order, at the positions the definition gives
        trained = torch.nonzero(g.loss_mask).flatten().tolist()
        assert [g.input_ids[i].item() for i in trained] == [n.id for n in nodes if n.train]
        assert [g.position_ids[i].item() for i in trained] == [n.pos for n in nodes if n.train]
        # no trained token sees more or less than its definition allows (by token identity and position)
        for i, n in zip(trained, [n for n in nodes if n.train]):
            got = sorted(
                (g.input_ids[j].item(), g.position_ids[j].item()) for j in torch.nonzero(g.visible(i))[:, 0] if j != i
            )
            assert got == sorted((nodes[j].id, nodes[j].pos) for j in n.sees)
        assert len(g) == len(nodes)  # tree, summary: every token stored once; concat: the re-read copies too
        saved += len(definition_nodes(prompt, items, "concat")) - len(g)
        if join == "summary":  # threads with and without a result; the reasoning hidden
            hidden += sum(len(nodes[j].sees) for j in range(len(nodes))) < sum(
                len(n.sees) for n in definition_nodes(prompt, items, "tree")
            )
        graphs.append(g)
        refs.append(definition_logprobs(model, nodes))
    assert saved > 0 if join != "concat" else saved == 0  # tree and summary read nothing twice
    assert hidden >= 2 if join == "summary" else hidden == 0
    threads = [t for text in texts for b, _ in parse(text).blocks() for t in b.threads]
    assert {t.result is None for t in threads} == {True, False}  # threads with and without a result
    assert sum(g.num_segments > 3 for g in graphs) >= 2 and len({len(g) for g in graphs}) > 1  # nested, padded
    batch = collate(graphs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        packed = packed_logprobs(model, batch).double()
    worst = max(
        abs(float(packed[b, i]) - r)
        for b, g in enumerate(graphs)
        for i, r in zip(torch.nonzero(g.loss_mask).flatten().tolist(), refs[b])
    )
    assert worst <= TOL, f"max abs diff {worst:.2e} > {TOL}"
