"""Engine-agnostic fork/join scheduler: the state machine of DESIGN.md section 2.

One :class:`RolloutState` per rollout (one sample of one prompt). It knows the
grammar, the guards and the token tree; it knows nothing about KV caches, batches
or attention masks. A backend (``runner/hf.py`` today, vLLM later) moves tokens
through a model and hands every sampled token back to :meth:`RolloutState.advance`.

Vocabulary
----------
- A :class:`Context` is a chain of tokens that extends its parent context: the
  prompt is a root context; each thread is a context whose parent is the context
  that sampled ``</Outlines>``; the continuation after a join is a context whose
  parent is thread 1's last context and whose first tokens are the re-read
  (thread 1's ``</Thread>``, then opener + body of threads 2..n, then the closer).
  The *visible history* of a token is exactly the chain of its context's ancestors:
  that is the packed graph of :mod:`parallel_reason.layout` (join mode ``concat``).
  ``context.tokens[context.done:]`` are tokens appended by the scheduler that the
  backend has not fed to the model yet (``pending``); positions are
  ``context.start + k``.
- A :class:`Lane` is a chain that samples: the main sequence or one thread. Lanes
  are ``active`` (they need the next-token distribution at the end of their
  context), ``waiting`` (forked, suspended until every child thread has ended) or
  ``ended``. ``RolloutState.lanes`` lists the live lanes in creation order (a parent
  always comes before its children): feed pending tokens in that order and a
  context's parent is always in the cache before the context itself.

State machine (per lane)
------------------------
text phase: ordinary tokens extend the lane's context. ``<Parallel>`` opens a block
(head phase) unless the block would be deeper than ``max_depth``. ``</Thread>`` ends
a thread lane. EOS ends the rollout (``eos`` on the main lane, ``eos_in_thread`` in a
thread). Any other control tag is stray: the rollout stops as ``malformed``.

head phase (after ``<Parallel>``): ``<Outlines> (<Outline> ... </Outline>)* </Outlines>``
with free text between tags. ``</Outlines>`` forks: one child lane per ``<Outline>``
seen, each starting with the runner-written opener ``layout.opener_ids(tok, i)``
(not sampled, loss mask 0, no log-prob). Zero outlines -> ``no_outlines``; more than
``max_width`` -> ``max_threads``; a tag out of order -> ``malformed``.

join: when the last child has sampled ``</Thread>``, the parent lane resumes in a
new context (parent = thread 1's last context) holding the re-read and
``layout.closer_ids(tok)``; its next token is sampled at the end of that context.

Stray tags are *not* masked out of the sampling distribution: masking would make
the distribution sampled from differ from the one the trainer recomputes
(``packed_logprobs`` is unmasked), so the recorded log-probs could not be both. The
rollout stops with ``malformed`` instead; its token tree keeps the offending token
(sampled, trained on: the reward can punish it).

Every stop, early or not, leaves a valid token tree: unfinished blocks have no
closer (``TBlock.joined`` False), unfinished threads have ``closed=False``, and
``layout.build_graph`` lays them out.

Backend interface
-----------------
A backend owns the model state for a set of *rows* (:class:`Row`: one prompt and
the ``n`` rollouts sampled from it, which share the prompt context) and provides:

- ``add(rows)``: admit rows into the running batch;
- ``step() -> (lanes, scores)``: feed every pending token of every live lane of every
  row (one batched forward for HF) and return, for every *active* lane, the
  next-token logits at the end of its context;
- ``release() -> rows``: drop rows whose rollouts have all finished;
- ``reclaim()``: free what no future token can see (``RolloutState.live_contexts()``
  lists the contexts that must be kept; ``RolloutState.version`` changes when that
  set shrinks).

The HF runner then picks tokens (greedy, sampling or replay) and calls
``advance``. An engine with prefix caching and its own sampler (vLLM, SGLang)
maps the same states onto requests: a lane is a request whose prompt is
``lane.ctx.path()`` (fork = n new requests sharing the parent's prefix, re-used by
the prefix cache; join = one request whose prompt ends with the re-read), run with
``stop_token_ids = tags.stop_ids`` and ``max_tokens = rollout.lane_budget(lane)``;
the tokens of each returned chunk are fed one by one to ``advance`` (with the
engine's log-probs) while the lane stays active and the rollout unfinished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from ..format import (OUTLINE_CLOSE, OUTLINE_OPEN, OUTLINES_CLOSE, OUTLINES_OPEN, PARALLEL_OPEN,
                      THREAD_CLOSE)
from ..layout import (PackedGraph, Run, TBlock, TItem, TThread, build_graph, check_thread_header, closer_ids,
                      critical_path_count, linear_ids, opener_ids, sampled_count)
from ..tokens import tag_token_ids

#: Every finish reason and what it means.
FINISH_REASONS: dict[str, str] = {
    "eos": "the main sequence sampled EOS outside any block (normal end)",
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
    """A chain of tokens extending ``parent`` (see module docstring)."""

    __slots__ = ("parent", "tokens", "start", "done", "handle", "last")

    def __init__(self, parent: "Context | None", tokens: Sequence[int] = ()):
        self.parent = parent
        self.tokens: list[int] = list(tokens)
        self.start = parent.next_pos if parent is not None else 0
        self.done = 0  # tokens already fed to the model by the backend
        self.handle = None  # backend data (the HF backend: segment id in its row)
        self.last = -1  # backend scratch: index of the last fed token in the current step

    @property
    def next_pos(self) -> int:
        return self.start + len(self.tokens)

    @property
    def has_pending(self) -> bool:
        return self.done < len(self.tokens)

    def path(self) -> list[int]:
        """All tokens visible from the end of this context (ancestors first)."""
        chain = []
        c = self
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

    __slots__ = ("rollout", "depth", "ctx", "owns_ctx", "items", "state", "phase", "block", "head",
                 "count", "thread", "fork", "script", "number", "pending")

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
                    raise ValueError("replay: a runner-written Run (train=False) cannot be forced; "
                                     "openers and closers are written by the runner itself")
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

    def fork(self, k: int) -> list["Script"]:
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

    def __init__(self, prompt_ctx: Context, tags: TagSet, limits: RunLimits, parallel: bool = True,
                 script: Script | None = None, prompt_index: int = 0, sample_index: int = 0, generator=None):
        self.prompt_ctx = prompt_ctx
        self.prompt_ids = list(prompt_ctx.tokens)
        self.tags = tags
        self.limits = limits
        self.parallel = parallel
        self.prompt_index = prompt_index
        self.sample_index = sample_index
        self.generator = generator
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
        return [l for l in self.lanes if l.state == ACTIVE]

    def live_contexts(self) -> list[Context]:
        """Contexts whose tokens some future token of this rollout will attend to: every
        live lane's context, plus thread 1's last context of every block waiting for its
        join (the continuation is read after it, even when thread 1 ended long ago).
        Threads 2..n that have ended are not live: the join re-reads them."""
        out = []
        for l in self.lanes:
            out.append(l.ctx)
            if l.state == WAITING and l.pending is not None:
                out.append(l.pending.children[0].ctx)
        return out

    def lane_budget(self, lane: Lane) -> int:
        """Tokens ``lane`` may still sample before a budget guard fires (chunked engines)."""
        b = self.limits.max_new_tokens - self.sampled
        if lane.is_thread and self.limits.max_thread_tokens is not None:
            b = min(b, self.limits.max_thread_tokens - lane.count)
        return max(b, 0)

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
        for l in self.lanes:
            l.state = ENDED
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
        if lane.is_thread and lane.state != ENDED and lim.max_thread_tokens is not None \
                and lane.count >= lim.max_thread_tokens:
            self.finish("max_thread_tokens", f"thread {lane.number} at depth {lane.depth} sampled "
                        f"{lane.count} tokens without </Thread>")
        elif self.sampled >= lim.max_new_tokens:
            open_threads = sum(1 for l in self.lanes if l.is_thread)
            if open_threads:
                self.finish("unclosed_thread", f"budget of {lim.max_new_tokens} tokens spent with "
                            f"{open_threads} thread(s) open")
            else:
                self.finish("max_new_tokens", f"budget of {lim.max_new_tokens} tokens spent")

    # ------------------------------------------------------------------ internals
    def _record_text(self, lane: Lane, token: int, lp: float, slp: float) -> None:
        items = lane.items
        if items and isinstance(items[-1], Run) and items[-1].train:
            run = items[-1]
        else:
            run = Run([], True, [])
            items.append(run)
            self.sampler_lp[id(run)] = []
        run.ids.append(token)
        run.logprobs.append(lp)
        self.sampler_lp[id(run)].append(slp)

    def _text_token(self, lane: Lane, token: int, tag: str | None, lp: float, slp: float) -> None:
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
        elif tag == THREAD_CLOSE and lane.is_thread:
            lane.thread.closed = True
            self._end_thread(lane)
        elif tag is not None:
            where = f"in thread {lane.number} at depth {lane.depth}" if lane.is_thread else "outside any block"
            self.finish("malformed", f"{tag} sampled {where}")
        else:
            lane.ctx.tokens.append(token)

    def _head_token(self, lane: Lane, token: int, tag: str | None, lp: float, slp: float) -> None:
        block = lane.block
        block.head.append(token)
        block.head_logprobs.append(lp)
        self.sampler_lp[id(block)].append(slp)
        h = lane.head
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
        lane.state = WAITING
        lane.phase = TEXT
        lane.head = None
        fork = _Fork(lane, block)
        lane.pending = fork
        scripts = lane.script.fork(k) if lane.script is not None else [None] * k
        pos = self.lanes.index(lane) + 1
        children = []
        for i in range(1, k + 1):
            th = TThread(opener=list(self.tags.opener(i, outlines[i - 1] if outlines else None)), body=[],
                         closed=False)
            block.threads.append(th)
            child = Lane(self, lane.depth + 1, Context(lane.ctx, th.opener), True, th.body, thread=th,
                         fork=fork, script=scripts[i - 1], number=i)
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
        fork.alive -= 1
        if fork.alive == 0:
            self._join(fork)

    def _join(self, fork: _Fork) -> None:
        block, parent = fork.block, fork.lane
        block.closer = list(self.tags.closer)
        first = fork.children[0]
        reread = [int(self.tags.id_of[THREAD_CLOSE])]  # thread 1's </Thread>, never fed by its lane
        for t in block.threads[1:]:
            reread += t.opener + linear_ids(t.body)
        reread += block.closer
        parent.ctx = Context(first.ctx, reread)
        parent.owns_ctx = True
        parent.state = ACTIVE
        parent.block = None
        parent.pending = None
        self.version += 1


class Row:
    """One prompt and the rollouts sampled from it (they share the prompt context)."""

    __slots__ = ("prompt_ctx", "rollouts", "handle")

    def __init__(self, prompt_ctx: Context, rollouts: list[RolloutState]):
        self.prompt_ctx = prompt_ctx
        self.rollouts = rollouts
        self.handle = None

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
    if not state.finished:
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
