"""Server-sent events: one chunk per text delta of a choice, then ``[DONE]``."""

from __future__ import annotations

import asyncio
import json

from .output import ChoiceOutput, finish_reason_of, usage_of

KEEPALIVE_S = 1.0  # an SSE comment when nothing moved: a gone client shows at the next write


def held_back(text: str, stops) -> str:
    """``text`` up to its first stop string, minus what may still change: a trailing
    partial UTF-8 character and a suffix that could be the start of a stop string."""
    hits = [p for s in stops if (p := text.find(s)) >= 0]
    if hits:
        return text[: min(hits)]
    if text.endswith("\ufffd"):
        text = text.rstrip("\ufffd")
    cut = len(text)
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                cut = min(cut, len(text) - n)
                break
    return text[:cut]


class _ChoiceStream:
    """Text of one streamed choice, decoded incrementally: ``base`` is the text of
    ``ids[:k]`` (cut where no partial character follows); new tokens are decoded with a
    few tokens of context before them (tokenizers that drop a leading space at the
    start of a text would otherwise lose it) and the context's text is taken off."""

    __slots__ = ("ids", "k", "base", "sent", "first", "pending", "n_sent")

    CONTEXT = 4

    def __init__(self):
        self.ids: list[int] = []
        self.k = 0
        self.base = ""
        self.sent = ""  # text sent so far
        self.first = True
        self.pending: list = []  # token entries whose log-probs are not sent yet (their text was held back)
        self.n_sent = 0  # token entries whose log-probs were sent

    def text(self, out, new) -> str:
        self.ids.extend(e[0] for e in new)
        p0 = max(0, self.k - self.CONTEXT)
        ctx = out.text(self.ids[p0 : self.k])
        whole = out.text(self.ids[p0:])
        tail = whole[len(ctx) :] if whole.startswith(ctx) else out.text(self.ids)[len(self.base) :]
        full = self.base + tail
        if tail and not tail.endswith("\ufffd"):
            self.base, self.k = full, len(self.ids)
        return full


def sse_response(engine, job, out: ChoiceOutput, meta: dict, req):
    """A StreamingResponse whose end (normal or not) cancels what is left of the job."""
    from starlette.responses import StreamingResponse

    class _Stream(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                engine.cancel(job)

    return _Stream(
        _events(engine, job, out, meta, req),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _chunk(out: ChoiceOutput, meta: dict, index: int, text: str, lp, finish, first: bool, extra=None) -> str:
    if out.chat:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        ch = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        ch = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
        obj = "text_completion"
    if extra:
        ch |= extra
    return "data: " + json.dumps({**meta, "object": obj, "choices": [ch]}, ensure_ascii=False) + "\n\n"


async def _events(engine, job, out: ChoiceOutput, meta: dict, req):
    states = [_ChoiceStream() for _ in job.rollouts]
    stops = job.sampling.stop
    try:
        while True:
            try:
                events = await asyncio.wait_for(job.queue.get(), timeout=KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            for ev in events:
                kind = ev[0]
                if kind == "tokens":
                    st = states[ev[1]]
                    st.pending += ev[2]
                    text = held_back(st.text(out, ev[2]), stops)
                    if len(text) > len(st.sent) and text.startswith(st.sent):
                        new, n0 = text[len(st.sent) :], len(st.sent)
                        st.sent = text
                        lp = out.logprobs(job.rollouts[ev[1]], st.pending, n0)
                        st.n_sent += len(st.pending)
                        st.pending = []
                        yield _chunk(out, meta, ev[1], new, lp, None, st.first)
                        st.first = False
                elif kind == "finish":
                    ro = job.rollouts[ev[1]]
                    st = states[ev[1]]
                    text, entries = out.final(ro)
                    new = text[len(st.sent) :] if text.startswith(st.sent) else ""
                    n0 = len(st.sent)
                    st.sent += new
                    rest = st.pending[: max(0, len(entries) - st.n_sent)]  # not what a stop string cut off
                    st.pending = []
                    yield _chunk(
                        out,
                        meta,
                        ev[1],
                        new,
                        out.logprobs(ro, rest, n0) if rest else None,
                        finish_reason_of(ro.finish_reason),
                        st.first,
                        out.extras(ro, entries),
                    )
                elif kind == "done":
                    if (req.stream_options or {}).get("include_usage"):
                        body = {
                            **meta,
                            "object": "chat.completion.chunk" if out.chat else "text_completion",
                            "choices": [],
                            "usage": usage_of(job, out),
                        }
                        yield "data: " + json.dumps(body) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
                elif kind == "error":
                    yield "data: " + json.dumps({"error": {"message": ev[1], "type": "server_error"}}) + "\n\n"
                    return
    finally:
        engine.cancel(job)
