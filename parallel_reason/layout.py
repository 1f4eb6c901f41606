"""Trajectory -> token tree -> packed graph: the one layout that the trainers train and
the runner decodes.

:func:`tokenize_trajectory` builds the token tree (sampled runs; the thread openers
and join the runner writes, never trained); :func:`build_graph` lays it out as a
:class:`PackedGraph` (ids, predecessors, positions, loss mask, segment-level
visibility) for join mode ``concat``. Layout, re-read and the tested invariants:
docs/design.md#packed-graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .format import (
    CANONICAL_THREAD_SEP,
    OUTLINE_CLOSE,
    OUTLINE_OPEN,
    OUTLINES_CLOSE,
    OUTLINES_OPEN,
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    RESULT,
    THREAD_CLOSE,
    THREAD_OPEN,
    Block,
    Trajectory,
    canonicalize,
    parse,
)

#: how the continuation after ``</Parallel>`` reads the threads (docs/design.md#joins):
#: ``concat`` re-reads threads 2..n after thread 1 (a causal reading of the text);
#: ``tree`` attends to every thread's tokens where they are (KV merge, nothing re-read);
#: ``summary`` attends, where they are, only to each thread's opener, its result (from
#: ``<Result>``) and its ``</Thread>``: the reasoning stays hidden (APR's semantics)
JOIN_MODES = ("concat", "tree", "summary")


def check_join(join: str) -> str:
    if join not in JOIN_MODES:
        raise ValueError(f"join mode {join!r} is not available; choose one of {JOIN_MODES}")
    return join


#: what the runner writes after ``<Thread>``: ``index`` = ``"i:"``; ``outline`` = the
#: thread's own outline (``"i: plan"``), copied from the block head, so a thread reads
#: its plan locally instead of finding outline ``i`` among its siblings'
THREAD_HEADERS = ("index", "outline")


def check_thread_header(thread_header: str) -> str:
    if thread_header not in THREAD_HEADERS:
        raise ValueError(f"thread_header must be one of {THREAD_HEADERS}, got {thread_header!r}")
    return thread_header


# ---------------------------------------------------------------------------
# Token tree


@dataclass
class Run:
    """Consecutive tokens with one role: ``train`` True if the model sampled them."""

    ids: list[int]
    train: bool = True
    logprobs: list[float] | None = None  # sampling log-probs recorded by the runner
    result: bool = False  # a thread's result: from its <Result> to its end (last Run of the body)


@dataclass
class TThread:
    opener: list[int]  # runner-written: separator, <Thread>, header ("i:" or the outline "i: plan")
    body: list  # list of Run | TBlock, sampled, ends with </Thread> when closed
    closed: bool = True


@dataclass
class TBlock:
    head: list[int]  # sampled: <Parallel> ... </Outlines> (the fork point is its last token)
    threads: list[TThread] = field(default_factory=list)
    closer: list[int] = field(default_factory=list)  # runner-written join text; [] if never joined
    head_logprobs: list[float] | None = None  # sampling log-probs of ``head`` (runner)

    @property
    def joined(self) -> bool:
        return bool(self.closer)


TItem = Run | TBlock


def encode(tokenizer, text: str) -> list[int]:
    """Ids of a text piece, no special tokens added. Every piece of a trajectory is
    encoded on its own, split at control tags, so that runner and trainer agree."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def opener_ids(tokenizer, i: int, outline_ids: Sequence[int] | None = None) -> list[int]:
    """What the runner writes to open thread ``i`` (1-based): the header ``"i:"``, or,
    given ``outline_ids`` (thread header mode ``outline``), the outline's own tokens."""
    head = list(outline_ids) if outline_ids is not None else encode(tokenizer, f"{i}:")
    return encode(tokenizer, CANONICAL_THREAD_SEP) + [_tag(tokenizer, THREAD_OPEN)] + head


def closer_ids(tokenizer) -> list[int]:
    """What the runner writes at the join."""
    return encode(tokenizer, CANONICAL_THREAD_SEP) + [_tag(tokenizer, PARALLEL_CLOSE)]


def _tag(tokenizer, tag: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(tag)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no token for {tag}; call parallel_reason.tokens.add_control_tokens")
    return int(tid)


def tokenize_trajectory(
    traj: Trajectory | str, tokenizer, eos: bool = True, thread_header: str = "index"
) -> list[TItem]:
    """Token tree of a well-formed completion (text or parsed). Separators the runner
    writes are canonicalised first (see :func:`parallel_reason.format.canonicalize`).
    With ``eos`` the tokenizer's EOS token is appended as a sampled token. With
    ``thread_header="outline"`` every thread's text must start by restating its outline
    (``<Thread>i: plan ...`` for outline ``i: plan``); that restatement is the opener."""
    check_thread_header(thread_header)
    if isinstance(traj, str):
        traj = parse(traj)
    traj = canonicalize(traj)
    items = _tok_seq(traj.parts, tokenizer, thread_header)
    if eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("eos=True but the tokenizer has no eos_token_id")
        _append_run(items, [int(tokenizer.eos_token_id)], True)
    return items


def _append_run(items: list, ids: list[int], train: bool) -> None:
    if not ids:
        return
    if items and isinstance(items[-1], Run) and items[-1].train == train:
        items[-1].ids.extend(ids)
    else:
        items.append(Run(list(ids), train))


def _append_text(items: list, text: str, tok) -> None:
    """A sampled text piece; from a ``<Result>`` on, its own Run marked ``result``."""
    head, sep, rest = text.partition(RESULT)
    _append_run(items, encode(tok, head), True)
    if sep:
        items.append(Run(encode(tok, sep + rest), True, result=True))


def _tok_seq(parts: list, tok, thread_header: str = "index") -> list[TItem]:
    items: list[TItem] = []
    for p in parts:
        if isinstance(p, Block):
            items.append(_tok_block(p, tok, thread_header))
        else:
            _append_text(items, p, tok)
    return items


def _restated_body(parts: list, outline: str, header: str, i: int) -> list:
    """The thread's parts without the restatement of its outline (header mode ``outline``)."""
    plan = outline[len(header) :] if outline.startswith(header) else None
    first = parts[0] if parts and isinstance(parts[0], str) else ""
    if plan is None or not first.startswith(plan):
        raise ValueError(
            f"thread {i} does not restate its outline {outline!r} (thread_header: outline "
            f"needs '<Thread>{outline} ...'; data_gen.countdown --restate writes that form)"
        )
    rest = first[len(plan) :]
    return ([rest] if rest else []) + list(parts[1:])


def _tok_block(b: Block, tok, thread_header: str = "index") -> TBlock:
    assert isinstance(b.pre_outlines, str)  # a parsed text block (token pieces are the parser's internals)
    head = [_tag(tok, PARALLEL_OPEN)] + encode(tok, b.pre_outlines) + [_tag(tok, OUTLINES_OPEN)]
    outline_ids = []
    for i, o in enumerate(b.outlines):
        outline_ids.append(encode(tok, o))
        head += (
            encode(tok, b.outline_seps[i]) + [_tag(tok, OUTLINE_OPEN)] + outline_ids[-1] + [_tag(tok, OUTLINE_CLOSE)]
        )
    head += encode(tok, b.outline_seps[len(b.outlines)]) + [_tag(tok, OUTLINES_CLOSE)]
    threads = []
    for i, t in enumerate(b.threads, 1):
        parts = t.parts
        if thread_header == "outline":
            parts = _restated_body(parts, b.outlines[i - 1], t.header, i)
        body = _tok_seq(parts, tok, thread_header)
        _append_run(body, [_tag(tok, THREAD_CLOSE)], True)
        threads.append(
            TThread(opener=opener_ids(tok, i, outline_ids[i - 1] if thread_header == "outline" else None), body=body)
        )
    return TBlock(head=head, threads=threads, closer=closer_ids(tok))


def linear_ids(items: Sequence[TItem]) -> list[int]:
    """The completion as one flat token sequence (concat form: what the text reads)."""
    out: list[int] = []
    for it in items:
        if isinstance(it, Run):
            out += it.ids
        else:
            out += it.head
            for t in it.threads:
                out += t.opener + linear_ids(t.body)
            out += it.closer
    return out


def sampled_count(items: Sequence[TItem]) -> int:
    """Number of sampled tokens of a token tree."""
    n = 0
    for it in items:
        if isinstance(it, Run):
            n += len(it.ids) if it.train else 0
        else:
            n += len(it.head) + sum(sampled_count(t.body) for t in it.threads)
    return n


def critical_path_count(items: Sequence[TItem]) -> int:
    """Sampled tokens on the longest causal chain of a token tree (same definition as
    :func:`parallel_reason.metrics.critical_path`, counted in real token ids)."""
    n = 0
    for it in items:
        if isinstance(it, Run):
            n += len(it.ids) if it.train else 0
        else:
            n += len(it.head) + max((critical_path_count(t.body) for t in it.threads), default=0)
    return n


def block_counts(items: Sequence[TItem]) -> tuple[int, int]:
    """``(blocks, threads)`` of a token tree, nested blocks included."""
    blocks = threads = 0
    for it in items:
        if not isinstance(it, Run):
            blocks += 1
            threads += len(it.threads)
            for t in it.threads:
                b, th = block_counts(t.body)
                blocks += b
                threads += th
    return blocks, threads


# ---------------------------------------------------------------------------
# Packed graph


@dataclass
class PackedGraph:
    """One trajectory laid out for a single forward pass.

    ``pred[i]`` is the index of the token whose logits predict token ``i`` (-1 for
    the first); ``seg_id[i]`` its segment; ``seg_vis[s, t]`` True if segment ``s``
    sees all of segment ``t`` (``seg_vis[s, s]`` is True; inside a segment attention
    is causal). ``prompt_len`` tokens of prompt come first.
    """

    input_ids: torch.Tensor  # [L] long
    pred: torch.Tensor  # [L] long
    position_ids: torch.Tensor  # [L] long
    loss_mask: torch.Tensor  # [L] bool
    seg_id: torch.Tensor  # [L] long
    seg_vis: torch.Tensor  # [S, S] bool
    prompt_len: int
    join: str = "concat"
    sample_logprobs: torch.Tensor | None = None  # [L] float: log-probs recorded while sampling (0 elsewhere)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_segments(self) -> int:
        return int(self.seg_vis.shape[0])

    def visible(self, i: int) -> torch.Tensor:
        """Bool [L]: which tokens token ``i`` attends to (for tests and debugging)."""
        s = self.seg_id
        same = (s == s[i]) & (torch.arange(len(self)) <= i)
        return same | (self.seg_vis[s[i]][s] & (s != s[i]))

    def dense_mask(self) -> torch.Tensor:
        """Bool [L, L] visibility (row = query). O(L^2): for small L and tests."""
        s = self.seg_id
        idx = torch.arange(len(self))
        same = (s[:, None] == s[None, :]) & (idx[None, :] <= idx[:, None])
        cross = self.seg_vis[s[:, None], s[None, :]] & (s[:, None] != s[None, :])
        return same | cross

    def ancestors(self, i: int) -> list[int]:
        """Path from the root to token ``i`` (inclusive), following ``pred``."""
        path = []
        p = self.pred.tolist()
        while i >= 0:
            path.append(i)
            i = p[i]
        return path[::-1]

    def leaves(self) -> list[int]:
        has_child = torch.zeros(len(self), dtype=torch.bool)
        pr = self.pred[self.pred >= 0]
        has_child[pr] = True
        return torch.nonzero(~has_child).flatten().tolist()

    def requests(self) -> list[tuple[list[int], list[int]]]:
        """The (context, completion) requests of the trajectory as node-index lists:
        every maximal chain of trained tokens that starts after an untrained token
        (prompt, thread opener, join) is one request; its context is its ancestor path."""
        lm = self.loss_mask.tolist()
        pred = self.pred.tolist()
        children: dict[int, list[int]] = {}
        for i, p in enumerate(pred):
            children.setdefault(p, []).append(i)
        out = []
        for i in range(len(self)):
            if not lm[i] or (pred[i] >= 0 and lm[pred[i]]):
                continue
            comp = [i]
            while True:
                nxt = [c for c in children.get(comp[-1], []) if lm[c]]
                if len(nxt) != 1:
                    break
                comp.append(nxt[0])
            ctx = self.ancestors(pred[i]) if pred[i] >= 0 else []
            out.append((ctx, comp))
        return out


class _Builder:
    def __init__(self, join: str = "concat") -> None:
        self.join = join
        self.joins: dict[int, list[int]] = {}  # join node -> the thread ends it also sees (tree)
        self.peeks: dict[int, list[int]] = {}  # join node -> nodes whose segment alone it sees (summary)
        self.breaks: set[int] = set()  # nodes that start a segment although they continue a chain
        self.ids: list[int] = []
        self.pred: list[int] = []
        self.pos: list[int] = []
        self.loss: list[bool] = []
        self.lp: list[float] = []
        self.has_lp = False

    def chain(
        self,
        ids: Sequence[int],
        train: bool,
        parent: int,
        logprobs: Sequence[float] | None = None,
        start: int | None = None,
    ) -> int:
        """Append ``ids`` after node ``parent`` (positions from ``start``, default the
        parent's + 1); returns the last node."""
        if logprobs is not None:
            if len(logprobs) != len(ids):
                raise ValueError(f"{len(logprobs)} log-probs for {len(ids)} tokens")
            self.has_lp = True
        for k, t in enumerate(ids):
            node = len(self.ids)
            self.lp.append(float(logprobs[k]) if logprobs is not None else 0.0)
            self.ids.append(int(t))
            self.pred.append(parent)
            if k == 0 and start is not None:
                self.pos.append(start)
            else:
                self.pos.append(self.pos[parent] + 1 if parent >= 0 else 0)
            self.loss.append(bool(train))
            parent = node
        return parent

    def seq(self, items: Sequence[TItem], parent: int) -> int:
        for it in items:
            if isinstance(it, Run):
                parent = self.chain(it.ids, it.train, parent, it.logprobs)
            else:
                parent = self.block(it, parent)
        return parent

    def summary_thread(self, t: TThread, start: int, seen: list[int]) -> int:
        """A thread's body for the summary join: the reasoning, the result and the
        ``</Thread>`` each start a segment; the join sees the opener's, the result's and
        the ``</Thread>``'s segments alone (``seen``), never the reasoning's."""
        seen.append(start)
        body = list(t.body)
        close = None
        last = body[-1] if body else None
        if t.closed and isinstance(last, Run) and last.train and last.ids:
            lp = last.logprobs
            body[-1] = Run(last.ids[:-1], True, lp[:-1] if lp is not None else None, last.result)
            close = Run(last.ids[-1:], True, lp[-1:] if lp is not None else None)
        node = start
        self.breaks.add(len(self.ids))
        for it in body:
            if isinstance(it, Run) and it.result and it.ids:
                self.breaks.add(len(self.ids))
                seen.append(len(self.ids))
            node = self.seq([it], node)
        if close is not None:
            self.breaks.add(len(self.ids))
            seen.append(len(self.ids))
            node = self.seq([close], node)
        return node

    def block(self, b: TBlock, parent: int) -> int:
        fork = self.chain(b.head, True, parent, b.head_logprobs)
        ends = []
        seen: list[int] = []
        for t in b.threads:
            start = self.chain(t.opener, False, fork)
            ends.append(self.summary_thread(t, start, seen) if self.join == "summary" else self.seq(t.body, start))
        if not b.joined:
            # never joined (truncated rollout): nothing reads the threads afterwards
            return ends[-1] if ends else fork
        if self.join == "tree" and ends:
            # the join sees every thread where it is and starts after the longest one
            first = len(self.ids)
            last = self.chain(b.closer, False, ends[-1], start=max(self.pos[e] for e in ends) + 1)
            self.joins[first] = ends[:-1]
            return last
        if self.join == "summary" and ends:
            # the join follows the block head and sees each thread's opener, result and
            # </Thread> where they are; it starts after the longest thread, as in tree
            first = len(self.ids)
            last = self.chain(b.closer, False, fork, start=max(self.pos[e] for e in ends) + 1)
            self.peeks[first] = seen
            return last
        cur = ends[0] if ends else fork
        for t in b.threads[1:]:
            cur = self.chain(t.opener + linear_ids(t.body), False, cur)
        return self.chain(b.closer, False, cur)


def build_graph(prompt_ids: Sequence[int], items: Sequence[TItem], join: str = "concat") -> PackedGraph:
    """Lay out a prompt and a completion token tree as a packed graph."""
    b = _Builder(check_join(join))
    last = b.chain(prompt_ids, False, -1)
    b.seq(items, last)
    return _finish(b, len(prompt_ids), join)


def _finish(b: _Builder, prompt_len: int, join: str) -> PackedGraph:
    L = len(b.ids)
    if L == 0:
        raise ValueError("empty trajectory: no prompt and no completion tokens")
    nchild = [0] * L
    for p in b.pred:
        if p >= 0:
            nchild[p] += 1
    seg = [0] * L
    seg_parent = [-1]
    seg_joins: dict[int, list[int]] = {}  # segment -> the other segments a join also sees
    seg_peeks: dict[int, list[int]] = {}  # segment -> segments a summary join sees alone
    for i in range(1, L):
        p = b.pred[i]
        if p == i - 1 and nchild[p] == 1 and i not in b.joins and i not in b.peeks and i not in b.breaks:
            seg[i] = seg[i - 1]
        else:
            seg[i] = len(seg_parent)
            seg_parent.append(seg[p] if p >= 0 else -1)
            if i in b.joins:
                seg_joins[seg[i]] = [seg[e] for e in b.joins[i]]
            if i in b.peeks:
                seg_peeks[seg[i]] = [seg[e] for e in b.peeks[i]]
    S = len(seg_parent)
    vis = torch.zeros(S, S, dtype=torch.bool)
    for s in range(S):
        vis[s, s] = True
        for par in [seg_parent[s], *seg_joins.get(s, [])]:
            if par >= 0:
                vis[s] |= vis[par]  # parents precede children, so vis[par] is complete
        for q in seg_peeks.get(s, []):
            vis[s, q] = True  # the segment itself, not what it sees
    return PackedGraph(
        input_ids=torch.tensor(b.ids, dtype=torch.long),
        pred=torch.tensor(b.pred, dtype=torch.long),
        position_ids=torch.tensor(b.pos, dtype=torch.long),
        loss_mask=torch.tensor(b.loss, dtype=torch.bool),
        seg_id=torch.tensor(seg, dtype=torch.long),
        seg_vis=vis,
        prompt_len=prompt_len,
        join=join,
        sample_logprobs=torch.tensor(b.lp, dtype=torch.float32) if b.has_lp else None,
    )


def linear_graph(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> PackedGraph:
    """Plain causal layout (the sequential baseline): one segment, every completion token trained."""
    return build_graph(prompt_ids, [Run(list(completion_ids), True)] if completion_ids else [])


def graph_from_text(
    prompt: str,
    completion: str,
    tokenizer,
    join: str = "concat",
    eos: bool = True,
    sequential: bool = False,
    thread_header: str = "index",
) -> PackedGraph:
    """Convenience: text prompt + completion -> packed graph. With ``sequential`` the
    completion is trained as plain causal text (tags, if any, are ordinary tokens)."""
    prompt_ids = encode(tokenizer, prompt)
    if sequential:
        ids = encode(tokenizer, completion) + ([int(tokenizer.eos_token_id)] if eos else [])
        return linear_graph(prompt_ids, ids)
    return build_graph(
        prompt_ids, tokenize_trajectory(completion, tokenizer, eos=eos, thread_header=thread_header), join
    )
