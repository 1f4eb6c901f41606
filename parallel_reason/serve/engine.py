"""Continuous-batching engine of the server: one thread owns the model.

Requests become :class:`Job` s (one row per prompt, ``n`` rollouts per row). The
decode thread admits queued rows into the running batch between decode steps
(``HFBackend.add``), runs :meth:`Runner.step` with a sampler that reads each
rollout's own parameters, and posts events to the job's asyncio queue: token
entries of the *stable* prefix of each streamed rollout (linear order: a thread's
text is final once every earlier thread has closed), each rollout's end, and the
job's end. A cancelled job's rollouts are finished (``cancelled``) before the next
step, so its rows leave the batch and nobody else is disturbed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from ..layout import Run
from ..runner.hf import constrain, filter_logits
from ..runner.scheduler import ACTIVE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Per-request decoding parameters (``temperature == 0``: greedy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    top_logprobs: int = 0  # alternatives recorded per sampled token
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset = field(default_factory=frozenset)


class Track:
    """Server-side bookkeeping of one rollout (attached as ``rollout.track``)."""

    __slots__ = ("job", "index", "item", "pos", "recent", "cut", "stop_reason", "tops", "reported")

    def __init__(self, job: Job, index: int):
        self.job = job
        self.index = index  # choice index
        self.item = 0  # first item of the main sequence not yet posted in full
        self.pos = 0  # entries of that item already posted
        self.recent: list[int] = []  # the last tokens scanned for stop strings
        self.cut: int | None = None  # text is cut here (a stop string starts here)
        self.stop_reason = None  # the stop string or stop token id
        self.tops: dict = {}  # (id(box), k) -> [(token, logprob)] (see linear_entries)
        self.reported = False

    def new_entries(self, ro) -> list:
        """Stable entries (see :func:`linear_entries`) not returned before, in order. Only
        the main sequence's last item can still grow (and only its stable part is read),
        so each call costs the new tokens, or the size of the block being decoded."""
        out: list = []
        items = ro.items
        while self.item < len(items):
            it = items[self.item]
            final = ro.finished or self.item < len(items) - 1
            if isinstance(it, Run):
                box = it if it.train else None
                out.extend((t, box, k) for k, t in enumerate(it.ids[self.pos :], self.pos))
                self.pos = len(it.ids)
            else:
                ents: list = []
                linear_entries([it], ents, stable=not final)
                out.extend(ents[self.pos :])
                self.pos = len(ents)
            if not final:
                break
            self.item += 1
            self.pos = 0
        return out


class Job:
    """One API request: its rows and the queue its handler reads events from."""

    def __init__(self, rows, sampling: Sampling, stream: bool, loop: asyncio.AbstractEventLoop):
        self.rows = rows
        self.sampling = sampling
        self.stream = stream
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.done = False
        self.left = len(rows)
        self.rollouts = [ro for row in rows for ro in row.rollouts]
        for i, ro in enumerate(self.rollouts):
            ro.track = Track(self, i)

    def post(self, events: list) -> None:
        """Hand events to the handler (called from the decode thread)."""
        if events:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, events)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass


def linear_entries(items, out: list, stable: bool) -> bool:
    """Append ``(token, box, k)`` per completion token in linear order: a sampled token
    is ``box.ids[k]`` (a ``Run``) or ``box.head[k]`` (a ``TBlock``); a runner-written one
    has ``box`` None. With ``stable``, stop at the end of the first thread still open
    (what follows it can still move). Returns True when it stopped there."""
    for it in items:
        if isinstance(it, Run):
            box = it if it.train else None
            out.extend((t, box, k) for k, t in enumerate(it.ids))
            continue
        out.extend((t, it, k) for k, t in enumerate(it.head))
        for th in it.threads:
            out.extend((t, None, 0) for t in th.opener)
            if linear_entries(th.body, out, stable) or (stable and not th.closed):
                return True
        out.extend((t, None, 0) for t in it.closer)
    return False


class Engine:
    """The decode thread and its inbox. ``runner`` is a :class:`~parallel_reason.runner.Runner`
    used only by this engine; ``max_rows`` bounds the running batch (prompts).

    Admission groups prefills: while rows decode, queued requests join when a quarter
    of the running rows' worth has queued or after ``admit_wait`` steps (each
    admission is one step that also prefills, so one per request would cost a step each)."""

    def __init__(self, runner, max_rows: int = 32, admit_wait: int = 8):
        self.runner = runner
        self.admit_wait = admit_wait
        self._waited = 0  # steps the oldest queued request has waited
        self.tokenizer = runner.tokenizer
        self.eos = runner.tokenizer.eos_token_id
        self.max_rows = max(1, int(max_rows))
        self._inbox: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._active: list[Job] = []
        self._stop = False
        self.jobs = 0  # submitted jobs not yet done (admission control reads it)
        self.error: BaseException | None = None
        self.steps = 0  # decode steps run
        self.row_steps = 0  # sum over steps of the rows in the batch (occupancy = row_steps / steps)
        self.step_s = 0.0  # seconds in Runner.step (forward, sampling, scheduler)
        self.busy_s = 0.0  # ... plus the events posted after each step
        self._thread = threading.Thread(target=self._main, name="parallel-reason-decode", daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, job: Job) -> None:
        with self._cv:
            if self.error is not None or self._stop:
                raise RuntimeError("the decode engine is not running")
            self.jobs += 1
            self._inbox.append(job)
            self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """Free a job's rows (from any thread): its rollouts end as ``cancelled``."""
        if job.done:
            return
        job.cancelled = True
        with self._cv:
            self._cv.notify_all()

    # ------------------------------------------------------------------ loop
    def _main(self) -> None:
        be = self.runner.backend
        try:
            self.runner.model.eval()
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._stop and not self._inbox and not self._active:
                            self._cv.wait()
                        if self._stop:
                            break
                        admitted = self._take(be)
                    try:  # outside the lock: request handlers never wait for a cache copy
                        for job in admitted:
                            self._active.append(job)
                            be.add(job.rows)
                        self._step(be)
                    except Exception as e:  # noqa: BLE001 - fail the batch (and what it admitted), keep serving
                        log.exception("decode step failed; failing the %d requests in the batch", len(self._active))
                        self._fail_active(e, be)
        except BaseException as e:  # noqa: BLE001 - reported to every waiting request
            log.exception("decode loop failed")
            self.error = e
        finally:
            with self._cv:
                jobs = self._active + list(self._inbox)
                self._active, self._inbox = [], collections.deque()
            for job in jobs:
                job.done = True
                job.post([("error", f"decode engine stopped: {self.error or 'shutdown'}")])

    def _step(self, be) -> None:
        self._cancel()
        t0 = time.perf_counter()
        gone = []
        if be.rows:
            self.row_steps += len(be.rows)
            gone = self.runner.step(self._choose)
            self.steps += 1
        t1 = time.perf_counter()
        self._after_step(gone)
        self.step_s += t1 - t0
        self.busy_s += time.perf_counter() - t0

    def _fail_active(self, err: Exception, be) -> None:
        """A step raised: the requests of the running batch get a 500, the batch is dropped."""
        jobs, self._active = self._active, []
        be.reset()
        for job in jobs:
            job.done = True
            with self._cv:
                self.jobs -= 1
            job.post([("error", f"decoding failed: {type(err).__name__}: {err}")])

    def _take(self, be) -> list[Job]:
        """The queued jobs to admit into the running batch now (called under the lock;
        the caller adds their rows to the backend)."""
        if not self._inbox:
            return []
        queued = sum(len(j.rows) for j in self._inbox)
        if be.rows and queued < max(1, len(be.rows) // 4) and self._waited < self.admit_wait:
            self._waited += 1
            return []
        self._waited = 0
        out: list[Job] = []
        rows = len(be.rows)
        while self._inbox:
            job = self._inbox[0]
            if rows and rows + len(job.rows) > self.max_rows:
                break
            self._inbox.popleft()
            if job.cancelled:
                job.done = True
                self.jobs -= 1
                job.post([("done", None)])
                continue
            out.append(job)
            rows += len(job.rows)
        return out

    def _cancel(self) -> None:
        for job in self._active:
            if job.cancelled:
                for ro in job.rollouts:
                    ro.finish("cancelled")

    def _finish_job(self, job: Job) -> None:
        job.done = True
        with self._cv:
            self.jobs -= 1
        job.post([("done", None)])

    # ------------------------------------------------------------------ sampling
    def _choose(self, lanes, logits: torch.Tensor) -> None:
        """Pick one token per active lane with its rollout's own parameters (the same
        filters and per-rollout generators as ``Runner.generate``), then advance."""
        lp_all = torch.log_softmax(logits, -1)
        if self.runner.constrained:  # the served model never samples a tag that breaks the grammar
            # a request with stop token ids comes from an engine client (a remote runner
            # decoding one thread or head at a time): its grammar state is the client's
            # to know, so such requests are decoded unconstrained
            banned = [
                [] if lane.rollout.track.job.sampling.stop_token_ids else lane.rollout.banned(lane) for lane in lanes
            ]
            logits = constrain(logits, banned)
        toks = logits.argmax(-1)
        slp = torch.zeros(len(lanes), dtype=lp_all.dtype, device=logits.device)
        groups: dict = {}
        for k, lane in enumerate(lanes):
            sp = lane.rollout.track.job.sampling
            if sp.temperature > 0:
                groups.setdefault((sp.temperature, sp.top_k, sp.top_p), []).append(k)
        for (temp, top_k, top_p), idx in groups.items():
            sel = torch.tensor(idx, device=logits.device)
            x = filter_logits(logits.index_select(0, sel), temp, top_k, top_p)
            probs = torch.softmax(x, -1)
            xl = torch.log_softmax(x, -1)
            i = 0
            while i < len(idx):  # lanes of one rollout are adjacent: one generator call each
                ro = lanes[idx[i]].rollout
                j = i + 1
                while j < len(idx) and lanes[idx[j]].rollout is ro:
                    j += 1
                t = torch.multinomial(probs[i:j], 1, generator=ro.generator)[:, 0]
                toks[sel[i:j]] = t
                slp[sel[i:j]] = xl[i:j].gather(1, t[:, None])[:, 0]
                i = j
        lp = lp_all.gather(1, toks[:, None])[:, 0].tolist()
        tops = self._tops(lanes, lp_all)
        toks_l, slp_l = toks.tolist(), slp.tolist()
        for k, lane in enumerate(lanes):
            ro = lane.rollout
            if ro.finished or lane.state != ACTIVE:
                continue
            ro.advance(lane, toks_l[k], lp[k], slp_l[k])
            tr = ro.track
            if k in tops:
                box = lane.items[-1]
                n = len(box.ids) if isinstance(box, Run) else len(box.head)
                tr.tops[(id(box), n - 1)] = tops[k]
            if toks_l[k] in tr.job.sampling.stop_token_ids and not ro.finished:
                tr.stop_reason = toks_l[k]
                ro.finish("stop", f"stop token {toks_l[k]}")

    @staticmethod
    def _tops(lanes, lp_all) -> dict:
        want = [(k, lane.rollout.track.job.sampling.top_logprobs) for k, lane in enumerate(lanes)]
        want = [(k, n) for k, n in want if n > 0]
        if not want:
            return {}
        K = max(n for _, n in want)
        sel = torch.tensor([k for k, _ in want], device=lp_all.device)
        top_v, top_i = torch.topk(lp_all.index_select(0, sel), min(K, lp_all.shape[-1]), dim=-1)
        vals, idx = top_v.tolist(), top_i.tolist()
        return {k: list(zip(idx[r][:n], vals[r][:n])) for r, (k, n) in enumerate(want)}

    # ------------------------------------------------------------------ events
    def _after_step(self, gone) -> None:
        for job in self._active:
            if not (job.stream or job.sampling.stop):
                continue
            events: list[tuple] = []
            for ro in job.rollouts:
                tr = ro.track
                if tr.reported:
                    continue
                new = tr.new_entries(ro)
                if job.sampling.stop and tr.cut is None and new:
                    self._check_stop(ro, new)
                if job.stream:
                    if new:
                        events.append(("tokens", tr.index, new))
                    if ro.finished:
                        events.append(("finish", tr.index))
                if ro.finished:
                    tr.reported = True
            job.post(events)
        for row in gone:
            job = row.rollouts[0].track.job
            job.left -= 1
            if job.left == 0:
                self._active.remove(job)
                self._finish_job(job)

    def _check_stop(self, ro, new) -> None:
        """End the rollout at the first stop string in its stable text (only the new
        tokens and a window before them are decoded)."""
        tr = ro.track
        stops = tr.job.sampling.stop
        ids = tr.recent + [e[0] for e in new if e[0] != self.eos]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        tr.recent = ids[-(max(len(s) for s in stops) + 2) :]  # a token is at least one character
        if not any(s in text for s in stops):
            return
        entries: list = []
        linear_entries(ro.items, entries, stable=not ro.finished)
        full = self.tokenizer.decode([e[0] for e in entries if e[0] != self.eos], skip_special_tokens=False)
        hits = [(p, s) for s in stops if (p := full.find(s)) >= 0]
        if hits:
            tr.cut, tr.stop_reason = min(hits)
            if not ro.finished:
                ro.finish("stop", f"stop string {tr.stop_reason!r}")
