"""Engine-agnostic fork/join scheduler. One :class:`RolloutState` per rollout knows the
grammar, the budgets (:class:`RunLimits`) and the token tree, and nothing about KV
caches, batches or masks. A backend feeds the pending tokens of every live
:class:`Lane` and hands each sampled token to :meth:`RolloutState.advance`:
``</Outlines>`` forks one lane per outline, the last ``</Thread>`` joins (concat
re-read, tree or summary in place), a stray tag stops the rollout (:data:`FINISH_REASONS`). State machine,
backend interface, mapping onto prefix-caching engines: docs/design.md#runner.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..finish import EXTERNAL_REASONS, FINISH_REASONS
from ..format import OUTLINE_CLOSE, OUTLINE_OPEN, OUTLINES_CLOSE, OUTLINES_OPEN, PARALLEL_OPEN, RESULT, THREAD_CLOSE
from ..layout import (
    PackedGraph,
    Run,
    TBlock,
    TItem,
    TThread,
    build_graph,
    check_thread_header,
    closer_ids,
    critical_path_count,
    encode,
    linear_ids,
    opener_ids,
    sampled_count,
)
from ..tokens import tag_token_ids

ACTIVE, WAITING, ENDED = 0, 1, 2
TEXT, HEAD = 0, 1


@dataclass(frozen=True)
class RunLimits:
    """Guards of a rollout (None = unbounded). Not :class:`parallel_reason.format.Limits`
    (which bounds the validator): these are the runner's decoding budgets."""

    max_new_tokens: int = 512
    max_thread_tokens: int | None = None
    max_width: int | None = 8
    max_depth: int | None = 2


class TagSet:
    """Ids of the control tags, EOS, and the runner-written openers and closer."""

    def __init__(self, tokenizer, thread_header: str = "index"):
        ids = tag_token_ids(tokenizer)
        self.thread_header = check_thread_header(thread_header)
        self.tokenizer = tokenizer
        self.id_of = ids
        self.tag_of = {v: k for k, v in ids.items()}
        self.eos = tokenizer.eos_token_id
        self.closer = tuple(closer_ids(tokenizer))
        self._openers: dict[int, tuple] = {}
        #: tokens after which a chunked engine must hand control back to the scheduler
        self.stop_ids = tuple(sorted(set(ids.values()) | ({int(self.eos)} if self.eos is not None else set())))

    def opener(self, i: int, outline_ids: Sequence[int] | None = None) -> tuple:
        """Opener of thread ``i``; header mode ``outline`` needs the outline's ids."""
        if self.thread_header == "outline":
            return tuple(opener_ids(self.tokenizer, i, outline_ids))
        if i not in self._openers:
            self._openers[i] = tuple(opener_ids(self.tokenizer, i))
        return self._openers[i]


class Context:
    """A chain of tokens extending ``parent``; a tree join's context also sees the
    contexts in ``joins`` (with all they see), a summary join's the contexts in
    ``peeks`` (their own tokens only); either starts after the furthest of them."""

    __slots__ = ("parent", "joins", "peeks", "tokens", "start", "done", "handle", "last")

    def __init__(
        self,
        parent: Context | None,
        tokens: Sequence[int] = (),
        joins: Sequence[Context] = (),
        peeks: Sequence[Context] = (),
    ):
        self.parent = parent
        self.joins = tuple(joins)
        self.peeks = tuple(peeks)
        self.tokens: list[int] = list(tokens)
        self.start = max((c.next_pos for c in self.parents() + self.peeks), default=0)
        self.done = 0  # tokens already fed to the model by the backend
        self.handle: Any = None  # backend data (the HF backend: segment id in its row)
        self.last = -1  # backend scratch: index of the last fed token in the current step

    def parents(self) -> tuple:
        """The contexts this one sees whole: its parent and, after a tree join, the others."""
        return ((self.parent,) if self.parent is not None else ()) + self.joins

    @property
    def next_pos(self) -> int:
        return self.start + len(self.tokens)

    @property
    def has_pending(self) -> bool:
        return self.done < len(self.tokens)

    def path(self) -> list[int]:
        """All tokens visible from the end of this context (ancestors first); a linear
        reading exists only without tree joins."""
        if self.joins or self.peeks:
            raise ValueError("a context after a tree or summary join has no linear reading")
        chain = []
        c: Context | None = self
        while c is not None:
            chain.append(c.tokens)
            c = c.parent
        return [t for toks in reversed(chain) for t in toks]


@dataclass
class _Head:
    outlines_open: bool = False
    outlines_seen: bool = False
    in_outline: bool = False
    n: int = 0
    spans: list = field(default_factory=list)  # [start, end) of each outline's text in the block head


class _Fork:
    __slots__ = ("lane", "block", "children", "alive")

    def __init__(self, lane, block):
        self.lane = lane
        self.block = block
        self.children: list[Lane] = []
        self.alive = 0


class Lane:
    """A sampling chain: the main sequence (``thread is None``) or one thread."""

    __slots__ = (
        "rollout",
        "depth",
        "ctx",
        "owns_ctx",
        "items",
        "state",
        "phase",
        "block",
        "head",
        "count",
        "thread",
        "fork",
        "script",
        "number",
        "pending",
        "opener_ctx",
        "result_ctx",
    )

    def __init__(self, rollout, depth, ctx, owns_ctx, items, thread=None, fork=None, script=None, number=0):
        self.rollout = rollout
        self.depth = depth
        self.ctx: Context = ctx
        self.owns_ctx = owns_ctx
        self.items: list = items
        self.state = ACTIVE
        self.phase = TEXT
        self.block: TBlock | None = None
        self.head: _Head | None = None
        self.count = 0  # tokens sampled by this lane
        self.thread: TThread | None = thread
        self.fork: _Fork | None = fork  # the fork this thread belongs to
        self.script = script  # replay: the forced tokens
        self.number = number  # thread number (1-based), 0 for the main lane
        self.pending: _Fork | None = None  # the fork this lane is waiting on
        self.opener_ctx: Context | None = ctx if thread is not None else None  # a thread's opener
        self.result_ctx: Context | None = None  # a thread's result, from its <Result> (summary join)

    @property
    def is_thread(self) -> bool:
        return self.thread is not None


class Script:
    """Replay: the tokens a lane is forced to "sample", read from a token tree."""

    __slots__ = ("items", "i", "j")

    def __init__(self, items: Sequence[TItem]):
        self.items = list(items)
        self.i = 0
        self.j = 0

    def next(self) -> int | None:
        while self.i < len(self.items):
            it = self.items[self.i]
            if isinstance(it, Run):
                if not it.train:
                    raise ValueError(
                        "replay: a runner-written Run (train=False) cannot be forced; "
                        "openers and closers are written by the runner itself"
                    )
                ids = it.ids
            else:
                ids = it.head
            if self.j < len(ids):
                self.j += 1
                return int(ids[self.j - 1])
            if isinstance(it, TBlock):
                return None  # head consumed but the scheduler did not fork: nothing sensible to force
            self.i += 1
            self.j = 0
        return None

    def fork(self, k: int) -> list[Script]:
        """Scripts of the ``k`` threads of the block whose head was just consumed."""
        it = self.items[self.i] if self.i < len(self.items) else None
        if isinstance(it, TBlock) and self.j == len(it.head):
            bodies = [t.body for t in it.threads]
            self.i += 1
            self.j = 0
        else:
            bodies = []
        return [Script(bodies[i]) if i < len(bodies) else Script([]) for i in range(k)]


class RolloutState:
    """State of one rollout; see the module docstring for the state machine."""

    def __init__(
        self,
        prompt_ctx: Context,
        tags: TagSet,
        limits: RunLimits,
        parallel: bool = True,
        script: Script | None = None,
        prompt_index: int = 0,
        sample_index: int = 0,
        generator=None,
        join: str = "concat",
    ):
        self.prompt_ctx = prompt_ctx
        self.join = join
        self.prompt_ids = list(prompt_ctx.tokens)
        self.tags = tags
        self.limits = limits
        self.parallel = parallel
        self.prompt_index = prompt_index
        self.sample_index = sample_index
        self.generator = generator
        self.seed: int | None = None  # remote engines: the per-request sampling seed
        self.items: list[TItem] = []
        self.main = Lane(self, 0, prompt_ctx, False, self.items, script=script)
        self.lanes: list[Lane] = [self.main]
        self.sampled = 0
        self.finish_reason: str | None = None
        self.detail = ""
        self.version = 0  # bumped at every join and at the end (backends reclaim memory then)
        self.forks = 0
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.sampler_lp: dict[int, list[float]] = {}  # id(Run or TBlock) -> sampler log-probs

    # ------------------------------------------------------------------ queries
    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def active_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.state == ACTIVE]

    def live_contexts(self) -> list[Context]:
        """Contexts whose tokens some future token of this rollout will attend to: every
        live lane's context, plus thread 1's last context of every block waiting for its
        join (the continuation is read after it, even when thread 1 ended long ago).
        Threads 2..n that have ended are live only under a tree or summary join (the
        summary join's ``</Thread>`` tokens are fed after it, and see their thread whole);
        a concat join re-reads them."""
        out = []
        for lane in self.lanes:
            out.append(lane.ctx)
            if lane.state == WAITING and lane.pending is not None:
                children = lane.pending.children if self.join != "concat" else lane.pending.children[:1]
                out.extend(c.ctx for c in children)
        return out

    def lane_budget(self, lane: Lane) -> int:
        """Tokens ``lane`` may still sample before a budget guard fires (chunked engines)."""
        b = self.limits.max_new_tokens - self.sampled
        if lane.is_thread and self.limits.max_thread_tokens is not None:
            b = min(b, self.limits.max_thread_tokens - lane.count)
        return max(b, 0)

    def banned(self, lane: Lane) -> list[int]:
        """Token ids ``lane`` must not sample now: the control tags (and EOS) that would
        make the text malformed or break a width/depth limit in its current state
        (grammar-constrained decoding; docs/design.md#constrained-decoding)."""
        if not self.parallel:
            return []
        ids, lim = self.tags.id_of, self.limits
        allowed: set[str] = set()
        if lane.phase == HEAD:
            h = lane.head
            assert h is not None  # set with the HEAD phase
            if not h.outlines_seen:
                allowed.add(OUTLINES_OPEN)
            elif h.in_outline:
                allowed.add(OUTLINE_CLOSE)
            elif h.outlines_open:
                if lim.max_width is None or h.n < lim.max_width:
                    allowed.add(OUTLINE_OPEN)
                if h.n > 0:
                    allowed.add(OUTLINES_CLOSE)
        else:
            if (lim.max_depth is None or lane.depth + 1 <= lim.max_depth) and lane.result_ctx is None:
                allowed.add(PARALLEL_OPEN)
            if lane.is_thread:
                allowed.add(THREAD_CLOSE)
                if lane.result_ctx is None:
                    allowed.add(RESULT)
        out = [i for tag, i in ids.items() if tag not in allowed]
        if self.tags.eos is not None and (lane.phase == HEAD or lane.is_thread):
            out.append(int(self.tags.eos))
        return out

    # ------------------------------------------------------------------ events
    def start(self) -> None:
        if self.t_start is None:
            self.t_start = time.perf_counter()

    def finish(self, reason: str, detail: str = "") -> None:
        if self.finished:
            return
        if reason not in FINISH_REASONS and reason not in EXTERNAL_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}")
        self.finish_reason = reason
        self.detail = detail
        for lane in self.lanes:
            lane.state = ENDED
        self.lanes = []
        self.version += 1
        self.t_end = time.perf_counter()

    def advance(self, lane: Lane, token: int, logprob: float, sampler_logprob: float | None = None) -> None:
        """Hand one sampled token of ``lane`` to the state machine."""
        if self.finished or lane.state != ACTIVE:
            raise RuntimeError("advance() on a finished rollout or a lane that is not active")
        token = int(token)
        slp = float(logprob if sampler_logprob is None else sampler_logprob)
        self.sampled += 1
        lane.count += 1
        if not lane.owns_ctx:  # the first token after the (shared) prompt
            lane.ctx = Context(lane.ctx)
            lane.owns_ctx = True
        tag = self.tags.tag_of.get(token) if self.parallel else None
        if lane.phase == HEAD:
            self._head_token(lane, token, tag, float(logprob), slp)
        else:
            self._text_token(lane, token, tag, float(logprob), slp)
        if self.finished:
            return
        lim = self.limits
        if (
            lane.is_thread
            and lane.state != ENDED
            and lim.max_thread_tokens is not None
            and lane.count >= lim.max_thread_tokens
        ):
            self.finish(
                "max_thread_tokens",
                f"thread {lane.number} at depth {lane.depth} sampled {lane.count} tokens without </Thread>",
            )
        elif self.sampled >= lim.max_new_tokens:
            open_threads = sum(1 for lane in self.lanes if lane.is_thread)
            if open_threads:
                self.finish(
                    "unclosed_thread", f"budget of {lim.max_new_tokens} tokens spent with {open_threads} thread(s) open"
                )
            else:
                self.finish("max_new_tokens", f"budget of {lim.max_new_tokens} tokens spent")

    # ------------------------------------------------------------------ internals
    def _record_text(self, lane: Lane, token: int, lp: float, slp: float, result: bool = False) -> None:
        items = lane.items
        if items and isinstance(items[-1], Run) and items[-1].train and not result:
            run = items[-1]
        else:
            run = Run([], True, [], result=result)
            items.append(run)
            self.sampler_lp[id(run)] = []
        assert run.logprobs is not None  # sampled runs always record log-probs
        run.ids.append(token)
        run.logprobs.append(lp)
        self.sampler_lp[id(run)].append(slp)

    def _text_token(self, lane: Lane, token: int, tag: str | None, lp: float, slp: float) -> None:
        if tag == RESULT and lane.is_thread and lane.result_ctx is None:
            # the thread's result starts: its own Run and, for a summary join, its own
            # context (the join sees it, not the reasoning before it)
            self._record_text(lane, token, lp, slp, result=True)
            lane.result_ctx = Context(lane.ctx, [token]) if self.join == "summary" else lane.ctx
            if self.join == "summary":
                lane.ctx = lane.result_ctx
            else:
                lane.ctx.tokens.append(token)
            return
        if tag == PARALLEL_OPEN and lane.result_ctx is not None:
            self._record_text(lane, token, lp, slp)
            self.finish(
                "malformed", f"{PARALLEL_OPEN} after the {RESULT} of thread {lane.number} at depth {lane.depth}"
            )
            return
        if tag == PARALLEL_OPEN:
            block = TBlock(head=[token], head_logprobs=[lp])
            self.sampler_lp[id(block)] = [slp]
            lane.items.append(block)
            lane.block = block
            lane.phase = HEAD
            lane.head = _Head()
            md = self.limits.max_depth
            if md is not None and lane.depth + 1 > md:
                self.finish("max_depth", f"<Parallel> at depth {lane.depth + 1} > max_depth {md}")
                return
            lane.ctx.tokens.append(token)
            return
        self._record_text(lane, token, lp, slp)
        if self.tags.eos is not None and token == self.tags.eos:
            if lane.is_thread:
                self.finish("eos_in_thread", f"EOS in thread {lane.number} at depth {lane.depth}")
            else:
                self.finish("eos")
        elif tag == THREAD_CLOSE and lane.thread is not None:
            lane.thread.closed = True
            self._end_thread(lane)
        elif tag is not None:
            where = f"in thread {lane.number} at depth {lane.depth}" if lane.is_thread else "outside any block"
            self.finish("malformed", f"{tag} sampled {where}")
        else:
            lane.ctx.tokens.append(token)

    def _head_token(self, lane: Lane, token: int, tag: str | None, lp: float, slp: float) -> None:
        block, h = lane.block, lane.head
        assert block is not None and block.head_logprobs is not None and h is not None  # set with the HEAD phase
        block.head.append(token)
        block.head_logprobs.append(lp)
        self.sampler_lp[id(block)].append(slp)
        if self.tags.eos is not None and token == self.tags.eos:
            if lane.is_thread:
                self.finish("eos_in_thread", f"EOS in the head of a block in thread {lane.number}")
            else:
                self.finish("malformed", "EOS inside the head of a <Parallel> block")
            return
        ok = True
        if tag is None:
            pass
        elif tag == OUTLINES_OPEN and not h.outlines_seen:
            h.outlines_open = h.outlines_seen = True
        elif tag == OUTLINE_OPEN and h.outlines_open and not h.in_outline:
            h.in_outline = True
            h.n += 1
            h.spans.append([len(block.head), len(block.head)])
        elif tag == OUTLINE_CLOSE and h.in_outline:
            h.in_outline = False
            h.spans[-1][1] = len(block.head) - 1
        elif tag == OUTLINES_CLOSE and h.outlines_open and not h.in_outline:
            if h.n == 0:
                self.finish("no_outlines", "</Outlines> with zero outlines")
                return
            mw = self.limits.max_width
            if mw is not None and h.n > mw:
                self.finish("max_threads", f"{h.n} outlines > max_width {mw}")
                return
            lane.ctx.tokens.append(token)
            self._fork(lane, h.n, [block.head[a:b] for a, b in h.spans])
            return
        else:
            ok = False
        if not ok:
            self.finish("malformed", f"unexpected {tag} in the head of a <Parallel> block")
            return
        lane.ctx.tokens.append(token)

    def _fork(self, lane: Lane, k: int, outlines: Sequence[Sequence[int]] = ()) -> None:
        block = lane.block
        assert block is not None  # forks end a block head
        lane.state = WAITING
        lane.phase = TEXT
        lane.head = None
        fork = _Fork(lane, block)
        lane.pending = fork
        scripts = lane.script.fork(k) if lane.script is not None else [None] * k
        pos = self.lanes.index(lane) + 1
        children = []
        for i in range(1, k + 1):
            th = TThread(opener=list(self.tags.opener(i, outlines[i - 1] if outlines else None)), body=[], closed=False)
            block.threads.append(th)
            child = Lane(
                self,
                lane.depth + 1,
                Context(lane.ctx, th.opener),
                self.join != "summary",  # summary: the reasoning gets a context of its own
                th.body,
                thread=th,
                fork=fork,
                script=scripts[i - 1],
                number=i,
            )
            children.append(child)
        fork.children = children
        fork.alive = k
        # children right after their parent keeps "parents before children" and groups siblings
        self.lanes[pos:pos] = children
        self.forks += 1

    def _end_thread(self, lane: Lane) -> None:
        lane.state = ENDED
        self.lanes.remove(lane)
        self.version += 1
        fork = lane.fork
        assert fork is not None  # only threads end
        fork.alive -= 1
        if fork.alive == 0:
            self._join(fork)

    def _join(self, fork: _Fork) -> None:
        block, parent = fork.block, fork.lane
        block.closer = list(self.tags.closer)
        close = int(self.tags.id_of[THREAD_CLOSE])  # each thread's </Thread>, never fed by its lane
        if self.join == "tree":  # every thread's end stays where it is; the closer sees them all
            ends = [Context(ch.ctx, [close]) for ch in fork.children]
            parent.ctx = Context(ends[-1], block.closer, joins=ends[:-1])
        elif self.join == "summary":  # the closer follows the head; of each thread it sees the
            # opener, the result and </Thread>, where they are
            peeks: list[Context] = []
            for ch in fork.children:
                assert ch.opener_ctx is not None  # set for every thread lane
                end = Context(ch.ctx, [close])
                peeks += [ch.opener_ctx] + ([ch.result_ctx] if ch.result_ctx is not None else []) + [end]
            parent.ctx = Context(parent.ctx, block.closer, peeks=peeks)
        else:
            reread = [close]
            for t in block.threads[1:]:
                reread += t.opener + linear_ids(t.body)
            reread += block.closer
            parent.ctx = Context(fork.children[0].ctx, reread)
        parent.owns_ctx = True
        parent.state = ACTIVE
        parent.block = None
        parent.pending = None
        self.version += 1


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt given as text or ids; an empty prompt is refused."""
    ids = encode(tokenizer, prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise ValueError("empty prompt: the first token needs a context")
    return ids


def sample_seeds(
    prompts: Sequence, n: int, temperature: float, top_p: float, top_k: int, seed: int | Sequence[int]
) -> list[int]:
    """Check the sampling arguments of ``generate`` and return one seed per prompt
    (``seed + i`` from one int, or the given list)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    return seeds


class Row:
    """One prompt and the rollouts sampled from it (they share the prompt context)."""

    __slots__ = ("prompt_ctx", "rollouts", "handle")

    def __init__(self, prompt_ctx: Context, rollouts: list[RolloutState]):
        self.prompt_ctx = prompt_ctx
        self.rollouts = rollouts
        self.handle: Any = None  # backend data (the HF backend: its _RowState)

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self.rollouts)


# ---------------------------------------------------------------------- output


@dataclass
class Rollout:
    """One decoded (or replayed) completion."""

    prompt_ids: list[int]
    completion: str  # decode(completion_ids, skip_special_tokens=False)
    completion_ids: list[int]  # linear ids (what the text reads): sampled + runner-written
    items: list  # token tree (layout.Run / TBlock / TThread) with recorded log-probs
    graph: PackedGraph  # layout.build_graph(prompt_ids, items): what the trainer trains
    logprobs: list[float]  # per completion id: model log-prob (T=1, unfiltered); 0 where written
    sampler_logprobs: list[float]  # per completion id: log-prob under the distribution sampled from
    loss_mask: list[int]  # per completion id: 1 sampled, 0 runner-written
    finish_reason: str
    total_tokens: int  # sampled tokens
    critical_path: int  # sampled tokens on the longest causal chain
    wall_s: float  # measured with time.perf_counter, admission to end
    detail: str = ""
    prompt_index: int = 0
    sample_index: int = 0
    forks: int = 0

    @property
    def speedup(self) -> float:
        """total_tokens / critical_path (the trajectory against itself)."""
        return self.total_tokens / self.critical_path if self.critical_path else 1.0


def _flatten(items: Sequence[TItem], slp: dict, ids: list, lps: list, slps: list, mask: list) -> None:
    """Linear ids with log-probs and loss mask, in the order of ``layout.linear_ids``."""
    for it in items:
        if isinstance(it, Run):
            ids += it.ids
            if it.train:
                lps += it.logprobs if it.logprobs is not None else [0.0] * len(it.ids)
                slps += slp.get(id(it), [0.0] * len(it.ids))
                mask += [1] * len(it.ids)
            else:
                lps += [0.0] * len(it.ids)
                slps += [0.0] * len(it.ids)
                mask += [0] * len(it.ids)
        else:
            ids += it.head
            lps += it.head_logprobs if it.head_logprobs is not None else [0.0] * len(it.head)
            slps += slp.get(id(it), [0.0] * len(it.head))
            mask += [1] * len(it.head)
            for t in it.threads:
                ids += t.opener
                lps += [0.0] * len(t.opener)
                slps += [0.0] * len(t.opener)
                mask += [0] * len(t.opener)
                _flatten(t.body, slp, ids, lps, slps, mask)
            ids += it.closer
            lps += [0.0] * len(it.closer)
            slps += [0.0] * len(it.closer)
            mask += [0] * len(it.closer)


def to_rollout(state: RolloutState, tokenizer, join: str = "concat") -> Rollout:
    """Package a finished :class:`RolloutState`."""
    if state.finish_reason is None:
        raise RuntimeError("rollout is not finished")
    ids: list[int] = []
    lps: list[float] = []
    slps: list[float] = []
    mask: list[int] = []
    _flatten(state.items, state.sampler_lp, ids, lps, slps, mask)
    total = sampled_count(state.items)
    if total != state.sampled:
        raise AssertionError(f"token tree holds {total} sampled tokens, scheduler counted {state.sampled}")
    graph = build_graph(state.prompt_ids, state.items, join)
    return Rollout(
        prompt_ids=list(state.prompt_ids),
        completion=tokenizer.decode(ids, skip_special_tokens=False),
        completion_ids=ids,
        items=state.items,
        graph=graph,
        logprobs=lps,
        sampler_logprobs=slps,
        loss_mask=mask,
        finish_reason=state.finish_reason,
        total_tokens=total,
        critical_path=critical_path_count(state.items),
        wall_s=(state.t_end or time.perf_counter()) - (state.t_start or state.t_end or 0.0),
        detail=state.detail,
        prompt_index=state.prompt_index,
        sample_index=state.sample_index,
        forks=state.forks,
    )
