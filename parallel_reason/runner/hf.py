"""Hugging Face backend of the fork/join runner, and :class:`Runner`.

One KV cache holds the batch; each row is one prompt with its rollouts, laid out as
a packed-graph buffer (a segment id per slot, a segment-ancestry matrix per row), so
a fork recomputes nothing, a join is one batched prefill of the re-read, and prompts
enter and leave the batch continuously. Steps pass graph positions and a 4D bool
mask (``sdpa``/``eager``). Sampling uses one seeded generator per rollout and records
the model's temperature-1 log-probs. Details: docs/design.md#hf-backend.
"""

from __future__ import annotations

import inspect
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from ..attention import float_mask
from ..format import RESULT
from ..layout import Run, check_join, check_thread_header, linear_ids, tokenize_trajectory
from ..logprobs import attn_implementation_of
from ..wrappers import unwrap_model
from .scheduler import (
    ACTIVE,
    Context,
    Lane,
    Rollout,
    RolloutState,
    Row,
    RunLimits,
    Script,
    TagSet,
    prompt_ids,
    sample_seeds,
    to_rollout,
)


@dataclass
class BackendStats:
    """Counters of the last ``generate``/``replay`` call."""

    forward_calls: int = 0
    tokens_fed: int = 0  # real tokens fed to the model (each graph node at most once)
    pad_fed: int = 0  # padding positions fed (batch shape overhead)
    compactions: int = 0
    split_steps: int = 0  # steps run as two forwards (heavy prefill rows apart from decoding rows)
    max_slots: int = 0  # widest cache row seen
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _slab_classes():
    """The KV cache classes (built lazily: transformers is imported on first use)."""
    global _SlabCache
    if _SlabCache is not None:
        return _SlabCache
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    class SlabLayer(DynamicLayer):
        """A DynamicLayer whose keys/values live in a preallocated slab grown by
        doubling: ``update`` writes in place instead of concatenating the whole cache
        every step. ``keys``/``values`` are views of the filled part."""

        def lazy_initialization(self, key_states, value_states) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            self._k = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
            self._v = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))
            self.n = 0
            self.keys, self.values = self._k, self._v
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self.n + key_states.shape[-2]
            if need > self._k.shape[2]:
                cap = max(64, 2 * need)
                k = key_states.new_empty((*self._k.shape[:2], cap, self._k.shape[3]))
                v = value_states.new_empty((*self._v.shape[:2], cap, self._v.shape[3]))
                k[:, :, : self.n] = self._k[:, :, : self.n]
                v[:, :, : self.n] = self._v[:, :, : self.n]
                self._k, self._v = k, v
            self._k[:, :, self.n : need] = key_states
            self._v[:, :, self.n : need] = value_states
            self.n = need
            self.keys, self.values = self._k[:, :, :need], self._v[:, :, :need]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.n if self.is_initialized else 0

        def set(self, keys, values) -> None:
            """Replace the content (after a row selection, admission or compaction)."""
            self.dtype, self.device = keys.dtype, keys.device
            self._k, self._v = keys, values
            self.n = keys.shape[2]
            self.keys, self.values = keys, values
            self.is_initialized = True

    class SlabCache(DynamicCache):
        def __init__(self, num_layers: int):
            Cache.__init__(self, layers=[SlabLayer() for _ in range(num_layers)])

    _SlabCache = SlabCache
    return SlabCache


_SlabCache: type | None = None

_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers' sdpa: pass enable_gqa even with a mask


def _torch_at_least(major: int, minor: int) -> bool:
    try:
        got = tuple(int(x) for x in torch.__version__.split(".")[:2])
    except ValueError:  # pragma: no cover
        return False
    return got >= (major, minor)


class _RowState:
    __slots__ = ("nseg", "version", "live")

    def __init__(self):
        self.nseg = 1  # segment 0 is padding
        self.version = -1
        self.live = 0  # live (visible to some future token) slots of the row


class HFBackend:
    """Batched packed-graph decoding (see module docstring). Interface used by
    :class:`Runner` (and described in :mod:`.scheduler`): ``add(rows)``, ``step()``,
    ``release()``, ``reclaim()``, ``reset()``; counters in ``stats``."""

    def __init__(self, model, pad_id: int, compact_min_slots: int = 128, compact_ratio: float = 0.75):
        inner = unwrap_model(model)
        self.model = model
        self.config = inner.config
        impl = attn_implementation_of(inner)
        if impl not in ("sdpa", "eager"):
            raise ValueError(
                f"the HF runner needs attn_implementation 'sdpa' or 'eager' (custom 4D masks), got {impl!r}"
            )
        text_cfg = self.config.get_text_config(decoder=True) if hasattr(self.config, "get_text_config") else self.config
        layer_types = getattr(text_cfg, "layer_types", None) or []
        bad = sorted({t for t in layer_types if t != "full_attention"})
        if bad or getattr(text_cfg, "use_sliding_window", False) and getattr(text_cfg, "sliding_window", None):
            raise ValueError(f"the HF runner supports full-attention layers only, found {bad or 'sliding_window'}")
        self.impl = impl
        heads = int(getattr(text_cfg, "num_attention_heads", 0) or 0)
        kv_heads = int(getattr(text_cfg, "num_key_value_heads", 0) or heads)
        p0 = next(inner.parameters())
        self._gqa = impl == "sdpa" and p0.device.type == "cpu" and kv_heads < heads and _torch_at_least(2, 5)
        self.num_layers = int(text_cfg.num_hidden_layers)
        h = getattr(text_cfg, "hidden_size", 1024)
        kv = int(getattr(text_cfg, "num_key_value_heads", 0) or getattr(text_cfg, "num_attention_heads", 16))
        hd = getattr(text_cfg, "head_dim", None) or h // max(getattr(text_cfg, "num_attention_heads", 16), 1)
        self._slot_cost = (kv * hd * 8) / (12 * h * h)
        p = next(inner.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.pad_id = int(pad_id)
        self.compact_min_slots = compact_min_slots
        self.compact_ratio = compact_ratio
        self.reset()

    # ------------------------------------------------------------------ batch
    def reset(self) -> None:
        self.rows: list[Row] = []
        self.cache = None
        self.kseg = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.anc = torch.zeros(0, 16, 16, dtype=torch.bool, device=self.device)
        self.stats = BackendStats()
        self._tri: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # N -> (causal [N, N], eye [N, N])

    def _layers(self):
        if self.cache is None:
            return []
        return [layer for layer in self.cache.layers if layer.is_initialized and layer.n > 0]

    def _new_cache(self, kv=None):
        cache = _slab_classes()(self.num_layers)
        if kv is not None:
            for layer, (k, v) in zip(cache.layers, kv):
                layer.set(k, v)
        return cache

    def add(self, rows: Sequence[Row]) -> None:
        """Admit rows; their prompts are fed with the next step."""
        R = len(rows)
        if R == 0:
            return
        T = self.kseg.shape[1]
        for row in rows:
            row.handle = _RowState()
            for ro in row.rollouts:
                ro.start()
        for layer in self._layers():
            layer.set(
                torch.cat([layer.keys, layer.keys.new_zeros(R, *layer.keys.shape[1:])]),
                torch.cat([layer.values, layer.values.new_zeros(R, *layer.values.shape[1:])]),
            )
        self.kseg = torch.cat([self.kseg, self.kseg.new_zeros(R, T)])
        self.anc = torch.cat([self.anc, self.anc.new_zeros(R, *self.anc.shape[1:])])
        self.rows.extend(rows)

    def release(self) -> list[Row]:
        """Drop the rows whose rollouts have all finished; returns them."""
        keep = [b for b, r in enumerate(self.rows) if not r.finished]
        if len(keep) == len(self.rows):
            return []
        gone = [r for r in self.rows if r.finished]
        if not keep:
            stats = self.stats
            self.reset()
            self.stats = stats
            return gone
        idx = torch.tensor(keep, device=self.device)
        for layer in self._layers():
            layer.set(layer.keys.index_select(0, idx), layer.values.index_select(0, idx))
        self.kseg = self.kseg.index_select(0, idx)
        self.anc = self.anc.index_select(0, idx)
        self.rows = [self.rows[b] for b in keep]
        return gone

    # ------------------------------------------------------------------ segments
    def _new_seg(self, b: int, row: Row, ctx: Context) -> int:
        st = row.handle
        s = st.nseg
        st.nseg += 1
        S = self.anc.shape[1]
        if s >= S:
            S2 = 2 * S
            anc = self.anc.new_zeros(self.anc.shape[0], S2, S2)
            anc[:, :S, :S] = self.anc
            self.anc = anc
        for par in ctx.parents():  # one parent, or every thread end after a tree join
            if par.handle is None:
                if par.tokens:
                    raise RuntimeError("a context was fed before its parent")
                self._new_seg(b, row, par)  # an empty context (a thread that wrote nothing): no slots
            self.anc[b, s] |= self.anc[b, par.handle]
        for q in ctx.peeks:  # a summary join: these segments alone, not what they see
            if q.handle is None:
                raise RuntimeError("a context was fed before a context it sees")
            self.anc[b, s, q.handle] = True
        if ctx.peeks:  # the threads' reasoning, kept for their </Thread>, dies now: recount at reclaim
            st.version = -1
        self.anc[b, s, s] = True
        ctx.handle = s
        return s

    def _feed(self, b: int, row: Row, c: Context, ids: list, pos: list, seg: list, touched: list) -> None:
        """Queue the pending tokens of ``c`` for this step, after those of the contexts
        it sees whole that are pending too (the thread ends of a tree join)."""
        if c.done >= len(c.tokens):
            return
        for par in c.joins + c.peeks + ((c.parent,) if c.parent is not None and c.parent.handle is None else ()):
            self._feed(b, row, par, ids, pos, seg, touched)
        s = c.handle if c.handle is not None else self._new_seg(b, row, c)
        new = c.tokens[c.done :]
        ids += new
        pos.extend(range(c.start + c.done, c.start + len(c.tokens)))
        seg += [s] * len(new)
        c.done = len(c.tokens)
        c.last = len(ids) - 1
        touched.append(c)

    # ------------------------------------------------------------------ step
    def step(self) -> tuple[list[Lane], torch.Tensor | None]:
        """One batched forward over every pending token; logits [M, V] (float32) for the
        M active lanes, in row / rollout / lane order."""
        rows_ids, rows_pos, rows_seg, rows_keep = [], [], [], []
        lanes: list[Lane] = []
        want: list[tuple[int, int]] = []  # (row, index in that row's keep list) per lane
        touched: list[Context] = []
        simple: list[bool] = []  # the row's live lanes share one context, the only one fed
        for b, row in enumerate(self.rows):
            fed_before = len(touched)
            ids: list[int] = []
            pos: list[int] = []
            seg: list[int] = []
            keep: list[int] = []
            one = None
            single = True
            for ro in row.rollouts:
                if ro.finished:
                    continue
                for lane in ro.lanes:
                    c = lane.ctx
                    if one is None:
                        one = c
                    elif c is not one:
                        single = False
                    self._feed(b, row, c, ids, pos, seg, touched)
                    if lane.state == ACTIVE:
                        if c.last < 0:
                            raise RuntimeError("an active lane has nothing to feed")
                        lanes.append(lane)
                        want.append((b, len(keep)))
                        keep.append(c.last)
            rows_ids.append(ids)
            rows_pos.append(pos)
            rows_seg.append(seg)
            rows_keep.append(keep)
            simple.append(single and len(touched) - fed_before <= 1)
        self._simple = simple
        for c in touched:
            c.last = -1
        ns = [len(x) for x in rows_ids]
        if max(ns, default=0) == 0:
            return lanes, None
        groups = self._plan(ns)
        T = self.kseg.shape[1]
        if len(groups) == 1:
            out, qseg = self._forward(groups[0], rows_ids, rows_pos, rows_seg, rows_keep, self.cache)
            self.cache = self._cache_out
            kall = self._kseg_out
            self.kseg = kall if kall is not None else torch.cat([self.kseg, qseg], 1)
            outs = [out]
        else:
            outs = self._forward_split(groups, rows_ids, rows_pos, rows_seg, rows_keep, T)
            self.stats.split_steps += 1
        logits = None
        if want and len(groups) == 1:
            out = outs[0]
            G, M, V = out.shape
            if len(want) == G * M:  # every row keeps M positions (one lane per row, or as many in each)
                logits = out.reshape(G * M, V).float()
            else:
                flat = torch.tensor([b * M + j for b, j in want], device=self.device)
                logits = out.reshape(G * M, V).index_select(0, flat).float()
        elif want:
            where = {b: (k, r) for k, g in enumerate(groups) for r, b in enumerate(g)}
            logits = torch.stack([outs[where[b][0]][where[b][1], j] for b, j in want]).float()
        st = self.stats
        st.forward_calls += len(groups)
        fed = sum(ns)
        st.tokens_fed += fed
        st.pad_fed += sum(len(g) * max(ns[b] for b in g) for g in groups) - fed
        for b, row in enumerate(self.rows):
            row.handle.live += ns[b]
        st.max_slots = max(st.max_slots, self.kseg.shape[1])
        return lanes, logits

    def _plan(self, ns: list[int]) -> list[list[int]]:
        """Rows per forward. One forward pads every row to the longest; when a few rows
        prefill many tokens (a join's re-read, an admitted prompt) while the others
        decode one token per lane, two forwards (heavy rows, light rows) feed far
        fewer padding positions, at the price of copying the cache rows once."""
        B = len(ns)
        order = sorted(range(B), key=lambda b: ns[b])
        one = B * ns[order[-1]]
        best, cut = one, None
        for k in range(1, B):  # light = order[:k], heavy = order[k:]
            cost = k * ns[order[k - 1]] + (B - k) * ns[order[-1]]
            if cost < best:
                best, cut = cost, k
        # the split costs a second forward and a few copies of the cache (B x T slots):
        # a slot copy is worth ~kv_dim*8 / (12*hidden^2) of a token's forward, x20 for safety
        saved = one - best
        copy = B * self.kseg.shape[1] * self._slot_cost * 20
        if cut is None or saved < max(64, 0.5 * one, copy):
            return [list(range(B))]
        return [sorted(order[:cut]), sorted(order[cut:])]

    def _forward(self, idx: list[int], rows_ids, rows_pos, rows_seg, rows_keep, cache):
        """Forward of rows ``idx`` (with their cache ``cache``); returns the kept logits
        ``[len(idx), M, V]`` and the new slots' segments ``[len(idx), N]``. The cache after
        the call is left in ``self._cache_out``; the segments of the slots of rows ``idx``
        after it (old and new, ``[len(idx), T + N]``) in ``self._kseg_out`` when the mask
        needed them (else None)."""
        dev = self.device
        N = max(len(rows_ids[b]) for b in idx)
        M = max(max(len(rows_keep[b]) for b in idx), 1)
        padded = False
        ids_l, pos_l, seg_l = [], [], []
        for b in idx:  # one tensor for the three inputs: one conversion instead of three
            p = N - len(rows_ids[b])
            if p:
                padded = True
                ids_l.append(rows_ids[b] + [self.pad_id] * p)
                pos_l.append(rows_pos[b] + [0] * p)
                seg_l.append(rows_seg[b] + [0] * p)
            else:
                ids_l.append(rows_ids[b])
                pos_l.append(rows_pos[b])
                seg_l.append(rows_seg[b])
        data = torch.tensor([ids_l, pos_l, seg_l], dtype=torch.long, device=dev)
        inp, posT, qseg = data[0], data[1], data[2]
        G = len(idx)
        if G == self.kseg.shape[0]:
            kseg, anc = self.kseg, self.anc
        else:
            it = torch.tensor(idx, device=dev)
            kseg, anc = self.kseg.index_select(0, it), self.anc.index_select(0, it)
        T = kseg.shape[1]
        # plain causal batch (ordinary decoding: one context per row, every cached slot
        # live, no padding): pass no mask, so sdpa keeps its fused kernel and native GQA.
        # Every live slot is then an ancestor of the row's one context (dead slots are
        # marked by reclaim() after every step that ended a thread or a rollout).
        plain = not padded and all(self._simple[b] and self.rows[b].handle.live == T for b in idx)
        self._kseg_out = None
        if plain:
            mask = None
        else:
            kall = torch.cat([kseg, qseg], 1)  # [G, T + N]
            self._kseg_out = kall
            if G == 1:  # one row: plain 2D indexing
                mask = anc[0][qseg[0][:, None], kall[0][None, :]][None]  # [1, N, T + N]
            else:
                bidx = torch.arange(G, device=dev)[:, None, None]
                mask = anc[bidx, qseg[:, :, None], kall[:, None, :]]  # [G, N, T + N]
            if N > 1:
                tri = self._tri.get(N)
                if tri is None or tri[0].device != mask.device:
                    tri = self._tri[N] = (
                        torch.ones(N, N, dtype=torch.bool, device=dev).tril(),
                        torch.eye(N, dtype=torch.bool, device=dev),
                    )
                mask[:, :, T:] &= tri[0]
                if padded:  # a padding position sees itself only
                    mask[:, :, T:] |= (qseg == 0)[:, :, None] & tri[1]
            mask = mask[:, None]
            if self.impl == "eager":
                mask = float_mask(mask, self.dtype)
        if cache is None:
            cache = self._new_cache()
        ltk: int | torch.Tensor
        tail = list(range(N - M, N))
        if all(rows_keep[b] == tail for b in idx):
            ltk = M  # every row wants its last M positions (one lane on its last token, or M lanes): plain slicing
        else:
            ltk = torch.tensor(
                [rows_keep[b] + [0] * (M - len(rows_keep[b])) for b in idx], dtype=torch.long, device=dev
            )
        # A custom mask makes transformers' sdpa copy K/V to every query head (repeat_kv)
        # in every layer for several query positions; torch's CPU kernels take the mask
        # with native GQA, so ask for that (same attention; same log-probs on bench_runner).
        gqa = self._gqa and mask is not None and N > 1
        if gqa:
            prev = os.environ.get(_FORCE_GQA)
            os.environ[_FORCE_GQA] = "1"
        try:
            out = self.model(
                input_ids=inp,
                attention_mask=mask,
                position_ids=posT,
                use_cache=True,
                logits_to_keep=ltk,
                **{_cache_kwarg(self.model): cache},
            )
        finally:
            if gqa:
                if prev is None:
                    del os.environ[_FORCE_GQA]
                else:
                    os.environ[_FORCE_GQA] = prev
        new_cache = out.get("cache", None) if "cache" in out else out.get("past_key_values", None)
        self._cache_out = new_cache if new_cache is not None else cache
        return out.logits, qseg

    def _forward_split(self, groups, rows_ids, rows_pos, rows_seg, rows_keep, T):
        """One forward per group of rows, each on a copy of its cache rows; the results
        are merged so that every row gets the new slots of every group (the slots of
        the other groups are dead for it: segment 0, reclaimed by the next compaction)."""
        B = len(rows_ids)
        dev = self.device
        old = self._layers()
        res = []
        for g in groups:
            it = torch.tensor(g, device=dev)
            sub = (
                self._new_cache([(layer.keys.index_select(0, it), layer.values.index_select(0, it)) for layer in old])
                if old
                else None
            )
            logits, qseg = self._forward(g, rows_ids, rows_pos, rows_seg, rows_keep, sub)
            res.append((it, logits, qseg, self._cache_out))
        W = T + sum(q.shape[1] for _, _, q, _ in res)
        kseg = self.kseg.new_zeros(B, W)
        kseg[:, :T] = self.kseg
        off = T
        for it, _, qseg, _ in res:
            kseg[it, off : off + qseg.shape[1]] = qseg
            off += qseg.shape[1]
        merged = []
        for li in range(len(res[0][3].layers)):
            kv = []
            for name in ("keys", "values"):
                ref = getattr(res[0][3].layers[li], name)
                full = ref.new_zeros(B, ref.shape[1], W, ref.shape[3])
                if old and T > 0:
                    full[:, :, :T] = getattr(old[li], name)
                off = T
                for it, _, qseg, c in res:
                    w = qseg.shape[1]
                    full[it, :, off : off + w] = getattr(c.layers[li], name)[:, :, T:]
                    off += w
                kv.append(full)
            merged.append(tuple(kv))
        self.cache = self._new_cache(merged)
        self.kseg = kseg
        return [logits for _, logits, _, _ in res]

    # ------------------------------------------------------------------ memory
    def _sees(self, b: int, c: Context) -> torch.Tensor:
        """Bool [S]: the segments of row ``b`` that context ``c`` attends to, or will need
        (a context not fed yet sees what its parents see, and a summary join keeps what
        its unfed ``</Thread>`` contexts see until they are fed)."""
        if c.handle is not None:
            return self.anc[b, c.handle]
        out = torch.zeros(self.anc.shape[1], dtype=torch.bool, device=self.device)
        for par in c.parents():
            out |= self._sees(b, par)
        for q in c.peeks:
            if q.handle is None:
                out |= self._sees(b, q)
            else:
                out[q.handle] = True
        return out

    def reclaim(self) -> None:
        """Mark slots nobody can see any more (after joins and finished rollouts) and
        compact the cache when live slots are a small share of its width."""
        for b, row in enumerate(self.rows):
            v = sum(ro.version for ro in row.rollouts)
            if v == row.handle.version:
                continue
            row.handle.version = v
            live = torch.zeros(self.anc.shape[1], dtype=torch.bool, device=self.device)
            for ro in row.rollouts:
                if ro.finished:
                    continue
                for c in ro.live_contexts():
                    live |= self._sees(b, c)
            ks = self.kseg[b]
            ks = torch.where(live[ks], ks, torch.zeros_like(ks))
            self.kseg[b] = ks
            row.handle.live = int((ks > 0).sum())
        T = self.kseg.shape[1]
        if T < self.compact_min_slots or not self.rows:
            return
        if max(r.handle.live for r in self.rows) > self.compact_ratio * T:
            return
        alive = self.kseg > 0
        cnt = alive.sum(1)
        T2 = int(cnt.max())
        B = self.kseg.shape[0]
        order = torch.argsort((~alive).to(torch.int8), dim=1, stable=True)[:, :T2]  # live slots first, in order
        ks = self.kseg.gather(1, order)
        ks[torch.arange(T2, device=self.device)[None, :] >= cnt[:, None]] = 0
        self.kseg = ks
        for layer in self._layers():
            k, v = layer.keys, layer.values
            layer.set(
                k.gather(2, order[:, None, :, None].expand(B, k.shape[1], T2, k.shape[3])),
                v.gather(2, order[:, None, :, None].expand(B, v.shape[1], T2, v.shape[3])),
            )
        self.stats.compactions += 1


# ---------------------------------------------------------------------- sampling


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument of ``model.forward``: transformers 5.x renamed
    ``past_key_values`` to ``cache`` (the old name is deprecated, then removed).

    Read from the innermost model's signature (DDP/DeepSpeed ``.module``,
    ``torch.compile``'s ``._orig_mod`` and PEFT are looked through); when the forward
    names neither (``**kwargs`` only), the installed transformers decides: ``cache``
    where its model outputs have a ``cache`` field."""
    name = getattr(model, "_pr_cache_kwarg", None)
    if name is None:
        inner = unwrap_model(model, peft=True)
        try:
            params: Mapping = inspect.signature(inner.forward).parameters
        except (TypeError, ValueError, AttributeError):  # pragma: no cover
            params = {}
        if "cache" in params:
            name = "cache"
        elif "past_key_values" in params:
            name = "past_key_values"
        else:
            import dataclasses

            from transformers.modeling_outputs import CausalLMOutputWithPast

            fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
            name = "cache" if "cache" in fields else "past_key_values"
        try:
            model._pr_cache_kwarg = name
        except AttributeError:  # pragma: no cover
            pass
    return name


def constrain(logits: torch.Tensor, banned: Sequence[Sequence[int]]) -> torch.Tensor:
    """``logits`` [M, V] with the ``banned`` token ids of each row set to -inf."""
    rows = [k for k, ids in enumerate(banned) for _ in ids]
    if not rows:
        return logits
    cols = [i for ids in banned for i in ids]
    dev = logits.device
    return logits.index_put(
        (torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)),
        torch.tensor(float("-inf"), device=dev, dtype=logits.dtype),
    )


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus), as Hugging Face's logits warpers."""
    x = logits / temperature
    V = x.shape[-1]
    if top_k and 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, sorted_idx = torch.sort(x, descending=False, dim=-1)
        cum = sorted_x.softmax(-1).cumsum(-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False  # keep at least one token
        x = x.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
    return x


def rollout_seed(seed: int, sample_index: int) -> int:
    """Seed of the generator of sample ``sample_index`` of a prompt whose seed is ``seed``."""
    return (int(seed) * 1_000_003 + int(sample_index) * 7_919 + 12_345) % (2**63 - 1)


# ---------------------------------------------------------------------- runner


def model_thread_header(model) -> str:
    """The thread header mode stored in a model's config (``index`` when absent); DDP
    wrappers are stripped, compile and PEFT wrappers forward ``config``."""
    mode = getattr(getattr(unwrap_model(model), "config", None), "thread_header", None)
    return check_thread_header(mode) if mode is not None else "index"


def model_join(model) -> str:
    """The join mode stored in a model's config (``concat`` when absent; SFT writes it)."""
    mode = getattr(getattr(unwrap_model(model), "config", None), "parallel_join", None)
    return check_join(mode) if mode is not None else "concat"


class Runner:
    """Fork/join decoding with a Hugging Face causal LM.

    ``Runner(model, tokenizer, max_new_tokens=512, max_thread_tokens=None, max_width=8,
    max_depth=2, join=None, batch_size=8)``; ``generate(prompts, n, temperature,
    top_p, top_k, seed)`` and ``replay(prompts, completions)`` return one
    :class:`~.scheduler.Rollout` per (prompt, sample), in prompt order.

    ``batch_size`` is the number of prompts (rows) decoded at once; each row carries
    its ``n`` samples. With ``parallel=False`` control tags are ordinary tokens
    (plain sequential decoding: the baseline). With ``constrained=True`` each step
    masks the tags (and EOS) that would make the text malformed; the recorded
    ``logprobs`` stay the model's own, the ``sampler_logprobs`` are the constrained ones.
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_new_tokens: int = 512,
        max_thread_tokens: int | None = None,
        max_width: int | None = 8,
        max_depth: int | None = 2,
        join: str | None = None,
        batch_size: int = 8,
        parallel: bool = True,
        compact_min_slots: int = 128,
        compact_ratio: float = 0.75,
        thread_header: str | None = None,
        constrained: bool = False,
    ):
        join = check_join(join) if join is not None else model_join(model)  # default: as the model was trained
        if join == "summary" and RESULT not in tokenizer.get_vocab():
            raise ValueError(
                f"join 'summary' needs the {RESULT} tag in the tokenizer (a thread marks its result with it); "
                "parallel_reason.tokens.add_control_tokens adds it"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.join = join
        self.batch_size = batch_size
        self.parallel = parallel
        self.constrained = constrained  # mask the tags that would make the text malformed
        self.limits = RunLimits(
            max_new_tokens=max_new_tokens, max_thread_tokens=max_thread_tokens, max_width=max_width, max_depth=max_depth
        )
        # the header mode a model was trained with travels in its config (SFT writes it)
        self.thread_header = thread_header or model_thread_header(model)
        self.tags = TagSet(tokenizer, self.thread_header)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.backend = HFBackend(model, pad if pad is not None else 0, compact_min_slots, compact_ratio)
        self.stats = BackendStats()

    # ------------------------------------------------------------------ inputs
    # ------------------------------------------------------------------ API
    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | Sequence[int] = 0,
    ) -> list[Rollout]:
        """Sample ``n`` rollouts per prompt (flattened in prompt order). ``temperature=0``
        is greedy. ``seed`` is one int (prompt ``i`` uses ``seed + i``) or one per prompt."""
        seeds = sample_seeds(prompts, n, temperature, top_p, top_k, seed)
        rows = [self.new_row(p, n, temperature, seeds[i], i) for i, p in enumerate(prompts)]

        def choose(lanes: list[Lane], logits: torch.Tensor) -> None:
            lp_all = torch.log_softmax(logits, -1)  # recorded: the model's own log-probs (what the trainer computes)
            if self.constrained:
                logits = constrain(logits, [lane.rollout.banned(lane) for lane in lanes])
            if temperature == 0:
                toks = logits.argmax(-1)
                slp = None
            else:
                x = filter_logits(logits, temperature, top_k, top_p)
                probs = torch.softmax(x, -1)
                toks = torch.empty(len(lanes), dtype=torch.long, device=logits.device)
                i = 0
                while i < len(lanes):
                    ro = lanes[i].rollout
                    j = i + 1
                    while j < len(lanes) and lanes[j].rollout is ro:
                        j += 1
                    toks[i:j] = torch.multinomial(probs[i:j], 1, generator=ro.generator)[:, 0]
                    i = j
                slp = torch.log_softmax(x, -1).gather(1, toks[:, None])[:, 0].tolist()
            lp = lp_all.gather(1, toks[:, None])[:, 0].tolist()
            self._advance(lanes, toks.tolist(), lp, slp if slp is not None else [0.0] * len(lanes))

        return self._run(rows, choose)

    def replay(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], completions: Sequence, eos: bool = True
    ) -> list[Rollout]:
        """Force given completions through the same machinery, recording the log-probs
        of the forced tokens. A completion is text (a well-formed trajectory, tokenized
        with ``layout.tokenize_trajectory``; ``eos`` appends EOS), a token tree
        (list of ``Run``/``TBlock``), or a list of ids (forced as one sampled run: the
        scheduler then reacts to whatever tags it holds). With ``parallel=False`` the
        linear ids of the trajectory are forced as one chain (the sequential baseline)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        rows = []
        for i, (p, comp) in enumerate(zip(prompts, completions)):
            if isinstance(comp, str):
                items = tokenize_trajectory(comp, self.tokenizer, eos=eos, thread_header=self.thread_header)
            elif len(comp) == 0 or isinstance(comp[0], int):
                items = [Run([int(t) for t in comp], True)] if len(comp) else []
            else:
                items = list(comp)
            if not self.parallel:
                ids = linear_ids(items)
                items = [Run(ids, True)] if ids else []
            ctx = Context(None, prompt_ids(self.tokenizer, p))
            rows.append(
                Row(
                    ctx, [RolloutState(ctx, self.tags, self.limits, self.parallel, Script(items), i, 0, join=self.join)]
                )
            )

        def choose(lanes: list[Lane], logits: torch.Tensor) -> None:
            forced = []
            for lane in lanes:
                t = lane.script.next()
                forced.append(-1 if t is None else t)
            idx = torch.tensor([max(t, 0) for t in forced], device=logits.device)
            lp = torch.log_softmax(logits, -1).gather(1, idx[:, None])[:, 0].tolist()
            for k, lane in enumerate(lanes):
                ro = lane.rollout
                if ro.finished or lane.state != ACTIVE:
                    continue
                if forced[k] < 0:
                    where = f"thread {lane.number} at depth {lane.depth}" if lane.is_thread else "the main sequence"
                    ro.finish("replay_end", f"no forced token left for {where}")
                else:
                    ro.advance(lane, forced[k], lp[k], lp[k])

        return self._run(rows, choose)

    def new_row(
        self, prompt, n: int, temperature: float, seed: int, index: int = 0, limits: RunLimits | None = None
    ) -> Row:
        """One prompt and its ``n`` rollouts (sampled ones get generators seeded with
        ``rollout_seed(seed, j)``); ``limits`` defaults to the runner's."""
        ctx = Context(None, prompt_ids(self.tokenizer, prompt))
        rs = []
        for j in range(n):
            g = None
            if temperature > 0:
                g = torch.Generator(device=self.backend.device)
                g.manual_seed(rollout_seed(seed, j))
            rs.append(
                RolloutState(ctx, self.tags, limits or self.limits, self.parallel, None, index, j, g, join=self.join)
            )
        return Row(ctx, rs)

    # ------------------------------------------------------------------ loop
    def step(self, choose) -> list[Row]:
        """One decode step of the running batch: feed every pending token, let ``choose``
        advance the active lanes, drop the finished rows (returned) and reclaim memory.
        Rows join with ``self.backend.add``: the step loop of :meth:`_run` and the server."""
        be = self.backend
        lanes, logits = be.step()
        if lanes:
            choose(lanes, logits)
        gone = be.release()
        be.reclaim()
        return gone

    @staticmethod
    def _advance(lanes, toks, lps, slps) -> None:
        for k, lane in enumerate(lanes):
            ro = lane.rollout
            if ro.finished or lane.state != ACTIVE:
                continue
            ro.advance(lane, toks[k], lps[k], slps[k])

    def _run(self, rows: list[Row], choose) -> list[Rollout]:
        be = self.backend
        be.reset()
        t0 = time.perf_counter()
        queue = deque(rows)
        refill = max(1, self.batch_size // 4)
        was_training = getattr(self.model, "training", False)
        if was_training:
            self.model.eval()  # no dropout while sampling; restored afterwards
        try:
            with torch.inference_mode():
                while queue or be.rows:
                    free = self.batch_size - len(be.rows)
                    if queue and free > 0 and (not be.rows or free >= refill or len(queue) <= free):
                        be.add([queue.popleft() for _ in range(min(free, len(queue)))])
                    self.step(choose)
        finally:
            if was_training:
                self.model.train()
            self.stats = be.stats
            self.stats.wall_s = time.perf_counter() - t0
            be.reset()
        return [to_rollout(ro, self.tokenizer, self.join) for row in rows for ro in row.rollouts]
